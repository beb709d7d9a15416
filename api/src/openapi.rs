//! The OpenAPI 3.1 document, generated from the handlers and types.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::{cases, commands, events, evidence, ingest, kb, keys, problem, signals, system};

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
        cases::open_case, cases::list_cases, cases::get_case, cases::timeline, events::case_events, events::all_events, cases::transition,
        cases::plans, cases::decisions, cases::executions, cases::verifications,
        cases::open_case_alias, cases::get_case_alias, cases::timeline_alias, cases::transition_alias,
        commands::analysis_run,
        commands::plan_generate, commands::gate_eval, commands::adapter_exec, commands::verify_run,
        commands::plan_generate_alias, commands::gate_eval_alias, commands::adapter_exec_alias,
        commands::verify_run_alias,
        ingest::ingest_metric_1m, ingest::ingest_calls_5m,
        signals::alertmanager, signals::grafana, signals::events, signals::changes,
        evidence::add_evidence, evidence::list_evidence, evidence::evidence_lines,
        evidence::list_findings,
        evidence::list_llm_calls,
        kb::add_doc, kb::list_docs, kb::get_doc, kb::delete_doc, kb::search, kb::related,
        system::change_plan_schema, system::adapters, system::templates, system::livez, system::readyz, system::metrics,
        keys::create_key, keys::list_keys, keys::revoke_key, keys::me,
    ),
    modifiers(&SeedAliases, &Security),
    security(("bearer" = []), ("api_key" = [])),
    components(schemas(problem::Problem)),
    tags(
        (name = "cases", description = "Incident cases and their state machine"),
        (name = "commands", description = "Ask a worker to act; the answer moves the case"),
        (name = "metrics", description = "1-minute aggregates the verifier checks and the analyst watches; calls between services"),
        (name = "signals", description = "Alerts and events in: each opens a case or joins its group's open case; deploys and configuration changes, recorded for the analysis"),
        (name = "evidence", description = "What justifies a case: log, metric and trace locators, references, links; the analyst's findings"),
        (name = "knowledge", description = "The knowledge base (the Librarian): runbooks and other documents, chunked along their headings and searched lexically and, with an embeddings endpoint configured, by their embeddings (hybrid, fused by reciprocal rank)"),
        (name = "seed aliases", description = "The paths of the source design's curl demo"),
        (name = "contracts", description = "Schemas artifacts must satisfy"),
        (name = "system", description = "Health and metrics"),
        (name = "keys", description = "API keys (admin role)"),
    )
)]
pub struct ApiDoc;

/// The seed's paths and the `/v1` routes whose handlers they share. An alias is documented with
/// its own success answers only (`/case/create` answers another body); its parameters, request
/// body and every other answer are copied from its route, so the two cannot drift apart.
pub const SEED_ALIASES: &[(&str, &str)] = &[
    ("/case/create", "/v1/cases"),
    ("/case/{id}", "/v1/cases/{id}"),
    ("/case/{id}/timeline", "/v1/cases/{id}/timeline"),
    ("/case/{id}/transition", "/v1/cases/{id}/transition"),
    ("/plan/generate", "/v1/plan/generate"),
    ("/gate/eval", "/v1/gate/eval"),
    ("/adapter/exec", "/v1/adapter/exec"),
    ("/verify/run", "/v1/verify/run"),
];

struct SeedAliases;

impl Modify for SeedAliases {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (alias, route) in SEED_ALIASES {
            let route = openapi.paths.paths.get(*route).cloned().unwrap_or_else(|| {
                panic!("seed alias {alias}: its route {route} is not documented")
            });
            let item = openapi
                .paths
                .paths
                .get_mut(*alias)
                .unwrap_or_else(|| panic!("seed alias {alias} is not documented"));
            let pairs = [
                (&mut item.get, &route.get),
                (&mut item.post, &route.post),
                (&mut item.patch, &route.patch),
                (&mut item.put, &route.put),
                (&mut item.delete, &route.delete),
            ];
            for (operation, original) in pairs {
                let (Some(operation), Some(original)) = (operation, original) else {
                    continue;
                };
                operation.parameters = original.parameters.clone();
                operation.request_body = original.request_body.clone();
                let own_success = operation
                    .responses
                    .responses
                    .keys()
                    .any(|status| status.starts_with('2'));
                for (status, response) in &original.responses.responses {
                    if own_success && status.starts_with('2') {
                        continue;
                    }
                    operation
                        .responses
                        .responses
                        .entry(status.clone())
                        .or_insert_with(|| response.clone());
                }
            }
        }
    }
}

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

/// The document the service serves: utoipa's, with the hand-written payload schemas.
pub fn document() -> serde_json::Value {
    let mut document =
        serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes");
    signals::add_payload_schemas(&mut document);
    document
}

/// The document as committed in `openapi/openapi.json`.
pub fn document_json() -> String {
    serde_json::to_string_pretty(&document()).expect("the OpenAPI document serializes") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_seed_alias_is_documented_with_its_routes_parameters_and_errors() {
        let document = serde_json::to_value(ApiDoc::openapi()).unwrap();
        for (alias, route) in SEED_ALIASES {
            let (alias_item, route_item) = (&document["paths"][alias], &document["paths"][route]);
            let methods = |item: &serde_json::Value| -> Vec<String> {
                item.as_object().unwrap().keys().cloned().collect()
            };
            for method in methods(alias_item) {
                let (a, r) = (&alias_item[&method], &route_item[&method]);
                assert!(r.is_object(), "{method} {alias}: {route} has no {method}");
                assert_eq!(a["parameters"], r["parameters"], "{method} {alias}");
                assert_eq!(a["requestBody"], r["requestBody"], "{method} {alias}");
                let statuses = |op: &serde_json::Value| -> Vec<String> {
                    op["responses"]
                        .as_object()
                        .unwrap()
                        .keys()
                        .cloned()
                        .collect()
                };
                assert_eq!(statuses(a), statuses(r), "{method} {alias}");
            }
        }
    }
}
