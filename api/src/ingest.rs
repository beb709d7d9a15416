//! `POST /v1/metrics/1m`: 1-minute aggregates (the seed's `metric_1m`) the verifier checks
//! plans against and the analyst watches; `POST /v1/metrics/calls5m`: calls between services
//! over five minutes (the seed's `service_call_5m`), which the analysis of a case ranks. A batch
//! is written in one transaction; re-sending a bucket overwrites it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use orchestrator::StoreError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use verifier::{Metric1mError, MetricPoint};

use crate::auth::{Allowed, Ingest};
use crate::contract::{self, BodyLimit, Malformed, MAX_METRIC_POINTS};
use crate::extract::JsonBody;
use crate::problem::Problem;
use crate::AppState;

/// A batch of points.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricBatch {
    #[schema(schema_with = contract::metric_points_schema)]
    pub points: Vec<MetricPoint>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Ingested {
    /// Points written (inserted or overwritten).
    pub written: u64,
}

/// Ingest a batch of 1-minute metric aggregates: `{"points": [...]}`.
///
/// Each point: `tenant`, `resource` (e.g. the service), `metric` (the name thresholds use,
/// e.g. `p95_ms`, `err_rate`), `bucket` (any instant in the minute), at least one of `avg`,
/// `max`, `p95`, and optionally `count` and `labels`.
#[utoipa::path(post, path = "/v1/metrics/1m", tag = "metrics",
    request_body(content = MetricBatch, content_type = "application/json",
        description = "`{\"points\": [...]}`",
        example = json!({"points": [{"tenant": "t-001", "resource": "checkout", "metric": "p95_ms",
                          "bucket": "2026-11-21T10:00:00Z", "p95": 180.0}]})),
    responses(
        (status = 200, description = "Written", body = Ingested),
        Malformed, BodyLimit,
    ))]
pub async fn ingest_metric_1m(
    State(app): State<AppState>,
    caller: Allowed<Ingest>,
    body: JsonBody<MetricBatch>,
) -> Result<Json<Ingested>, Problem> {
    let points = body.value.points;
    check_batch(&caller, &points, |p| (&p.tenant, p.validate()))?;
    let store = app.metric_store.as_ref().ok_or_else(Problem::internal)?;
    let written = store
        .insert_batch(&points)
        .await
        .map_err(|error| match error {
            // The same store as the cases': an outage is a 503 here too.
            Metric1mError::Database(error) => Problem::from(StoreError::from(error)),
            Metric1mError::Invalid { .. } => {
                tracing::error!(%error, "metric_1m ingest refused points validated before");
                Problem::internal()
            }
        })?;
    if let Some(analyst) = &app.analyst {
        analyst.poke(
            points
                .iter()
                .map(|p| (p.tenant.clone(), p.resource.clone(), p.metric.clone())),
        );
    }
    Ok(Json(Ingested { written }))
}

/// A batch of call aggregates.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallBatch {
    #[schema(schema_with = contract::call_points_schema)]
    pub points: Vec<analyst::store::CallPoint>,
}

/// Ingest calls between services aggregated over five minutes: `{"points": [...]}`.
///
/// Each point: `tenant`, `bucket` (any instant in the five minutes), `src` (the calling
/// service), `dst` (the service called), and at least one of `rps`, `err_rate` (0 to 1),
/// `p50_ms`, `p95_ms`.
#[utoipa::path(post, path = "/v1/metrics/calls5m", tag = "metrics",
    request_body(content = CallBatch, content_type = "application/json",
        description = "`{\"points\": [...]}`",
        example = json!({"points": [{"tenant": "t-001", "bucket": "2026-12-02T10:05:00Z",
                          "src": "checkout", "dst": "payments", "rps": 42.0, "err_rate": 0.12,
                          "p50_ms": 35.0, "p95_ms": 180.0}]})),
    responses(
        (status = 200, description = "Written", body = Ingested),
        Malformed, BodyLimit,
    ))]
pub async fn ingest_calls_5m(
    State(app): State<AppState>,
    caller: Allowed<Ingest>,
    body: JsonBody<CallBatch>,
) -> Result<Json<Ingested>, Problem> {
    let points = body.value.points;
    check_batch(&caller, &points, |p| (&p.tenant, p.validate()))?;
    let written = analyst::store::AnalysisStore::new(app.orchestrator.store().pool())
        .insert_calls(&points)
        .await
        .map_err(Problem::from)?;
    Ok(Json(Ingested { written }))
}

/// A batch is 1 to [`MAX_METRIC_POINTS`] points, each valid (`check` gives its tenant and its
/// validation) and of a tenant the caller may write: else the problem naming the point.
fn check_batch<P>(
    caller: &Allowed<Ingest>,
    points: &[P],
    check: impl Fn(&P) -> (&String, Result<(), (&'static str, String)>),
) -> Result<(), Problem> {
    if points.is_empty() {
        return Err(Problem::invalid("points", "the batch is empty"));
    }
    if points.len() > MAX_METRIC_POINTS {
        return Err(Problem::invalid(
            "points",
            format!(
                "{} points; at most {MAX_METRIC_POINTS} per request",
                points.len()
            ),
        ));
    }
    for (index, point) in points.iter().enumerate() {
        let (tenant, valid) = check(point);
        valid.map_err(|(field, message)| {
            Problem::invalid(format!("points[{index}].{field}"), message)
        })?;
        own_tenant(caller, index, tenant)?;
    }
    Ok(())
}

/// A key confined to a tenant writes that tenant's metrics only (403 naming the point).
fn own_tenant(caller: &Allowed<Ingest>, index: usize, tenant: &str) -> Result<(), Problem> {
    match caller.principal.tenant.as_deref() {
        Some(own) if own != tenant => {
            let mut problem = Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "Forbidden",
                format!("this key may only write metrics of tenant {own:?}"),
            );
            problem.field = Some(format!("points[{index}].tenant"));
            Err(problem)
        }
        _ => Ok(()),
    }
}
