//! `k8s.rollout` through the real kube client against a local wiremock server emulating the
//! Kubernetes API server.

use std::time::Duration;

use executor::adapters::k8s::{K8sConfig, K8sRollout};
use executor::{Adapter, StepContext};
use serde_json::{json, Value};
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};
use workflow::messages::CaseBrief;

const DEPLOYMENT_PATH: &str = "/apis/apps/v1/namespaces/prod/deployments/checkout";

fn context(timeout: Duration) -> StepContext {
    StepContext {
        case: CaseBrief {
            id: "c1".into(),
            tenant: "acme".into(),
            ..Default::default()
        },
        step_id: "s1".into(),
        attempt: 1,
        timeout,
    }
}

fn adapter(server: &MockServer) -> K8sRollout {
    K8sRollout::new(K8sConfig {
        api_url: server.uri(),
        token: Some("t0ken".into()),
        ca_cert_pem: None,
        insecure_skip_tls_verify: false,
        poll_interval: Duration::from_millis(50),
    })
    .expect("valid config")
}

/// A Deployment as the API server returns it: 3 replicas wanted, `status` as given.
fn deployment(generation: i64, status: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "checkout",
            "namespace": "prod",
            "generation": generation,
            "resourceVersion": format!("{}", 1000 + generation)
        },
        "spec": {
            "replicas": 3,
            "selector": { "matchLabels": { "app": "checkout" } },
            "template": {
                "metadata": { "labels": { "app": "checkout" } },
                "spec": {
                    "containers": [
                        { "name": "app", "image": "registry/checkout:1.0" },
                        { "name": "envoy", "image": "envoy:1.30" }
                    ]
                }
            }
        },
        "status": status
    })
}

fn complete(generation: i64) -> Value {
    deployment(
        generation,
        json!({
            "observedGeneration": generation,
            "replicas": 3,
            "updatedReplicas": 3,
            "readyReplicas": 3,
            "availableReplicas": 3
        }),
    )
}

fn status_404() -> ResponseTemplate {
    ResponseTemplate::new(404).set_body_json(json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "deployments.apps \"checkout\" not found",
        "reason": "NotFound",
        "details": { "name": "checkout", "group": "apps", "kind": "deployments" },
        "code": 404
    }))
}

async fn mount_get(server: &MockServer, times: Option<u64>, body: Value) {
    let mock = Mock::given(method("GET"))
        .and(path(DEPLOYMENT_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(body));
    match times {
        Some(n) => mock.up_to_n_times(n).mount(server).await,
        None => mock.mount(server).await,
    }
}

#[tokio::test]
async fn sets_the_image_and_waits_for_the_rollout() {
    let server = MockServer::start().await;
    // Mocks answer in mount order while they have uses left: the check before the patch,
    // then two incomplete statuses, then the complete one.
    mount_get(&server, Some(1), complete(1)).await;
    Mock::given(method("PATCH"))
        .and(path(DEPLOYMENT_PATH))
        .and(query_param("fieldManager", "opscase"))
        .and(header(
            "content-type",
            "application/strategic-merge-patch+json",
        ))
        .and(header("authorization", "Bearer t0ken"))
        .and(body_json(json!({
            "spec": { "template": { "spec": { "containers": [
                { "name": "app", "image": "registry/checkout:2.0" }
            ] } } }
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(deployment(
            2,
            json!({"observedGeneration": 1, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3}),
        )))
        .expect(1)
        .mount(&server)
        .await;
    mount_get(
        &server,
        Some(1),
        deployment(
            2,
            json!({"observedGeneration": 1, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3}),
        ),
    )
    .await;
    mount_get(
        &server,
        Some(1),
        deployment(
            2,
            json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 1, "availableReplicas": 3, "unavailableReplicas": 1}),
        ),
    )
    .await;
    mount_get(&server, None, complete(2)).await;

    let params = json!({
        "namespace": "prod", "deployment": "checkout",
        "container": "app", "image": "registry/checkout:2.0"
    });
    let adapter = adapter(&server);
    let out = adapter
        .run(&params, &context(Duration::from_secs(20)))
        .await
        .expect("rolled out");
    assert!(
        out.detail.starts_with(
            "set image of container app in deployment prod/checkout to registry/checkout:2.0; rolled out"
        ),
        "{}",
        out.detail
    );
    let log = out.output.unwrap();
    assert!(
        log.contains("1 out of 3 new replicas have been updated"),
        "{log}"
    );
    assert!(log.contains("successfully rolled out"), "{log}");

    let received = server.received_requests().await.unwrap();
    let methods: Vec<&str> = received.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(methods, ["GET", "PATCH", "GET", "GET", "GET"]);
    for request in &received {
        assert_eq!(request.url.path(), DEPLOYMENT_PATH);
        assert_eq!(
            request.headers.get("authorization").unwrap(),
            "Bearer t0ken"
        );
    }

    assert_eq!(
        adapter
            .describe(&params, &context(Duration::from_secs(20)))
            .unwrap(),
        "would set image of container app in deployment prod/checkout to registry/checkout:2.0"
    );
}

#[tokio::test]
async fn restart_patches_the_restarted_at_annotation() {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .and(path(DEPLOYMENT_PATH))
        .and(header(
            "content-type",
            "application/strategic-merge-patch+json",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(deployment(
            5,
            json!({"observedGeneration": 4, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3}),
        )))
        .expect(1)
        .mount(&server)
        .await;
    // A blip of the API server while polling is waited out.
    Mock::given(method("GET"))
        .and(path(DEPLOYMENT_PATH))
        .respond_with(ResponseTemplate::new(503).set_body_string("apiserver restarting"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    mount_get(&server, None, complete(5)).await;

    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    let params = json!({"namespace": "prod", "deployment": "checkout", "restart": true});
    let out = adapter(&server)
        .run(&params, &context(Duration::from_secs(20)))
        .await
        .expect("restarted");
    assert!(
        out.detail
            .starts_with("restart deployment prod/checkout; rolled out"),
        "{}",
        out.detail
    );

    let received = server.received_requests().await.unwrap();
    let patch = received
        .iter()
        .find(|r| r.method.as_str() == "PATCH")
        .unwrap();
    let body: Value = serde_json::from_slice(&patch.body).unwrap();
    let annotations = body["spec"]["template"]["metadata"]["annotations"]
        .as_object()
        .unwrap();
    assert_eq!(annotations.len(), 1);
    let at = annotations["kubectl.kubernetes.io/restartedAt"]
        .as_str()
        .unwrap();
    let at = chrono::DateTime::parse_from_rfc3339(at).expect("RFC 3339");
    assert!(at >= before && at <= chrono::Utc::now() + chrono::Duration::seconds(1));
    // Nothing else is patched.
    let mut rest = body.clone();
    rest["spec"]["template"]["metadata"]["annotations"] = json!({});
    assert_eq!(
        rest,
        json!({"spec": {"template": {"metadata": {"annotations": {}}}}})
    );

    assert_eq!(
        adapter(&server)
            .describe(&params, &context(Duration::from_secs(20)))
            .unwrap(),
        "would restart deployment prod/checkout"
    );
}

#[tokio::test]
async fn a_missing_deployment_is_a_permanent_error() {
    let server = MockServer::start().await;
    Mock::given(path(DEPLOYMENT_PATH))
        .respond_with(status_404())
        .mount(&server)
        .await;
    let adapter = adapter(&server);
    for params in [
        json!({"namespace": "prod", "deployment": "checkout", "restart": true}),
        json!({"namespace": "prod", "deployment": "checkout", "container": "app", "image": "x:2"}),
    ] {
        let err = adapter
            .run(&params, &context(Duration::from_secs(10)))
            .await
            .unwrap_err();
        assert!(!err.retryable);
        assert_eq!(err.message, "deployment prod/checkout not found");
    }
}

#[tokio::test]
async fn an_unknown_container_is_refused_before_patching() {
    let server = MockServer::start().await;
    mount_get(&server, None, complete(1)).await;
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(200).set_body_json(complete(2)))
        .expect(0)
        .mount(&server)
        .await;
    let err = adapter(&server)
        .run(
            &json!({"namespace": "prod", "deployment": "checkout", "container": "web", "image": "x:2"}),
            &context(Duration::from_secs(10)),
        )
        .await
        .unwrap_err();
    assert!(!err.retryable);
    assert!(
        err.message.contains("no container \"web\""),
        "{}",
        err.message
    );
    assert!(err.message.contains("app, envoy"), "{}", err.message);
}

#[tokio::test]
async fn forbidden_is_permanent_and_server_errors_retryable() {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .and(path(DEPLOYMENT_PATH))
        .respond_with(ResponseTemplate::new(403).set_body_json(json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "deployments.apps \"checkout\" is forbidden: User \"system:serviceaccount:ops:opscase\" cannot patch resource",
            "reason": "Forbidden", "code": 403
        })))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(DEPLOYMENT_PATH))
        .respond_with(ResponseTemplate::new(500).set_body_string("etcd timeout"))
        .mount(&server)
        .await;
    let adapter = adapter(&server);
    let params = json!({"namespace": "prod", "deployment": "checkout", "restart": true});

    let err = adapter
        .run(&params, &context(Duration::from_secs(10)))
        .await
        .unwrap_err();
    assert!(!err.retryable);
    assert!(err.message.contains("403"), "{}", err.message);
    assert!(err.message.contains("Forbidden"), "{}", err.message);

    let err = adapter
        .run(&params, &context(Duration::from_secs(10)))
        .await
        .unwrap_err();
    assert!(err.retryable, "{}", err.message);
    assert!(err.message.contains("500"), "{}", err.message);
}

#[tokio::test]
async fn a_rollout_that_never_completes_times_out_retryably() {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .and(path(DEPLOYMENT_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(deployment(
            3,
            json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3}),
        )))
        .mount(&server)
        .await;
    mount_get(
        &server,
        None,
        deployment(
            3,
            json!({"observedGeneration": 3, "replicas": 4, "updatedReplicas": 1, "availableReplicas": 3, "unavailableReplicas": 1}),
        ),
    )
    .await;
    let err = adapter(&server)
        .run(
            &json!({"namespace": "prod", "deployment": "checkout", "restart": true}),
            &context(Duration::from_secs(1)),
        )
        .await
        .unwrap_err();
    assert!(err.retryable);
    assert!(
        err.message
            .starts_with("rollout of prod/checkout not complete after 1 s"),
        "{}",
        err.message
    );
    // The last status seen is part of the error.
    assert!(err.message.contains("updated=1"), "{}", err.message);
    assert!(err.message.contains("unavailable=1"), "{}", err.message);
    let gets = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == "GET")
        .count();
    assert!(gets >= 2, "polled {gets} times");
}

#[tokio::test]
async fn progress_deadline_exceeded_fails_at_once() {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .and(path(DEPLOYMENT_PATH))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(deployment(7, json!({"observedGeneration": 6}))),
        )
        .mount(&server)
        .await;
    mount_get(
        &server,
        None,
        deployment(
            7,
            json!({
                "observedGeneration": 7, "replicas": 4, "updatedReplicas": 1,
                "availableReplicas": 3, "unavailableReplicas": 1,
                "conditions": [
                    {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                    {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                     "message": "ReplicaSet \"checkout-7d9f\" has timed out progressing."}
                ]
            }),
        ),
    )
    .await;
    let err = adapter(&server)
        .run(
            &json!({"namespace": "prod", "deployment": "checkout", "container": "app", "image": "registry/checkout:bad"}),
            &context(Duration::from_secs(60)),
        )
        .await
        .unwrap_err();
    assert!(!err.retryable);
    assert!(
        err.message.contains("exceeded its progress deadline"),
        "{}",
        err.message
    );
    assert!(
        err.message.contains("timed out progressing"),
        "{}",
        err.message
    );
}

#[test]
fn bad_configs_are_refused() {
    let config = |url: &str| K8sConfig::new(url);
    assert!(K8sRollout::new(config("ftp://10.0.0.1")).is_err());
    assert!(K8sRollout::new(config("not a url")).is_err());
    assert!(K8sRollout::new(K8sConfig {
        ca_cert_pem: Some("not a certificate".into()),
        ..config("https://10.0.0.1:6443")
    })
    .is_err());
    assert!(K8sRollout::new(K8sConfig {
        poll_interval: Duration::ZERO,
        ..config("https://10.0.0.1:6443")
    })
    .is_err());
    let adapter = K8sRollout::new(K8sConfig {
        token: Some("t".into()),
        ..config("https://10.0.0.1:6443")
    })
    .unwrap();
    assert_eq!(adapter.action(), "k8s.rollout");
    assert!(!format!("{adapter:?}").contains("Bearer"));
}
