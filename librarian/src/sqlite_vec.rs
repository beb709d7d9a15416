//! sqlite-vec, compiled into this binary and registered on sqlx's bundled SQLite so that every
//! connection opened afterwards has `vec_distance_cosine` and the other `vec_*` functions.

use std::os::raw::{c_char, c_int};
use std::sync::Once;

use libsqlite3_sys::{sqlite3, sqlite3_api_routines, sqlite3_auto_extension, SQLITE_OK};

type EntryPoint =
    unsafe extern "C" fn(*mut sqlite3, *mut *mut c_char, *const sqlite3_api_routines) -> c_int;

/// Register sqlite-vec for every SQLite connection this process opens from now on. Call it
/// before the pool opens (connections already open do not get it); calling it again does
/// nothing.
pub fn register() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: `sqlite3_vec_init` is sqlite-vec's extension entry point, which has exactly
        // the signature SQLite gives auto extensions (the crate declares it without
        // arguments); it is linked into this binary together with the bundled SQLite it calls
        // (built with SQLITE_CORE), and sqlite3_auto_extension is thread-safe.
        let status = unsafe {
            let entry: EntryPoint = std::mem::transmute::<*const (), EntryPoint>(
                sqlite_vec::sqlite3_vec_init as *const (),
            );
            sqlite3_auto_extension(Some(entry))
        };
        if status != SQLITE_OK {
            tracing::warn!(
                status,
                "sqlite-vec could not be registered: vector search is off on SQLite"
            );
        }
    });
}
