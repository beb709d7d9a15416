use serde_json::{json, Value};
use workflow::messages::{CaseBrief, PlanCommand};

use super::*;

fn command(template: Option<&str>, labels: &[(&str, &str)], params: Value) -> PlanCommand {
    PlanCommand {
        case: CaseBrief {
            id: "case-1".into(),
            tenant: "t-001".into(),
            title: "p95 spike on checkout".into(),
            severity: "high".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            evidence: vec![],
            version: 3,
            findings: vec![],
        },
        requested_by: "alice".into(),
        template: template.map(str::to_string),
        params: params.as_object().cloned().unwrap_or_default(),
        references: None,
    }
}

/// The plan, after asserting the guard accepts it.
fn checked_plan(template: Option<&str>, labels: &[(&str, &str)], params: Value) -> (String, Value) {
    let (name, plan) = generate(&command(template, labels, params)).expect("a plan");
    assert_eq!(workflow::plan::check_change_plan(&plan), vec![], "{plan:#}");
    (name, plan)
}

fn error(template: Option<&str>, labels: &[(&str, &str)], params: Value) -> PlanError {
    generate(&command(template, labels, params)).expect_err("no plan")
}

fn fields(error: &PlanError) -> Vec<&str> {
    error
        .errors
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect()
}

const SHOP: &[(&str, &str)] = &[
    ("namespace", "shop"),
    ("service", "checkout"),
    ("image", "registry.local/checkout:2.1.0"),
    ("previous_image", "registry.local/checkout:2.0.3"),
];

#[test]
fn canary_with_image_and_previous_image() {
    let (name, plan) = checked_plan(Some("k8s.rollout.canary"), SHOP, json!({}));
    assert_eq!(name, "k8s.rollout.canary");
    assert_eq!(plan["template"], "k8s.rollout.canary");
    assert_eq!(plan["risk_score"], json!(0.2));
    assert_eq!(
        plan["steps"],
        json!([{
            "id": "rollout",
            "action": "k8s.rollout",
            "description": "set the image of container checkout in deployment shop/checkout to registry.local/checkout:2.1.0 and wait for the rollout",
            "params": {"namespace": "shop", "deployment": "checkout", "container": "checkout", "image": "registry.local/checkout:2.1.0"},
            "timeout_s": 600,
            "retry": 1,
        }])
    );
    assert_eq!(
        plan["rollback"],
        json!({"steps": [{
            "id": "rollback",
            "action": "k8s.rollout",
            "description": "set the image of container checkout in deployment shop/checkout to registry.local/checkout:2.0.3 and wait for the rollout",
            "params": {"namespace": "shop", "deployment": "checkout", "container": "checkout", "image": "registry.local/checkout:2.0.3"},
            "timeout_s": 600,
            "retry": 1,
        }]})
    );
    assert_eq!(
        plan["verify"],
        json!({
            "checks": [
                {"name": "p95 latency", "source": "metric_1m", "query": "resource=checkout", "threshold": "p95_ms < 300"},
                {"name": "error rate", "source": "metric_1m", "query": "resource=checkout", "threshold": "err_rate < 0.01"},
            ],
            "window_s": 300,
            "count": 1,
        })
    );
    assert_eq!(
        plan["metadata"],
        json!({"case_id": "case-1", "generated_by": "planner/templates"})
    );
    assert!(plan["title"]
        .as_str()
        .unwrap()
        .contains("p95 spike on checkout"));
    assert!(plan["summary"].as_str().unwrap().contains("case-1"));
}

#[test]
fn canary_without_images_restarts_both_ways() {
    let (_, plan) = checked_plan(
        Some("k8s.rollout.canary"),
        &[("service", "checkout")],
        json!({}),
    );
    let restart = json!({"namespace": "default", "deployment": "checkout", "restart": true});
    assert_eq!(
        plan["steps"],
        json!([{
            "id": "rollout",
            "action": "k8s.rollout",
            "description": "restart deployment default/checkout and wait for the rollout",
            "params": restart,
            "timeout_s": 600,
            "retry": 1,
        }])
    );
    assert_eq!(plan["rollback"]["steps"][0]["params"], restart);
    assert!(plan["title"]
        .as_str()
        .unwrap()
        .starts_with("Canary restart of default/checkout"));
}

#[test]
fn canary_with_an_image_but_no_previous_one_rolls_back_by_restart() {
    let (_, plan) = checked_plan(
        Some("k8s.rollout.canary"),
        &[("deployment", "web"), ("service", "frontend")],
        json!({"image": "web:9"}),
    );
    assert_eq!(
        plan["steps"][0]["params"],
        json!({"namespace": "default", "deployment": "web", "container": "web", "image": "web:9"})
    );
    assert_eq!(
        plan["rollback"]["steps"][0]["params"],
        json!({"namespace": "default", "deployment": "web", "restart": true})
    );
    // The deployment label is the more specific one; verify follows the deployment.
    assert_eq!(plan["verify"]["checks"][0]["query"], "resource=web");
}

#[test]
fn params_override_labels() {
    let (_, plan) = checked_plan(
        Some("k8s.rollout.canary"),
        SHOP,
        json!({
            "namespace": "shop-canary",
            "deployment": "checkout-v2",
            "container": "app",
            "image": "checkout:3",
            "previous_image": "checkout:2",
        }),
    );
    assert_eq!(
        plan["steps"][0]["params"],
        json!({"namespace": "shop-canary", "deployment": "checkout-v2", "container": "app", "image": "checkout:3"})
    );
    assert_eq!(
        plan["rollback"]["steps"][0]["params"]["image"],
        "checkout:2"
    );
    let summary = plan["summary"].as_str().unwrap();
    assert!(
        summary.contains("deployment from params.deployment"),
        "{summary}"
    );
}

#[test]
fn verify_overrides_land_in_the_plan() {
    let (_, plan) = checked_plan(
        Some("k8s.rollout.canary"),
        SHOP,
        json!({
            "p95_ms": 250,
            "err_rate": "0.005",
            "window_s": 600,
            "interval_s": 60,
            "count": 5,
            "failure_limit": 1,
        }),
    );
    assert_eq!(
        plan["verify"],
        json!({
            "checks": [
                {"name": "p95 latency", "source": "metric_1m", "query": "resource=checkout", "threshold": "p95_ms < 250"},
                {"name": "error rate", "source": "metric_1m", "query": "resource=checkout", "threshold": "err_rate < 0.005"},
            ],
            "window_s": 600,
            "interval_s": 60,
            "count": 5,
            "failure_limit": 1,
        })
    );
}

#[test]
fn bad_verify_overrides_fail_with_the_guard_fields() {
    let bad = error(
        Some("k8s.rollout.canary"),
        SHOP,
        json!({"count": 0, "interval_s": 5}),
    );
    let mut found = fields(&bad);
    found.sort();
    assert_eq!(
        found,
        ["plan.verify.count", "plan.verify.interval_s"],
        "{bad:?}"
    );
    assert!(bad.reason.contains("plan.verify.count"), "{}", bad.reason);

    let bad = error(Some("noop.check"), SHOP, json!({"window_s": 30}));
    assert_eq!(fields(&bad), ["plan.verify.window_s"]);
    let bad = error(Some("noop.check"), SHOP, json!({"failure_limit": 1.5}));
    assert_eq!(fields(&bad), ["plan.verify.failure_limit"]);

    let bad = error(Some("noop.check"), SHOP, json!({"count": "many"}));
    assert_eq!(fields(&bad), ["params.count"]);
    let bad = error(Some("noop.check"), SHOP, json!({"err_rate": [1]}));
    assert_eq!(fields(&bad), ["params.err_rate"]);
}

#[test]
fn bad_step_params_fail_with_the_guard_fields() {
    let bad = error(
        Some("k8s.rollout.canary"),
        SHOP,
        json!({"namespace": "Not Valid"}),
    );
    let found = fields(&bad);
    assert!(
        found.contains(&"plan.steps[0].params.namespace"),
        "{found:?}"
    );
    assert!(
        found.contains(&"plan.rollback.steps[0].params.namespace"),
        "{found:?}"
    );

    let bad = error(Some("script.restart"), SHOP, json!({"script": "../sh"}));
    assert_eq!(fields(&bad), ["plan.steps[0].params.script"]);

    let bad = error(Some("k8s.rollout.canary"), SHOP, json!({"image": 7}));
    assert_eq!(fields(&bad), ["params.image"]);
}

#[test]
fn script_restart() {
    let (name, plan) = checked_plan(Some("script.restart"), SHOP, json!({}));
    assert_eq!(name, "script.restart");
    assert_eq!(
        plan["steps"],
        json!([{
            "id": "restart",
            "action": "script.exec",
            "description": "run restart-service checkout",
            "params": {"script": "restart-service", "args": ["checkout"]},
            "timeout_s": 120,
            "retry": 2,
        }])
    );
    assert_eq!(plan["rollback"], json!({"steps": []}));
    assert_eq!(plan["risk_score"], json!(0.3));
    assert_eq!(
        plan["verify"]["checks"],
        json!([{"name": "error rate", "source": "metric_1m", "query": "resource=checkout", "threshold": "err_rate < 0.01"}])
    );
    assert_eq!(plan["metadata"]["generated_by"], "planner/templates");

    let (_, plan) = checked_plan(
        Some("script.restart"),
        &[],
        json!({"service": "billing", "script": "bounce.sh", "err_rate": 0.02, "p95_ms": 800}),
    );
    assert_eq!(
        plan["steps"][0]["params"],
        json!({"script": "bounce.sh", "args": ["billing"]})
    );
    let thresholds: Vec<&str> = plan["verify"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["threshold"].as_str().unwrap())
        .collect();
    assert_eq!(thresholds, ["p95_ms < 800", "err_rate < 0.02"]);
}

#[test]
fn gateway_flip() {
    let (name, plan) = checked_plan(Some("gateway.flip"), SHOP, json!({}));
    assert_eq!(name, "gateway.flip");
    assert_eq!(plan["risk_score"], json!(0.25));
    let step = &plan["steps"][0];
    assert_eq!(step["action"], "gateway.flip");
    assert_eq!(
        step["params"],
        json!({"method": "PUT", "path": "/routes/{{labels.service}}", "body": {"upstream": "secondary"}})
    );
    let back = &plan["rollback"]["steps"][0];
    assert_eq!(back["action"], "gateway.flip");
    assert_eq!(
        back["params"],
        json!({"method": "PUT", "path": "/routes/{{labels.service}}", "body": {"upstream": "primary"}})
    );
    let thresholds: Vec<&str> = plan["verify"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["threshold"].as_str().unwrap())
        .collect();
    assert_eq!(thresholds, ["p95_ms < 300", "err_rate < 0.01"]);

    let (_, plan) = checked_plan(
        Some("gateway.flip"),
        SHOP,
        json!({"service": "cart", "to": "blue", "from": "green", "target": "edge"}),
    );
    assert_eq!(
        plan["steps"][0]["params"],
        json!({"method": "PUT", "path": "/routes/cart", "body": {"upstream": "blue"}, "target": "edge"})
    );
    assert_eq!(
        plan["rollback"]["steps"][0]["params"]["body"],
        json!({"upstream": "green"})
    );
    assert_eq!(plan["verify"]["checks"][0]["query"], "resource=cart");

    let same = error(Some("gateway.flip"), SHOP, json!({"to": "primary"}));
    assert_eq!(fields(&same), ["params.to"]);
    let odd = error(Some("gateway.flip"), &[], json!({"service": "a/../b"}));
    assert_eq!(fields(&odd), ["params.service"]);
}

#[test]
fn noop_check() {
    let (name, plan) = checked_plan(Some("noop.check"), SHOP, json!({}));
    assert_eq!(name, "noop.check");
    assert_eq!(
        plan["steps"],
        json!([{
            "id": "check",
            "action": "noop",
            "description": "no change; verify only",
            "params": {"message": "no change; verify only"},
            "timeout_s": 10,
            "retry": 0,
        }])
    );
    assert_eq!(plan["rollback"], json!({"steps": []}));
    assert_eq!(plan["risk_score"], json!(0.0));
    assert_eq!(
        plan["verify"]["checks"],
        json!([{"name": "error rate", "source": "metric_1m", "query": "resource=checkout", "threshold": "err_rate < 0.01"}])
    );

    let (_, plan) = checked_plan(
        Some("noop.check"),
        &[],
        json!({"resource": "db-primary", "err_rate": 0.001}),
    );
    assert_eq!(
        plan["verify"]["checks"][0],
        json!({"name": "error rate", "source": "metric_1m", "query": "resource=db-primary", "threshold": "err_rate < 0.001"})
    );
}

#[test]
fn template_choice_follows_command_then_label_then_default() {
    let labels = [("service", "checkout"), ("template", "script.restart")];
    assert_eq!(checked_plan(None, &labels, json!({})).0, "script.restart");
    assert_eq!(
        checked_plan(Some("gateway.flip"), &labels, json!({})).0,
        "gateway.flip"
    );
    assert_eq!(checked_plan(None, &labels[..1], json!({})).0, "noop.check");
    assert_eq!(
        checked_plan(Some(" "), &labels[..1], json!({})).0,
        "noop.check"
    );
}

#[test]
fn unknown_template_lists_the_known_ones() {
    let bad = error(Some("k8s.yolo"), SHOP, json!({}));
    for known in [
        "k8s.rollout.canary",
        "script.restart",
        "gateway.flip",
        "noop.check",
    ] {
        assert!(bad.reason.contains(known), "{}", bad.reason);
    }
    assert!(bad.reason.contains("k8s.yolo"));
    assert_eq!(fields(&bad), ["template"]);

    let bad = error(None, &[("template", "nope")], json!({}));
    assert_eq!(fields(&bad), ["case.labels.template"]);
}

#[test]
fn missing_inputs_name_the_param_and_the_labels() {
    let bad = error(
        Some("k8s.rollout.canary"),
        &[("namespace", "shop")],
        json!({}),
    );
    assert_eq!(fields(&bad), ["params.deployment"]);
    for needle in ["params.deployment", "`deployment`", "`service`"] {
        assert!(bad.reason.contains(needle), "{}", bad.reason);
    }
    // An empty label or param does not count.
    let bad = error(
        Some("k8s.rollout.canary"),
        &[("service", " ")],
        json!({"deployment": ""}),
    );
    assert_eq!(fields(&bad), ["params.deployment"]);

    let bad = error(Some("script.restart"), &[], json!({}));
    assert!(bad.reason.contains("params.service"), "{}", bad.reason);
    let bad = error(Some("gateway.flip"), &[], json!({}));
    assert_eq!(fields(&bad), ["params.service"]);
    let bad = error(None, &[], json!({}));
    assert_eq!(fields(&bad), ["params.resource"]);
    assert!(bad.reason.contains("`service`"), "{}", bad.reason);
}

#[test]
fn unknown_params_are_recorded_not_used() {
    let (_, plan) = checked_plan(
        Some("noop.check"),
        SHOP,
        json!({"deploymnet": "x", "count": 2}),
    );
    assert_eq!(plan["metadata"]["ignored_params"], json!(["deploymnet"]));
    assert_eq!(plan["verify"]["count"], 2);
}

#[test]
fn long_case_titles_are_clipped_to_the_schema() {
    let mut cmd = command(Some("script.restart"), SHOP, json!({}));
    cmd.case.title = "ü".repeat(5000);
    let (_, plan) = generate(&cmd).unwrap();
    assert_eq!(plan["title"].as_str().unwrap().chars().count(), 200);
    assert!(plan["summary"].as_str().unwrap().chars().count() <= 4000);
}

#[test]
fn every_template_is_listed_with_its_params() {
    let listed = templates();
    let names: Vec<&str> = listed.iter().map(|t| t.name).collect();
    assert_eq!(
        names,
        [
            "k8s.rollout.canary",
            "script.restart",
            "gateway.flip",
            "noop.check",
            "llm"
        ]
    );
    for template in &listed {
        assert!(!template.description.is_empty());
        if template.name == crate::llm::LLM_TEMPLATE {
            assert!(
                template.params.is_empty(),
                "the model takes no template params"
            );
            continue;
        }
        let params: Vec<&str> = template.params.iter().map(|(name, _)| *name).collect();
        for verify in [
            "window_s",
            "interval_s",
            "count",
            "failure_limit",
            "err_rate",
        ] {
            assert!(params.contains(&verify), "{}: {params:?}", template.name);
        }
    }
    let canary = &listed[0].params;
    for param in [
        "namespace",
        "deployment",
        "container",
        "image",
        "previous_image",
        "p95_ms",
    ] {
        assert!(canary.iter().any(|(name, _)| *name == param), "{param}");
    }
}

#[test]
fn every_template_passes_the_guard_with_typical_labels() {
    let labels = [
        ("namespace", "shop"),
        ("service", "checkout"),
        ("image", "checkout:2"),
        ("previous_image", "checkout:1"),
    ];
    // `llm` asks a model: the worker's, tested with one (tests/e2e/llm.rs).
    for template in templates()
        .into_iter()
        .filter(|t| t.name != crate::llm::LLM_TEMPLATE)
    {
        let (name, plan) = checked_plan(Some(template.name), &labels, json!({}));
        assert_eq!(name, template.name);
        assert_eq!(plan["template"], template.name);
        assert_eq!(plan["metadata"]["case_id"], "case-1");
        assert!(plan["title"]
            .as_str()
            .unwrap()
            .contains("p95 spike on checkout"));
        assert!(!plan["summary"].as_str().unwrap().is_empty());
    }
}

#[test]
fn the_llm_template_without_a_model_says_how_to_configure_one() {
    let error = generate(&command(Some("llm"), SHOP, json!({}))).unwrap_err();
    assert!(error.reason.contains("[llm] base_url and model"), "{error}");
    assert_eq!(error.errors[0]["field"], "template");
}
