//! The operator console at `/ui`: one page, its script and its style, embedded in the binary
//! (in a debug build read from `api/ui/` as they are, so the page can be edited live). The page
//! has no powers of its own: it signs in with an API key and calls the same API as everyone.
//! Everything it serves carries a strict Content-Security-Policy (no inline script, nothing
//! from elsewhere) and may not be framed.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::problem::Problem;
use crate::AppState;

#[derive(rust_embed::Embed)]
#[folder = "ui/"]
struct Assets;

const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(page))
        .route("/ui/", get(page))
        .route("/ui/settings.json", get(settings))
        .route("/ui/{file}", get(asset))
}

/// What the page needs to know of the server's configuration (nothing secret: it is served
/// without a key).
async fn settings(State(app): State<AppState>) -> Response {
    let body = serde_json::json!({ "trace_url": app.settings.trace_url });
    with_headers(
        (StatusCode::OK, body.to_string()).into_response(),
        "application/json",
    )
}

async fn page() -> Response {
    serve("index.html")
}

async fn asset(Path(file): Path<String>) -> Response {
    serve(&file)
}

fn serve(name: &str) -> Response {
    let Some(file) = Assets::get(name) else {
        return Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not Found",
            format!("the console has no file {name:?}"),
        )
        .into_response();
    };
    let mime = match name.rsplit_once('.').map(|(_, extension)| extension) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    };
    with_headers(
        (StatusCode::OK, file.data.into_owned()).into_response(),
        mime,
    )
}

fn with_headers(mut response: Response, mime: &str) -> Response {
    let headers = response.headers_mut();
    let mut set = |name, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    set(header::CONTENT_TYPE, mime);
    // Revalidated on every load, so a new binary's console is never mixed with an old one.
    set(header::CACHE_CONTROL, "no-cache");
    set(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
    set(header::X_FRAME_OPTIONS, "DENY");
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::REFERRER_POLICY, "no-referrer");
    response
}
