//! The OpenAPI 3.1 document, generated from the handlers and types.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::{cases, commands, ingest, keys, problem, system};

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
        cases::plans, cases::decisions, cases::executions, cases::verifications,
        cases::open_case_alias, cases::get_case_alias, cases::timeline_alias, cases::transition_alias,
        commands::plan_generate, commands::gate_eval, commands::adapter_exec, commands::verify_run,
        commands::plan_generate_alias, commands::gate_eval_alias, commands::adapter_exec_alias,
        commands::verify_run_alias,
        ingest::ingest_metric_1m,
        system::change_plan_schema, system::adapters, system::templates, system::livez, system::readyz, system::metrics,
        keys::create_key, keys::list_keys, keys::revoke_key,
    ),
    modifiers(&Security),
    security(("bearer" = []), ("api_key" = [])),
    components(schemas(problem::Problem)),
    tags(
        (name = "cases", description = "Incident cases and their state machine"),
        (name = "commands", description = "Ask a worker to act; the answer moves the case"),
        (name = "metrics", description = "1-minute aggregates the verifier checks against"),
        (name = "seed aliases", description = "The paths of the source design's curl demo"),
        (name = "contracts", description = "Schemas artifacts must satisfy"),
        (name = "system", description = "Health and metrics"),
        (name = "keys", description = "API keys (admin role)"),
    )
)]
pub struct ApiDoc;

/// The API-key schemes; the 401/403/429/503 answers of every operation that needs a key (each
/// reads its key from the store and counts against `max_in_flight`), and the 408 of every
/// operation that reads a body.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.put,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                if operation.request_body.is_some() {
                    operation.responses.responses.insert(
                        "408".into(),
                        problem("The body did not arrive within server.body_read_timeout_s (`body-timeout`); the connection is closed").into(),
                    );
                }
                let open = operation
                    .security
                    .as_ref()
                    .is_some_and(|s| s.iter().all(is_empty_requirement));
                if open {
                    continue;
                }
                let responses = &mut operation.responses.responses;
                responses.insert(
                    "401".into(),
                    problem("No API key, or not a valid one").into(),
                );
                responses.insert(
                    "403".into(),
                    problem("The key's roles do not allow this").into(),
                );
                responses.insert(
                    "429".into(),
                    problem("The key is over its rate limit (see Retry-After)").into(),
                );
                responses.insert(
                    "503".into(),
                    problem("The store is unavailable (`store-unavailable`) or too many requests are in flight (`overloaded`); retry after Retry-After").into(),
                );
            }
        }
    }
}

fn is_empty_requirement(requirement: &utoipa::openapi::security::SecurityRequirement) -> bool {
    serde_json::to_value(requirement).is_ok_and(|v| v.as_object().is_some_and(|o| o.is_empty()))
}

/// The document as committed in `openapi/openapi.json`.
pub fn document_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
        + "\n"
}
