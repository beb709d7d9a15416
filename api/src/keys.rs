//! `/v1/keys`: API keys, for admins. A key's secret is shown once, in the answer that creates it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use orchestrator::{ApiKey, NewApiKey, Role};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{Administer, Allowed, AnyKey};
use crate::contract::{self, BodyLimit, Malformed};
use crate::extract::{self, JsonBody, PathId};
use crate::problem::Problem;
use crate::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    #[schema(schema_with = contract::key_name_schema)]
    pub name: String,
    #[schema(schema_with = contract::roles_schema)]
    pub roles: Vec<Role>,
    #[schema(schema_with = contract::key_tenant_schema)]
    pub tenant: Option<String>,
    /// RFC 3339; the key is refused from then on. A time already past is refused (422).
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    /// The secret. It is not stored and will not be shown again.
    pub key: String,
    pub api_key: ApiKey,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub items: Vec<ApiKey>,
}

#[utoipa::path(post, path = "/v1/keys", tag = "keys",
    request_body(content = CreateKey, content_type = "application/json"),
    responses(
        (status = 201, description = "The key and, once only, its secret", body = CreatedKey),
        (status = 422, description = "`expires_at` is already past", body = Problem, content_type = "application/problem+json"),
        Malformed, BodyLimit,
    ))]
pub async fn create_key(
    State(app): State<AppState>,
    caller: Allowed<Administer>,
    body: JsonBody<CreateKey>,
) -> Result<Response, Problem> {
    let body = body.value;
    let name = contract::text("name", &body.name, contract::KEY_NAME_MAX_CHARS)?;
    if body.roles.is_empty() {
        return Err(Problem::invalid("roles", "a key needs at least one role"));
    }
    if let Some(tenant) = &body.tenant {
        extract::validate_tenant("tenant", tenant)?;
    }
    if body.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(Problem::unprocessable(
            "expires_at",
            "expires_at is in the past",
        ));
    }
    let (api_key, key) = app
        .orchestrator
        .create_key(NewApiKey {
            name,
            roles: body.roles,
            tenant: body.tenant,
            expires_at: body.expires_at,
            created_by: caller.principal.identity(),
        })
        .await?;
    tracing::info!(key_id = %api_key.id, name = %api_key.name, "API key created");
    Ok((StatusCode::CREATED, Json(CreatedKey { key, api_key })).into_response())
}

#[utoipa::path(get, path = "/v1/keys", tag = "keys",
    responses((status = 200, description = "All keys, without secrets", body = KeyList)))]
pub async fn list_keys(
    State(app): State<AppState>,
    _caller: Allowed<Administer>,
) -> Result<Json<KeyList>, Problem> {
    Ok(Json(KeyList {
        items: app.orchestrator.list_keys().await?,
    }))
}

#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = uuid::Uuid, Path, description = "Key id")),
    responses(
        (status = 200, description = "The key, revoked: refused from the next request on", body = ApiKey),
        (status = 404, description = "No such key", body = Problem, content_type = "application/problem+json"),
        Malformed,
    ))]
pub async fn revoke_key(
    State(app): State<AppState>,
    _caller: Allowed<Administer>,
    PathId(id): PathId,
) -> Result<Json<ApiKey>, Problem> {
    let key = app
        .orchestrator
        .revoke_key(extract::parse_uuid("id", &id)?)
        .await?;
    tracing::info!(key_id = %key.id, name = %key.name, "API key revoked");
    Ok(Json(key))
}

/// The key a request was made with, as the console and the CLI show it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    pub key_id: uuid::Uuid,
    pub name: String,
    pub roles: Vec<Role>,
    /// The one tenant this key sees; absent for a key that sees them all.
    pub tenant: Option<String>,
}

#[utoipa::path(get, path = "/v1/me", tag = "keys",
    summary = "The key this request is made with: its name, roles and tenant (any valid key).",
    responses((status = 200, description = "The calling key", body = Me)))]
pub async fn me(caller: Allowed<AnyKey>) -> Json<Me> {
    let principal = caller.principal;
    Json(Me {
        key_id: principal.key_id,
        name: principal.name,
        roles: principal.roles,
        tenant: principal.tenant,
    })
}
