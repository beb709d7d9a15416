// `sqlx::migrate!` embeds the migrations at compile time; a new migration file must rebuild
// the crate (sqlx's advice: `sqlx migrate build-script`).
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
    println!("cargo:rerun-if-changed=../migrations/sqlite");
    println!("cargo:rerun-if-changed=../migrations/postgres");
}
