//! The knowledge base (the Librarian): `POST`, `GET`, `DELETE /v1/kb/docs` and
//! `GET /v1/kb/search`.
//!
//! A tenant-scoped key sees its tenant's documents and the global ones, and writes only its
//! tenant's; a key without a tenant sees everything and writes global documents unless the
//! body names a tenant.

use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use librarian::metrics::MODE_RELATED;
use librarian::store::doc_id;
use librarian::{DocInput, DocSummary, Hit, KbStore, Librarian, SearchFilter, StoredDoc, Upserted};
use orchestrator::Principal;
use workflow::references::References;

use crate::auth::{Allowed, Curate, Read, ReadKnowledge};
use crate::contract::CaseNotFound;
use crate::contract::{self, BodyLimit, Malformed};
use crate::extract::{self, JsonBody, PathId, QueryParams};
use crate::problem::Problem;
use crate::AppState;

/// The source of documents posted through the API.
pub const API_SOURCE: &str = "api";

/// Longest `content` accepted, in characters (the body limit applies too).
pub const CONTENT_MAX_CHARS: usize = 512 * 1024;

/// Longest `url`, in characters.
pub const URL_MAX_CHARS: usize = 2048;

/// One document, in Markdown: front matter is read and chunks follow its headings.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKbDoc {
    /// 1 to 200 characters; a runbook's alert name is a good title.
    #[schema(schema_with = contract::kb_title_schema)]
    pub title: String,
    /// The Markdown text.
    #[schema(schema_with = contract::kb_content_schema)]
    pub content: String,
    /// Where the document lives; posting the same `url` again replaces that document.
    #[serde(default)]
    #[schema(schema_with = contract::kb_url_schema)]
    pub url: Option<String>,
    /// Kept with the document and returned with it.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// The tenant it belongs to; absent: global (or the key's tenant for a scoped key).
    #[serde(default)]
    #[schema(schema_with = contract::kb_tenant_schema)]
    pub tenant: Option<String>,
}

/// What `POST /v1/kb/docs` did.
#[derive(Debug, Serialize, ToSchema)]
pub struct KbDocWritten {
    pub id: String,
    /// `created`, `updated` (its chunks replaced) or `unchanged`.
    pub result: Upserted,
    pub chunk_count: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KbDocPage {
    pub items: Vec<DocSummary>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct KbListQuery {
    /// Only documents of this source (`runbooks`, `api`, ...).
    pub source: Option<String>,
    /// Documents to list, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct KbSearchQuery {
    /// Plain text, as a person or an alert writes it: quotes, colons, parentheses and the like
    /// are punctuation, never query syntax. No words: no hits.
    pub q: Option<String>,
    /// Hits to return, 1 to 50 (default 5).
    #[param(minimum = 1, maximum = 50)]
    pub k: Option<u32>,
    /// Only documents of this source.
    pub source: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KbSearchResult {
    /// Best first; each a chunk with its document.
    pub hits: Vec<Hit>,
}

/// Add or replace one document: searchable lexically as soon as this answers (with embeddings
/// configured, its vectors follow in the background). The same `url` (for the same tenant) is
/// the same document: unchanged content writes nothing, changed content replaces its chunks.
#[utoipa::path(post, path = "/v1/kb/docs", tag = "knowledge",
    request_body(content = NewKbDoc, content_type = "application/json",
        example = json!({"title": "CheckoutLatencyHigh",
            "content": "# CheckoutLatencyHigh\n\n## Mitigation\n\nRoll back the last deploy.",
            "url": "https://wiki.example.com/runbooks/checkout-latency",
            "metadata": {"team": "payments"}})),
    responses(
        (status = 201, description = "Created", body = KbDocWritten),
        (status = 200, description = "Replaced or unchanged", body = KbDocWritten),
        Malformed, BodyLimit,
        (status = 403, description = "A scoped key writing another tenant's or a global document", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn add_doc(
    State(app): State<AppState>,
    caller: Allowed<Curate>,
    body: JsonBody<NewKbDoc>,
) -> Result<Response, Problem> {
    let new = body.value;
    let title = contract::text("title", &new.title, contract::TITLE_MAX_CHARS)?;
    if new.content.trim().is_empty() || new.content.chars().count() > CONTENT_MAX_CHARS {
        return Err(Problem::invalid(
            "content",
            format!("content must be 1 to {CONTENT_MAX_CHARS} characters, not all whitespace"),
        ));
    }
    let url = match &new.url {
        Some(url) => Some(contract::text("url", url, URL_MAX_CHARS)?),
        None => None,
    };
    if new.metadata.as_ref().is_some_and(|m| !m.is_object()) {
        return Err(Problem::invalid("metadata", "metadata must be an object"));
    }
    let tenant = write_tenant(new.tenant, &caller.principal)?;
    // Without a url the document has no address to be found again by: a new one each time.
    let (path, id) = match url {
        Some(url) => {
            let id = doc_id(tenant.as_deref(), API_SOURCE, &url);
            (url, id)
        }
        None => (String::new(), uuid::Uuid::now_v7().to_string()),
    };
    let mut doc = DocInput::markdown(
        tenant,
        API_SOURCE,
        &path,
        &new.content,
        &title,
        new.metadata.as_ref(),
    );
    doc.id = id;
    // The title given is the title, whatever the first heading says.
    doc.search_title = librarian::chunk::search_title(&title, Some(&doc.title));
    doc.title = title;
    doc.content_hash = librarian::chunk::content_hash(&[&doc.content_hash, &doc.title]);
    let result = app
        .kb
        .upsert(&doc, Utc::now())
        .await
        .map_err(Problem::from)?;
    let status = match result {
        Upserted::Created => StatusCode::CREATED,
        Upserted::Updated | Upserted::Unchanged => StatusCode::OK,
    };
    let written = KbDocWritten {
        id: doc.id,
        result,
        chunk_count: doc.chunks.len(),
    };
    Ok((status, Json(written)).into_response())
}

/// The documents this key may see, most recently changed first.
#[utoipa::path(get, path = "/v1/kb/docs", tag = "knowledge",
    params(KbListQuery),
    responses(
        (status = 200, description = "The documents", body = KbDocPage),
        Malformed,
    ))]
pub async fn list_docs(
    State(app): State<AppState>,
    caller: Allowed<ReadKnowledge>,
    QueryParams(query): QueryParams<KbListQuery>,
) -> Result<Json<KbDocPage>, Problem> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(Problem::invalid("limit", "limit must be 1 to 500"));
    }
    let filter = SearchFilter {
        tenant: caller.principal.tenant.clone(),
        source: query.source,
        ..SearchFilter::default()
    };
    let items = store_of(&app)
        .list(&filter, i64::from(limit))
        .await
        .map_err(Problem::from)?;
    Ok(Json(KbDocPage { items }))
}

/// A document with its chunks.
#[utoipa::path(get, path = "/v1/kb/docs/{id}", tag = "knowledge",
    params(("id" = Uuid, Path, description = "Document id")),
    responses(
        (status = 200, description = "The document", body = StoredDoc),
        Malformed,
        (status = 404, description = "No such document (or not one this key's tenant may see)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_doc(
    State(app): State<AppState>,
    caller: Allowed<ReadKnowledge>,
    id: PathId,
) -> Result<Json<StoredDoc>, Problem> {
    let id = extract::parse_uuid("id", &id.0)?.to_string();
    visible_doc(&app, &id, &caller.principal).await.map(Json)
}

/// Remove a document and its chunks.
#[utoipa::path(delete, path = "/v1/kb/docs/{id}", tag = "knowledge",
    params(("id" = Uuid, Path, description = "Document id")),
    responses(
        (status = 204, description = "Removed"),
        Malformed,
        (status = 404, description = "No such document (or not one this key's tenant may see)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_doc(
    State(app): State<AppState>,
    caller: Allowed<Curate>,
    id: PathId,
) -> Result<StatusCode, Problem> {
    let id = extract::parse_uuid("id", &id.0)?.to_string();
    let doc = visible_doc(&app, &id, &caller.principal).await?;
    // A scoped key may see global documents but not remove them.
    if caller.principal.tenant.is_some() && doc.doc.tenant.is_none() {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden",
            "a tenant-scoped key cannot remove a global document",
        ));
    }
    store_of(&app).delete(&id).await.map_err(Problem::from)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The `k` chunks that best match `q`: lexical search over titles (alert names), heading
/// paths and bodies, weighted in that order, a document whose title is a word of `q` first.
/// With embeddings configured, also the chunks nearest to `q`'s embedding, the two lists fused
/// by reciprocal rank (k = 60); if `q` cannot be embedded in time, the lexical hits alone.
#[utoipa::path(get, path = "/v1/kb/search", tag = "knowledge",
    params(KbSearchQuery),
    responses(
        (status = 200, description = "The hits", body = KbSearchResult),
        Malformed,
    ))]
pub async fn search(
    State(app): State<AppState>,
    caller: Allowed<ReadKnowledge>,
    QueryParams(query): QueryParams<KbSearchQuery>,
) -> Result<Json<KbSearchResult>, Problem> {
    let k = query.k.unwrap_or(5);
    if !(1..=50).contains(&k) {
        return Err(Problem::invalid("k", "k must be 1 to 50"));
    }
    let filter = SearchFilter {
        tenant: caller.principal.tenant.clone(),
        source: query.source,
        ..SearchFilter::default()
    };
    let hits = app
        .kb
        .search(query.q.as_deref().unwrap_or(""), k as usize, &filter)
        .await
        .map_err(Problem::from)?;
    Ok(Json(KbSearchResult { hits }))
}

/// What the Librarian finds for a case now: the runbook chunks that fit it (the runbook its
/// alert's `runbook_url` names first) and the most similar past cases of its tenant, each with
/// what its plan did, its rollback steps and how it ended. A proposed plan carries the same,
/// as they were when it was proposed.
#[utoipa::path(get, path = "/v1/cases/{id}/related", tag = "cases",
    params(("id" = Uuid, Path, description = "Case id")),
    responses(
        (status = 200, description = "The case's references", body = References),
        Malformed, CaseNotFound,
    ))]
pub async fn related(
    State(app): State<AppState>,
    caller: Allowed<Read>,
    PathId(id): PathId,
) -> Result<Json<References>, Problem> {
    let case_id = extract::parse_uuid("id", &id)?;
    let context = crate::cases::request_context(caller.principal, None);
    // 404 for a case the key may not see, as every case route.
    app.orchestrator.get_case(case_id, &context).await?;
    let started = Instant::now();
    let references = Librarian::new(app.orchestrator.store().clone())
        .references_of(case_id)
        .await
        .map_err(Problem::from)?
        .unwrap_or_default();
    app.kb_metrics
        .observe_search(MODE_RELATED, started.elapsed().as_secs_f64());
    Ok(Json(references))
}

fn store_of(app: &AppState) -> &KbStore {
    app.kb.store()
}

/// The document, if there is one this caller may see (404 otherwise: another tenant's
/// documents are not there for it).
async fn visible_doc(app: &AppState, id: &str, caller: &Principal) -> Result<StoredDoc, Problem> {
    let doc = store_of(app).get(id).await.map_err(Problem::from)?;
    match doc {
        Some(doc)
            if caller.tenant.is_none()
                || doc.doc.tenant.is_none()
                || doc.doc.tenant == caller.tenant =>
        {
            Ok(doc)
        }
        _ => Err(Problem::not_found(format!("document {id} does not exist"))),
    }
}

/// The tenant a new document belongs to: a scoped key writes its own tenant only.
fn write_tenant(asked: Option<String>, caller: &Principal) -> Result<Option<String>, Problem> {
    let tenant = match (asked, &caller.tenant) {
        (Some(asked), Some(own)) if asked != *own => {
            let mut problem = Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "Forbidden",
                format!(
                    "this key is scoped to tenant {own:?} and cannot write documents of {asked:?}"
                ),
            );
            problem.field = Some("tenant".into());
            return Err(problem);
        }
        (Some(asked), _) => Some(asked),
        (None, own) => own.clone(),
    };
    if let Some(tenant) = &tenant {
        extract::validate_tenant("tenant", tenant)?;
    }
    Ok(tenant)
}
