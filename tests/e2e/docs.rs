//! Generated artifacts that are committed must match what the code generates.

const README: &str = include_str!("../../README.md");
const OPENAPI: &str = include_str!("../../openapi/openapi.json");

#[test]
fn the_committed_openapi_document_is_the_generated_one() {
    assert!(
        OPENAPI == api::openapi::document_json(),
        "openapi/openapi.json is stale: run `cargo run -q -- openapi > openapi/openapi.json`"
    );
}

#[test]
fn the_readme_state_diagram_is_generated_from_the_transition_table() {
    let start = README
        .find("```mermaid\n")
        .expect("README has a mermaid block")
        + "```mermaid\n".len();
    let end = start + README[start..].find("```").expect("the mermaid block ends");
    assert!(
        README[start..end] == workflow::mermaid_state_diagram(),
        "the README's state diagram differs from the table: replace it with `cargo run -q -- state-diagram`"
    );
}
