//! Server-Sent Events: timelines, live. `GET /v1/cases/{id}/events` sends a case's rows after
//! `Last-Event-ID` (all of them without it), then each new one as it is committed;
//! `GET /v1/events` does the same for every case the key may see, from now on without
//! `Last-Event-ID`. The event's `id` is the row's, so a client that reconnects with it resumes
//! without losing a row. Rows of one case are written under its lock, in id order, so the id
//! is a safe cursor within a case; across cases it is one only once no lower id is still in
//! flight (see [`passable`]).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::{DateTime, Utc};
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
/// body is only polled as the connection drains, so nothing more piles up). Small, since a row
/// can be as large as a request body (meta, reason): a few KB usually, 1 MiB at the limit.
const PAGE: u32 = 32;

/// How often a quiet stream looks for rows written by other processes (workers, replicas).
const POLL: Duration = Duration::from_secs(1);

/// How long a gap in the ids may stay open before the all-cases stream passes it. On PostgreSQL
/// a row takes its id when it is written but is seen when its transaction commits, so a lower
/// id can appear after a higher one; a gap older than this is a write that rolled back, not one
/// in flight (the case core's transactions last milliseconds).
const SETTLE: Duration = Duration::from_secs(5);

/// How often a stream waiting on a gap looks again.
const GAP_POLL: Duration = Duration::from_millis(200);

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
    let after = last_event_id(&headers)?.unwrap_or(0);
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

#[utoipa::path(get, path = "/v1/events", tag = "cases",
    summary = "Every case's timeline rows as Server-Sent Events (the cases this key may see): the rows written from now on, or after `Last-Event-ID`.",
    description = "Each event is `event: timeline`, `id: <row id>`, `data: <the row as the timeline route returns it, JSON>`; the row's `case_id`, `version` and `to_status` say what changed. A tenant-scoped key sees its tenant's cases only. Reconnect with `Last-Event-ID` to resume without losing a row; a row may arrive up to a few seconds late while a lower one is still being written. A comment is sent every 15 s to keep proxies from closing a quiet stream.",
    params(LastEventId),
    responses(
        (status = 200, description = "The stream", content_type = "text/event-stream", body = TimelineEvent),
        Malformed,
    ))]
pub async fn all_events(
    State(app): State<AppState>,
    caller: Allowed<Read>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    let after = match last_event_id(&headers)? {
        Some(after) => after,
        None => app.orchestrator.last_timeline_id().await?,
    };
    let follower = AllCases {
        orchestrator: app.orchestrator.clone(),
        tenant: caller.principal.tenant,
        after,
        ready: VecDeque::new(),
        written: app.orchestrator.timeline_written(),
    };
    let stream = futures::stream::unfold(follower, |mut follower| async move {
        let row = follower.next().await;
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

/// `Last-Event-ID`: a timeline row id (below every id means from the start).
fn last_event_id(headers: &HeaderMap) -> Result<Option<i64>, Problem> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<i64>().ok())
        .map(|id| Some(id.max(0)))
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

/// One client's place in every case's timeline.
struct AllCases {
    orchestrator: Arc<Orchestrator>,
    /// The key's tenant: rows of other tenants' cases are passed over, never sent.
    tenant: Option<String>,
    after: i64,
    ready: VecDeque<TimelineEntry>,
    written: tokio::sync::watch::Receiver<u64>,
}

impl AllCases {
    /// The next row this key may see, waiting for it as long as it takes.
    async fn next(&mut self) -> TimelineEntry {
        loop {
            if let Some(row) = self.ready.pop_front() {
                return row;
            }
            self.written.borrow_and_update();
            let mut waiting_on_gap = false;
            match self.orchestrator.timeline_since(self.after, PAGE).await {
                Ok(rows) => {
                    let marks: Vec<_> = rows
                        .iter()
                        .map(|(row, _)| (row.id, row.created_at))
                        .collect();
                    let passed = passable(self.after, &marks, Utc::now(), SETTLE);
                    waiting_on_gap = passed < rows.len();
                    for (row, tenant) in rows.into_iter().take(passed) {
                        self.after = row.id;
                        if self.tenant.as_ref().is_none_or(|own| *own == tenant) {
                            self.ready.push_back(row);
                        }
                    }
                    if passed > 0 {
                        continue;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "event stream: read failed, retrying");
                }
            }
            let wait = if waiting_on_gap { GAP_POLL } else { POLL };
            let _ = tokio::time::timeout(wait, self.written.changed()).await;
        }
    }
}

/// How many of `rows` (id and write time, in id order, all after `after`) the stream may pass:
/// those up to the first gap in the ids whose next row is younger than `settle` (the missing
/// row may still be committing, and sent after its successors it would be lost to a client
/// that resumes from a later id).
fn passable(
    after: i64,
    rows: &[(i64, DateTime<Utc>)],
    now: DateTime<Utc>,
    settle: Duration,
) -> usize {
    let settle = chrono::Duration::from_std(settle).unwrap_or(chrono::Duration::MAX);
    let mut previous = after;
    for (index, &(id, written_at)) in rows.iter().enumerate() {
        if id != previous + 1 && now - written_at < settle {
            return index;
        }
        previous = id;
    }
    rows.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds_ago: i64, now: DateTime<Utc>) -> DateTime<Utc> {
        now - chrono::Duration::seconds(seconds_ago)
    }

    #[test]
    fn contiguous_rows_pass() {
        let now = Utc::now();
        let rows = [(11, at(0, now)), (12, at(0, now)), (13, at(0, now))];
        assert_eq!(passable(10, &rows, now, SETTLE), 3);
    }

    #[test]
    fn a_young_gap_holds_the_rows_after_it() {
        let now = Utc::now();
        // 12 is missing: its transaction may commit yet.
        let rows = [(11, at(0, now)), (13, at(1, now)), (14, at(0, now))];
        assert_eq!(passable(10, &rows, now, SETTLE), 1);
        // The first row itself may be behind a gap.
        assert_eq!(passable(9, &rows, now, SETTLE), 0);
    }

    #[test]
    fn an_old_gap_is_a_rollback_and_passes() {
        let now = Utc::now();
        let rows = [(11, at(60, now)), (13, at(60, now)), (15, at(0, now))];
        // 12 never came (rolled back a minute ago); 14 is missing only just now.
        assert_eq!(passable(10, &rows, now, SETTLE), 2);
    }
}
