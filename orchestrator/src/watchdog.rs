//! The watchdog: no case waits for ever on a worker that died. A case that has sat in
//! PLANNING, WAIT_GATE (with a gate command pending), EXECUTING or VERIFYING longer than its
//! bound without progress gets a `watchdog` timeline note and `case_stall_total{status}`, and
//! the command it waits for is delivered again (same message id, so the executor's claim still
//! decides what may run). A bound later, still without progress, the state's failure event parks
//! it with the reason. The rules are `workflow::watchdog`; this applies them, each case in a
//! transaction that locks it, so services sharing a database never act twice.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Map};
use tokio::sync::watch;
use uuid::Uuid;
use workflow::watchdog::{self, Observation, Verdict, WATCHED};
use workflow::{Event, Status};

use crate::model::{Case, NewTimelineEntry, Outcome};
use crate::service::{server_meta, Error, Orchestrator, RequestContext, TransitionRequest};
use crate::store::{Activity, LockedCase, Tx};

/// The timeline event (and actor) of the watchdog's notes.
pub const WATCHDOG: &str = "watchdog";

/// Timeline rows read to find the last progress: enough to see past the watchdog's own notes.
const RECENT_ROWS: u32 = 8;

/// Cases examined per sweep (the longest idle first); the next sweep takes the rest.
const SWEEP_LIMIT: u32 = 200;

#[derive(Debug, Clone)]
pub struct WatchdogSettings {
    /// How long a case may go without progress in a watched state, before what its plan may
    /// take there is added (`watchdog.stall_after_s`).
    pub stall_after: Duration,
    /// How often the watchdog looks (`watchdog.interval_s`).
    pub interval: Duration,
}

impl Default for WatchdogSettings {
    fn default() -> Self {
        Self {
            stall_after: Duration::from_secs(600),
            interval: Duration::from_secs(30),
        }
    }
}

/// What the watchdog did to one case.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub case_id: Uuid,
    pub status: Status,
    pub verdict: Verdict,
}

/// Sweep every `interval` until `shutdown` turns true.
pub async fn run(
    orchestrator: Arc<Orchestrator>,
    settings: WatchdogSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*shutdown.borrow() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
        if let Err(error) = orchestrator.watchdog_sweep(&settings, Utc::now()).await {
            tracing::warn!(%error, "watchdog sweep failed; trying again at the next one");
        }
    }
}

impl Orchestrator {
    /// Examine the cases idle in a watched state for at least the base bound, and act on each.
    pub async fn watchdog_sweep(
        &self,
        settings: &WatchdogSettings,
        now: DateTime<Utc>,
    ) -> Result<Vec<Action>, Error> {
        let idle_since = now - chrono_duration(settings.stall_after);
        let candidates = self
            .store()
            .idle_cases(&WATCHED, idle_since, SWEEP_LIMIT)
            .await?;
        let mut actions = Vec::new();
        for case_id in candidates {
            match self.watch_case(case_id, settings, now).await {
                Ok(Some(action)) => actions.push(action),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%case_id, %error, "watchdog: cannot examine the case");
                }
            }
        }
        Ok(actions)
    }

    async fn watch_case(
        &self,
        case_id: Uuid,
        settings: &WatchdogSettings,
        now: DateTime<Utc>,
    ) -> Result<Option<Action>, Error> {
        let mut tx = self.store().begin().await?;
        let Some(locked) = tx.lock_case(case_id).await? else {
            return Ok(None);
        };
        let status = locked.case.status;
        let activity = tx.activity(case_id, RECENT_ROWS).await?;
        let plan = match locked.case.current_plan_id {
            Some(id) => tx.plan(id).await?.map(|record| record.plan),
            None => None,
        };
        let observation = observe(
            &locked.case,
            &activity,
            watchdog::bound(status, plan.as_ref(), settings.stall_after),
            now,
        );
        let verdict = watchdog::watch(&observation);
        match verdict {
            Verdict::Fine => return Ok(None),
            Verdict::Note { redeliver } => {
                self.note_stall(
                    tx.as_mut(),
                    &locked,
                    &observation,
                    &activity,
                    redeliver,
                    now,
                )
                .await?;
                tx.commit().await?;
                self.metrics().stall(status);
                if redeliver {
                    self.outbox_written().notify_one();
                }
            }
            Verdict::Fail(event) => {
                let request = failure(case_id, event, status, &observation, &activity);
                let (_, accepted) = self
                    .step(tx.as_mut(), &request, &RequestContext::default(), now)
                    .await?;
                tx.commit().await?;
                self.metrics()
                    .transition(accepted.from, accepted.to, event.as_str());
                self.outbox_written().notify_one();
            }
        }
        tracing::warn!(%case_id, %status, ?verdict, idle_s = observation.idle.as_secs(),
            bound_s = observation.bound.as_secs(), "watchdog: a case is stalled");
        Ok(Some(Action {
            case_id,
            status,
            verdict,
        }))
    }

    async fn note_stall(
        &self,
        tx: &mut dyn Tx,
        locked: &LockedCase,
        observation: &Observation,
        activity: &Activity,
        redeliver: bool,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let case = &locked.case;
        let command = activity.last_command.as_ref().filter(|_| redeliver);
        if let Some(command) = command {
            tx.requeue_message(command.message_id).await?;
        }
        let reason = match command {
            Some(command) => format!(
                "no progress in {} for {} s (bound {} s); {} delivered again",
                case.status,
                observation.idle.as_secs(),
                observation.bound.as_secs(),
                command.topic
            ),
            None => format!(
                "no progress in {} for {} s (bound {} s); no worker was asked, the case waits \
                 for someone to act",
                case.status,
                observation.idle.as_secs(),
                observation.bound.as_secs()
            ),
        };
        let mut meta = Map::new();
        meta.insert("idle_s".into(), json!(observation.idle.as_secs()));
        meta.insert("bound_s".into(), json!(observation.bound.as_secs()));
        if let Some(command) = command {
            meta.insert(
                "redelivered".into(),
                json!({"message_id": command.message_id, "topic": command.topic}),
            );
        }
        tx.record_timeline(&NewTimelineEntry {
            case_id: case.id,
            version: case.version,
            event: WATCHDOG.into(),
            outcome: Outcome::Noted,
            from_status: Some(case.status),
            to_status: Some(case.status),
            actor: WATCHDOG.into(),
            principal_id: None,
            principal_name: None,
            reason: Some(reason),
            correlation_id: None,
            request_id: None,
            meta: server_meta(meta, &RequestContext::default()),
            created_at: now,
        })
        .await?;
        Ok(())
    }
}

/// What the watchdog sees of a case from its recent rows and last command.
fn observe(case: &Case, activity: &Activity, bound: Duration, now: DateTime<Utc>) -> Observation {
    let progress = activity.recent.iter().find(|row| row.event != WATCHDOG);
    let last_progress = progress.map(|row| row.created_at);
    let noted = activity
        .recent
        .iter()
        .take_while(|row| row.event == WATCHDOG)
        .map(|row| row.created_at)
        .max();
    Observation {
        status: case.status,
        idle: elapsed(last_progress, now),
        noted: noted.map(|at| elapsed(Some(at), now)),
        command_pending: command_pending(case.status, activity, case.updated_at),
        bound,
    }
}

/// Whether the case waits on a worker: the last command for it is this state's and was sent
/// since the case entered the state (a transition's own command has its timestamp), and its
/// worker has not answered without moving the case (a gate hold, a refused plan). A case with
/// no such command waits for a person.
fn command_pending(status: Status, activity: &Activity, entered: DateTime<Utc>) -> bool {
    let Some(command) = &activity.last_command else {
        return false;
    };
    let wanted = match status {
        Status::Analyzing => "cmd.analysis.run",
        Status::Planning => "cmd.plan.generate",
        Status::WaitGate => "cmd.gate.eval",
        Status::Executing => "cmd.exec.run",
        Status::Verifying => "cmd.verify.run",
        _ => return false,
    };
    let answered_in_place = activity
        .recent
        .iter()
        .take_while(|row| row.created_at >= command.created_at)
        .any(|row| row.event == "gate_held" || row.outcome == Outcome::Rejected);
    command.topic == wanted && command.created_at >= entered && !answered_in_place
}

/// The failure event's request: the watchdog as actor, the stall as the reason.
fn failure(
    case_id: Uuid,
    event: Event,
    status: Status,
    observation: &Observation,
    activity: &Activity,
) -> TransitionRequest {
    let topic = activity
        .last_command
        .as_ref()
        .map_or("the command", |command| command.topic.as_str());
    let mut meta = Map::new();
    meta.insert("idle_s".into(), json!(observation.idle.as_secs()));
    meta.insert("bound_s".into(), json!(observation.bound.as_secs()));
    if let Some(command) = &activity.last_command {
        meta.insert("message_id".into(), json!(command.message_id));
    }
    TransitionRequest {
        case_id,
        event,
        actor: WATCHDOG.into(),
        reason: Some(if event == Event::AnalysisDone {
            format!(
                "no answer to {topic} in {status} for {} s, also after it was delivered again \
                 (bound {} s): planning goes on without findings",
                observation.idle.as_secs(),
                observation.bound.as_secs()
            )
        } else {
            format!(
                "no answer to {topic} in {status} for {} s, also after it was delivered again \
                 (bound {} s): the worker may have died; check what it did before resuming the \
                 case",
                observation.idle.as_secs(),
                observation.bound.as_secs()
            )
        }),
        meta,
        plan: None,
        approval: None,
        results: Vec::new(),
        if_match: None,
        expected_version: None,
        policy_rev: None,
        decision_inputs: None,
        plan_requester: None,
        plan_references: None,
    }
}

fn elapsed(since: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Duration {
    since
        .and_then(|at| (now - at).to_std().ok())
        .unwrap_or_default()
}

fn chrono_duration(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}
