//! The OpenAPI 3.1 document, generated from the handlers and types.

use utoipa::OpenApi;

use crate::{cases, problem, system};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "opscase",
        description = "AI-ops case orchestrator. A case moves through a deterministic state machine; \
            `PATCH /v1/cases/{id}/transition` is the only way to change it. Errors are RFC 9457 \
            problem+json.",
        license(name = "Apache-2.0")
    ),
    paths(
        cases::open_case, cases::list_cases, cases::get_case, cases::timeline, cases::transition,
        cases::plans, cases::decisions,
        cases::open_case_alias, cases::get_case_alias, cases::timeline_alias, cases::transition_alias,
        system::change_plan_schema, system::livez, system::readyz, system::metrics,
    ),
    components(schemas(problem::Problem)),
    tags(
        (name = "cases", description = "Incident cases and their state machine"),
        (name = "seed aliases", description = "The paths of the source design's curl demo"),
        (name = "contracts", description = "Schemas artifacts must satisfy"),
        (name = "system", description = "Health and metrics"),
    )
)]
pub struct ApiDoc;

/// The document as committed in `openapi/openapi.json`.
pub fn document_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
        + "\n"
}
