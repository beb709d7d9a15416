//! Server-Sent Events: a case's timeline, live. `GET /v1/cases/{id}/events` sends the rows after
//! `Last-Event-ID` (all of them without it), then each new one as it is committed; the event's
//! `id` is the row's, so a client that reconnects with it resumes without losing a row. Rows of
//! one case are written under its lock, in id order, so the id is a safe cursor.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use orchestrator::model::TimelineEntry;
use orchestrator::{Orchestrator, RequestContext};
use uuid::Uuid;

use crate::auth::{Allowed, Read};
use crate::cases::read_context;
use crate::contract::{CaseNotFound, LastEventId, Malformed};
use crate::extract::{self, PathId};
use crate::problem::Problem;
use crate::AppState;

/// Rows read per query; what a stream holds at most while its client is slow to read (the
/// body is only polled as the connection drains, so nothing more piles up).
const PAGE: u32 = 100;

/// How often a quiet stream looks for rows written by other processes (workers, replicas).
const POLL: Duration = Duration::from_secs(1);

#[utoipa::path(get, path = "/v1/cases/{id}/events", tag = "cases",
    summary = "A case's timeline as Server-Sent Events: the rows after `Last-Event-ID` (all without it), then each new row as it is committed.",
    description = "Each event is `event: timeline`, `id: <row id>`, `data: <the row as the timeline route returns it, JSON>`. Reconnect with `Last-Event-ID` to resume without losing a row. A comment is sent every 15 s to keep proxies from closing a quiet stream.",
    params(("id" = Uuid, Path, description = "Case id"), LastEventId),
    responses(
        (status = 200, description = "The stream", content_type = "text/event-stream", body = TimelineEvent),
        Malformed, CaseNotFound,
    ))]
pub async fn case_events(
    State(app): State<AppState>,
    caller: Allowed<Read>,
    PathId(id): PathId,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    let id = extract::parse_uuid("id", &id)?;
    let after = last_event_id(&headers)?;
    let context = read_context(caller);
    // 404 for a case this key may not see, before the stream starts.
    app.orchestrator.get_case(id, &context).await?;
    let follower = Follower {
        orchestrator: app.orchestrator.clone(),
        case: id,
        context,
        after,
        ready: VecDeque::new(),
        written: app.orchestrator.timeline_written(),
    };
    let stream = futures::stream::unfold(follower, |mut follower| async move {
        let row = follower.next().await?;
        Some((Ok(event(&row)), follower))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// One event of the stream, as an SSE parser hands it over.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct TimelineEvent {
    /// Always `timeline`.
    pub event: String,
    /// The row's id: send it back as `Last-Event-ID` to resume after it.
    pub id: String,
    /// The row as `GET /v1/cases/{id}/timeline` returns it (a `TimelineEntry`), as JSON text.
    pub data: String,
}

/// `Last-Event-ID`: a timeline row id; absent (or below every id) means from the start.
fn last_event_id(headers: &HeaderMap) -> Result<i64, Problem> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(0);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<i64>().ok())
        .map(|id| id.max(0))
        .ok_or_else(|| {
            Problem::invalid(
                "Last-Event-ID",
                "Last-Event-ID must be the id of an event this stream sent (a timeline row id)",
            )
        })
}

fn event(row: &TimelineEntry) -> Event {
    let data = serde_json::to_string(row).unwrap_or_else(|_| "{}".into());
    Event::default()
        .event("timeline")
        .id(row.id.to_string())
        .data(data)
}

/// One client's place in one case's timeline.
struct Follower {
    orchestrator: Arc<Orchestrator>,
    case: Uuid,
    context: RequestContext,
    after: i64,
    ready: VecDeque<TimelineEntry>,
    written: tokio::sync::watch::Receiver<u64>,
}

impl Follower {
    /// The next row, waiting for it as long as it takes; `None` once the case is gone.
    async fn next(&mut self) -> Option<TimelineEntry> {
        loop {
            if let Some(row) = self.ready.pop_front() {
                self.after = row.id;
                return Some(row);
            }
            // Marked seen before the read, so a commit during the read wakes the next wait.
            self.written.borrow_and_update();
            match self
                .orchestrator
                .timeline(self.case, Some(self.after), PAGE, &self.context)
                .await
            {
                Ok(rows) if !rows.is_empty() => {
                    self.ready.extend(rows);
                    continue;
                }
                Ok(_) => {}
                Err(orchestrator::Error::NotFound(_)) => return None,
                Err(error) => {
                    tracing::warn!(%error, case_id = %self.case, "timeline stream: read failed, retrying");
                }
            }
            let _ = tokio::time::timeout(POLL, self.written.changed()).await;
        }
    }
}
