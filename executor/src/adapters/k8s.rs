//! `k8s.rollout`: patches a Deployment through the Kubernetes API (a new image for one
//! container, or the restart annotation `kubectl rollout restart` sets) and waits for the
//! rollout like `kubectl rollout status`.
//!
//! Params (see `workflow/schemas/adapters/k8s.rollout.json`): `{namespace, deployment,
//! container, image}` or `{namespace, deployment, restart: true}`.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use kube::client::ConfigExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::adapter::{Adapter, StepContext, StepError, StepOutput};

/// The annotation `kubectl rollout restart` sets on the pod template.
pub const RESTARTED_AT_ANNOTATION: &str = "kubectl.kubernetes.io/restartedAt";
/// The field manager of our patches (shown in `managedFields`).
pub const FIELD_MANAGER: &str = "opscase";
/// The most of the rollout log kept as the step's output.
const OUTPUT_CAP: usize = 64 * 1024;

/// The configuration of the `k8s.rollout` adapter.
#[derive(Clone)]
pub struct K8sConfig {
    /// The API server, e.g. `https://10.0.0.1:6443` or `http://127.0.0.1:8001`.
    pub api_url: String,
    /// A bearer token (e.g. a service account's).
    pub token: Option<String>,
    /// The cluster CA (PEM, one or more certificates); the system's roots when absent.
    pub ca_cert_pem: Option<String>,
    /// Accept any server certificate (test clusters only).
    pub insecure_skip_tls_verify: bool,
    /// How often the rollout status is read.
    pub poll_interval: Duration,
}

impl K8sConfig {
    pub fn new(api_url: impl Into<String>) -> Self {
        Self {
            api_url: api_url.into(),
            ..Self::default()
        }
    }
}

impl Default for K8sConfig {
    /// The in-cluster API server, no credentials, a 2 s poll interval.
    fn default() -> Self {
        Self {
            api_url: "https://kubernetes.default.svc".to_string(),
            token: None,
            ca_cert_pem: None,
            insecure_skip_tls_verify: false,
            poll_interval: Duration::from_secs(2),
        }
    }
}

impl fmt::Debug for K8sConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("K8sConfig")
            .field("api_url", &self.api_url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_cert_pem", &self.ca_cert_pem.as_ref().map(|_| "<pem>"))
            .field("insecure_skip_tls_verify", &self.insecure_skip_tls_verify)
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

/// A configuration `K8sRollout::new` refuses.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("k8s.rollout config: {0}")]
pub struct K8sConfigError(pub String);

/// The `k8s.rollout` adapter.
pub struct K8sRollout {
    api_url: String,
    kube_config: kube::Config,
    poll_interval: Duration,
    /// Built on first use: a kube client spawns a task, so it needs a running runtime.
    client: OnceCell<kube::Client>,
}

impl fmt::Debug for K8sRollout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("K8sRollout")
            .field("api_url", &self.api_url)
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

impl K8sRollout {
    pub fn new(config: K8sConfig) -> Result<Self, K8sConfigError> {
        let uri: http::Uri = config
            .api_url
            .parse()
            .map_err(|e| K8sConfigError(format!("bad api_url {:?}: {e}", config.api_url)))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(K8sConfigError(format!(
                "api_url {:?} is not an http(s) URL with a host",
                config.api_url
            )));
        }
        if config.poll_interval.is_zero() {
            return Err(K8sConfigError("poll_interval must be positive".into()));
        }
        let mut kube_config = kube::Config::new(uri);
        kube_config.accept_invalid_certs = config.insecure_skip_tls_verify;
        // The step timeout bounds every call (see `run`).
        kube_config.read_timeout = None;
        kube_config.write_timeout = None;
        kube_config.connect_timeout = Some(Duration::from_secs(10));
        if let Some(pem) = &config.ca_cert_pem {
            use rustls::pki_types::pem::PemObject;
            use rustls::pki_types::CertificateDer;
            let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
                .map(|cert| cert.map(|c| c.to_vec()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| K8sConfigError(format!("ca_cert_pem: {e}")))?;
            if certs.is_empty() {
                return Err(K8sConfigError(
                    "ca_cert_pem holds no PEM certificate".into(),
                ));
            }
            kube_config.root_cert = Some(certs);
        }
        if let Some(token) = &config.token {
            let mut value = http::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                .map_err(|_| K8sConfigError("token is not a valid header value".into()))?;
            value.set_sensitive(true);
            kube_config
                .headers
                .push((http::header::AUTHORIZATION, value));
        }
        // ring, never aws-lc-rs: make it the process default if none is set yet.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Build the TLS connector once now so that a bad CA fails here, not in a step.
        kube_config
            .rustls_https_connector()
            .map_err(|e| K8sConfigError(format!("TLS setup: {e}")))?;
        Ok(Self {
            api_url: config.api_url,
            kube_config,
            poll_interval: config.poll_interval,
            client: OnceCell::new(),
        })
    }

    async fn client(&self) -> Result<kube::Client, StepError> {
        self.client
            .get_or_try_init(|| async {
                Ok::<_, kube::Error>(
                    kube::client::ClientBuilder::try_from(self.kube_config.clone())?
                        .with_layer(&tower::util::MapRequestLayer::new(with_trace))
                        .build(),
                )
            })
            .await
            .cloned()
            .map_err(|e| StepError::permanent(format!("k8s.rollout: cannot build a client: {e}")))
    }
}

/// The step's trace continues at the API server (which logs `traceparent` in its audit log).
fn with_trace(mut request: http::Request<kube::client::Body>) -> http::Request<kube::client::Body> {
    for (name, value) in bus::trace::current_headers() {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            request.headers_mut().insert(name, value);
        }
    }
    request
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParams {
    namespace: String,
    deployment: String,
    #[serde(default)]
    container: Option<String>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    restart: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
enum Change {
    Image { container: String, image: String },
    Restart,
}

#[derive(Debug, Clone, PartialEq)]
struct Params {
    namespace: String,
    deployment: String,
    change: Change,
}

impl Params {
    fn parse(params: &Value) -> Result<Self, StepError> {
        let raw: RawParams = serde_json::from_value(params.clone())
            .map_err(|e| StepError::permanent(format!("k8s.rollout: bad params: {e}")))?;
        if !is_dns_label(&raw.namespace, 63) {
            return Err(StepError::permanent(format!(
                "k8s.rollout: bad namespace {:?}",
                raw.namespace
            )));
        }
        if !is_dns_subdomain(&raw.deployment) {
            return Err(StepError::permanent(format!(
                "k8s.rollout: bad deployment name {:?}",
                raw.deployment
            )));
        }
        let change =
            match (raw.image, raw.container, raw.restart) {
                (Some(_), _, Some(_)) => return Err(StepError::permanent(
                    "k8s.rollout: give either image (with container) or restart: true, not both",
                )),
                (Some(image), Some(container), None) => {
                    if !is_dns_label(&container, 63) {
                        return Err(StepError::permanent(format!(
                            "k8s.rollout: bad container name {container:?}"
                        )));
                    }
                    if image.trim().is_empty() || image.chars().any(char::is_whitespace) {
                        return Err(StepError::permanent(format!(
                            "k8s.rollout: bad image {image:?}"
                        )));
                    }
                    Change::Image { container, image }
                }
                (Some(_), None, None) => {
                    return Err(StepError::permanent(
                        "k8s.rollout: image needs the container to set it on",
                    ))
                }
                (None, _, Some(true)) => Change::Restart,
                (None, _, _) => {
                    return Err(StepError::permanent(
                        "k8s.rollout: nothing to do: give container and image, or restart: true",
                    ))
                }
            };
        Ok(Self {
            namespace: raw.namespace,
            deployment: raw.deployment,
            change,
        })
    }

    fn what(&self) -> String {
        match &self.change {
            Change::Image { container, image } => format!(
                "set image of container {container} in deployment {}/{} to {image}",
                self.namespace, self.deployment
            ),
            Change::Restart => format!("restart deployment {}/{}", self.namespace, self.deployment),
        }
    }
}

fn is_dns_label(s: &str, max: usize) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= max
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(|label| is_dns_label(label, 63))
}

/// A failed API call, classified.
fn api_error(op: &str, params: &Params, error: kube::Error) -> StepError {
    let (ns, name) = (&params.namespace, &params.deployment);
    match error {
        kube::Error::Api(response) => {
            let message = format!(
                "{op} of deployment {ns}/{name}: {} {}{}",
                response.code,
                response.reason,
                if response.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", response.message)
                }
            );
            match response.code {
                404 => StepError::permanent(format!("deployment {ns}/{name} not found")),
                401 | 403 => StepError::permanent(format!("k8s API refused {message}")),
                409 | 429 | 500..=599 => StepError::retryable(message),
                _ => StepError::permanent(message),
            }
        }
        e @ (kube::Error::HyperError(_)
        | kube::Error::Service(_)
        | kube::Error::ReadEvents(_)
        | kube::Error::SerdeError(_)
        | kube::Error::FromUtf8(_)) => {
            StepError::retryable(format!("{op} of deployment {ns}/{name}: {e}"))
        }
        e => StepError::permanent(format!("{op} of deployment {ns}/{name}: {e}")),
    }
}

/// Where a rollout stands, like `kubectl rollout status` says it.
#[derive(Debug, Clone, PartialEq)]
enum Rollout {
    Complete(String),
    Waiting(String),
    Failed(String),
}

/// `at_least_generation`: the generation our patch produced (the status must have seen it).
fn rollout_state(deployment: &Deployment, at_least_generation: i64) -> Rollout {
    let name = deployment.metadata.name.as_deref().unwrap_or("?");
    let generation = deployment
        .metadata
        .generation
        .unwrap_or(0)
        .max(at_least_generation);
    let status = deployment.status.clone().unwrap_or_default();
    let spec = deployment.spec.as_ref();
    if status.observed_generation.unwrap_or(0) < generation {
        return Rollout::Waiting(format!(
            "waiting for deployment {name:?} spec update to be observed"
        ));
    }
    let deadline_exceeded = status.conditions.iter().flatten().find(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    if let Some(condition) = deadline_exceeded {
        return Rollout::Failed(format!(
            "deployment {name:?} exceeded its progress deadline{}",
            condition
                .message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ));
    }
    let desired = spec.and_then(|s| s.replicas).unwrap_or(1);
    let replicas = status.replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let unavailable = status.unavailable_replicas.unwrap_or(0);
    let paused = if spec.and_then(|s| s.paused) == Some(true) {
        " (the deployment is paused)"
    } else {
        ""
    };
    if updated < desired {
        return Rollout::Waiting(format!(
            "waiting for deployment {name:?} rollout to finish: {updated} out of {desired} new replicas have been updated{paused}"
        ));
    }
    if replicas > updated {
        return Rollout::Waiting(format!(
            "waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination{paused}",
            replicas - updated
        ));
    }
    if available < updated || available < desired || unavailable > 0 {
        return Rollout::Waiting(format!(
            "waiting for deployment {name:?} rollout to finish: {available} of {updated} updated replicas are available{paused}"
        ));
    }
    Rollout::Complete(format!("deployment {name:?} successfully rolled out"))
}

/// The numbers of a deployment's status, on one line.
fn status_line(deployment: &Deployment) -> String {
    let status = deployment.status.clone().unwrap_or_default();
    let n = |v: Option<i32>| v.map_or("-".to_string(), |v| v.to_string());
    format!(
        "generation={} observedGeneration={} desired={} replicas={} updated={} ready={} available={} unavailable={}",
        deployment
            .metadata
            .generation
            .map_or("-".to_string(), |g| g.to_string()),
        status
            .observed_generation
            .map_or("-".to_string(), |g| g.to_string()),
        n(deployment.spec.as_ref().and_then(|s| s.replicas)),
        n(status.replicas),
        n(status.updated_replicas),
        n(status.ready_replicas),
        n(status.available_replicas),
        n(status.unavailable_replicas),
    )
}

fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// The rollout log, capped.
#[derive(Default)]
struct Log(String);

impl Log {
    fn push(&mut self, line: &str) {
        if self.0.len() + line.len() < OUTPUT_CAP {
            self.0.push_str(line);
            self.0.push('\n');
        }
    }

    /// Adds `line` unless it repeats the last one.
    fn push_new(&mut self, line: &str) {
        if !self.0.trim_end().ends_with(line) {
            self.push(line);
        }
    }
}

/// The strategic-merge patch that sets one container's image (in `containers` or
/// `initContainers`, wherever `container` is), after checking that it exists: a strategic
/// merge would otherwise add a container.
fn image_patch(
    deployment: &Deployment,
    params: &Params,
    container: &str,
    image: &str,
) -> Result<Value, StepError> {
    let pod = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .ok_or_else(|| {
            StepError::permanent(format!(
                "deployment {}/{} has no pod template spec",
                params.namespace, params.deployment
            ))
        })?;
    let list = if pod.containers.iter().any(|c| c.name == container) {
        "containers"
    } else if pod
        .init_containers
        .iter()
        .flatten()
        .any(|c| c.name == container)
    {
        "initContainers"
    } else {
        let names: Vec<&str> = pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten())
            .map(|c| c.name.as_str())
            .collect();
        return Err(StepError::permanent(format!(
            "deployment {}/{} has no container {container:?} (containers: {})",
            params.namespace,
            params.deployment,
            names.join(", ")
        )));
    };
    Ok(json!({
        "spec": { "template": { "spec": { list: [ { "name": container, "image": image } ] } } }
    }))
}

fn restart_patch(now: chrono::DateTime<chrono::Utc>) -> Value {
    json!({
        "spec": { "template": { "metadata": { "annotations": {
            RESTARTED_AT_ANNOTATION: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        } } } }
    })
}

#[async_trait]
impl Adapter for K8sRollout {
    fn action(&self) -> &'static str {
        "k8s.rollout"
    }

    fn describe(&self, params: &Value, _context: &StepContext) -> Result<String, StepError> {
        Ok(format!("would {}", Params::parse(params)?.what()))
    }

    async fn run(&self, params: &Value, context: &StepContext) -> Result<StepOutput, StepError> {
        let params = Params::parse(params)?;
        let deadline = Instant::now() + context.timeout;
        let (ns, name) = (params.namespace.as_str(), params.deployment.as_str());
        let timed_out = |op: &str| {
            StepError::retryable(format!(
                "{op} of deployment {ns}/{name}: no answer within the step timeout of {}",
                seconds(context.timeout)
            ))
        };
        let api: Api<Deployment> = Api::namespaced(self.client().await?, ns);
        let mut log = Log::default();

        let patch = match &params.change {
            Change::Image { container, image } => {
                let current = tokio::time::timeout_at(deadline, api.get(name))
                    .await
                    .map_err(|_| timed_out("GET"))?
                    .map_err(|e| api_error("GET", &params, e))?;
                image_patch(&current, &params, container, image)?
            }
            Change::Restart => restart_patch(chrono::Utc::now()),
        };
        let patch_params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        let patched = tokio::time::timeout_at(
            deadline,
            api.patch(name, &patch_params, &Patch::Strategic(&patch)),
        )
        .await
        .map_err(|_| timed_out("PATCH"))?
        .map_err(|e| api_error("PATCH", &params, e))?;
        let generation = patched.metadata.generation.unwrap_or(0);
        log.push(&format!(
            "patched deployment {ns}/{name}: {} (generation {generation})",
            params.what()
        ));

        let mut last_status = status_line(&patched);
        let mut last_error: Option<String> = None;
        loop {
            let last_seen = match &last_error {
                Some(error) => format!("{last_status} (then: {error})"),
                None => last_status.clone(),
            };
            let not_complete = |last_seen: &str, log: &Log| {
                StepError::retryable(format!(
                    "rollout of {ns}/{name} not complete after {}; last status: {last_seen}",
                    seconds(context.timeout)
                ))
                .with_output(Some(log.0.clone()))
            };
            if Instant::now() >= deadline {
                return Err(not_complete(&last_seen, &log));
            }
            match tokio::time::timeout_at(deadline, api.get(name)).await {
                Err(_) => return Err(not_complete(&last_seen, &log)),
                Ok(Err(e)) => {
                    let error = api_error("GET", &params, e);
                    if !error.retryable {
                        return Err(error.with_output(Some(log.0.clone())));
                    }
                    // A blip while waiting: keep polling until the deadline.
                    tracing::debug!(deployment = %format!("{ns}/{name}"), error = %error, "rollout status read failed");
                    last_error = Some(error.message);
                }
                Ok(Ok(deployment)) => {
                    last_error = None;
                    last_status = status_line(&deployment);
                    let last_seen = &last_status;
                    match rollout_state(&deployment, generation) {
                        Rollout::Complete(message) => {
                            log.push(&message);
                            return Ok(StepOutput {
                                detail: format!("{}; rolled out ({last_seen})", params.what()),
                                output: Some(log.0),
                            });
                        }
                        Rollout::Failed(message) => {
                            log.push(&message);
                            return Err(StepError::permanent(format!(
                                "rollout of {ns}/{name} failed: {message}; last status: {last_seen}"
                            ))
                            .with_output(Some(log.0)));
                        }
                        Rollout::Waiting(message) => log.push_new(&message),
                    }
                }
            }
            let next = (Instant::now() + self.poll_interval).min(deadline);
            tokio::time::sleep_until(next).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(status: Value) -> Deployment {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": { "name": "web", "namespace": "prod", "generation": 2 },
            "spec": { "replicas": 3, "selector": {}, "template": {} },
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn rollout_states() {
        let waiting = |s| matches!(rollout_state(&deployment(s), 2), Rollout::Waiting(_));
        assert!(waiting(json!({"observedGeneration": 1})));
        assert!(waiting(
            json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1})
        ));
        assert!(waiting(
            json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 3, "availableReplicas": 3})
        ));
        assert!(waiting(
            json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 2, "unavailableReplicas": 1})
        ));
        assert!(matches!(
            rollout_state(
                &deployment(
                    json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3})
                ),
                2
            ),
            Rollout::Complete(_)
        ));
        // The patch made generation 3: a status of generation 2 is stale.
        assert!(matches!(
            rollout_state(
                &deployment(
                    json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3})
                ),
                3
            ),
            Rollout::Waiting(_)
        ));
        assert!(matches!(
            rollout_state(
                &deployment(json!({"observedGeneration": 2, "conditions": [
                    {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
                ]})),
                2
            ),
            Rollout::Failed(_)
        ));
    }

    #[test]
    fn params() {
        assert_eq!(
            Params::parse(&json!({"namespace": "prod", "deployment": "web", "restart": true}))
                .unwrap()
                .change,
            Change::Restart
        );
        for bad in [
            json!({"namespace": "prod", "deployment": "web"}),
            json!({"namespace": "prod", "deployment": "web", "restart": false}),
            json!({"namespace": "prod", "deployment": "web", "image": "x:1"}),
            json!({"namespace": "prod", "deployment": "web", "container": "c", "image": "x:1", "restart": true}),
            json!({"namespace": "prod", "deployment": "../x", "restart": true}),
            json!({"namespace": "Prod", "deployment": "web", "restart": true}),
            json!({"namespace": "prod", "deployment": "web", "restart": true, "extra": 1}),
        ] {
            let err = Params::parse(&bad).unwrap_err();
            assert!(!err.retryable, "{bad}");
        }
    }
}
