//! Part 1, sensor ingest: Alertmanager deliveries on an open-loop timetable counted in alerts,
//! then what the service wrote, checked in its database: one case per group, no group with
//! two cases, every alert state kept once as an `event_envelope`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opscase_bench::cpu::{self, CpuTimes};
use opscase_bench::service::{clock_ticks, Service};
use reqwest::header::CONTENT_TYPE;
use reqwest::Client;
use serde_json::Value;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use crate::db::{Db, Query};
use crate::workload::{Delivery, Kind, Workload};
use crate::Args;

/// A delivery that takes longer is an error ("timeout").
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One rate on one backend.
#[derive(Debug, Default)]
pub struct IngestRun {
    pub rate: u32,
    pub offered_alerts: u64,
    pub sent_deliveries: u64,
    /// Deliveries (and their alerts) not sent: every in-flight permit was taken at their due
    /// time.
    pub late_deliveries: u64,
    pub late_alerts: u64,
    /// Alerts sent, by kind (open, join, repeat).
    pub sent_by_kind: [u64; 3],
    /// Alerts of deliveries answered 200, by kind.
    pub answered_by_kind: [u64; 3],
    /// Alerts of deliveries that failed (non-200 or no answer), by kind.
    pub failed_by_kind: [u64; 3],
    /// Due time to the end of the answer, of every delivery that got one, ms.
    pub latency_ms: Vec<f64>,
    /// The same, by the number of alerts in the delivery.
    pub latency_by_size: BTreeMap<usize, Vec<f64>>,
    /// The same, by second of the load (by due time).
    pub latency_by_second: BTreeMap<u64, Vec<f64>>,
    pub statuses: BTreeMap<u16, u64>,
    /// Deliveries with no answer, by kind of failure.
    pub errors: BTreeMap<String, u64>,
    /// Alerts whose outcome in the answer was not the one their kind calls for,
    /// "expected → got".
    pub outcome_mismatches: BTreeMap<String, u64>,
    /// The answers' own `duplicates` counts, summed.
    pub answered_duplicates: u64,
    pub max_dispatch_delay_ms: f64,
    /// From the first due time to the last answer.
    pub elapsed_s: f64,
    /// Share of all cores used by the service process, and busy on the machine, in the load.
    pub service_cpu: Option<f64>,
    pub machine_busy: Option<f64>,
    /// CPU in the load by command name (share of all cores), largest first: who else ran.
    pub cpu_by_command: Vec<(String, f64)>,
    pub check: Check,
}

impl IngestRun {
    /// The offered rate was kept: at most 1% of the alerts were late (not sent).
    pub fn sustained(&self) -> bool {
        self.late_alerts * 100 <= self.offered_alerts
    }

    /// Alerts of answered deliveries per second of the load.
    pub fn achieved_per_s(&self) -> f64 {
        let answered: u64 = self.answered_by_kind.iter().sum();
        if self.elapsed_s > 0.0 {
            answered as f64 / self.elapsed_s
        } else {
            0.0
        }
    }
}

/// What the database holds after the load.
#[derive(Debug, Default)]
pub struct Check {
    /// Groups with at least one delivery answered 200: each must have exactly one case.
    pub groups_expected: u64,
    /// Groups whose every delivery failed: a timed-out one may have committed, so these may
    /// have a case or not.
    pub groups_unanswered: u64,
    /// Cases with source `alertmanager`.
    pub cases_opened: u64,
    /// Cases beyond the first of a group (alertname + service on the case's labels).
    pub duplicate_cases: u64,
    pub groups_with_duplicates: u64,
    /// Answered groups with no case, and cases of no group the bench sent.
    pub missing_groups: u64,
    pub unexpected_cases: u64,
    /// `event_envelope` rows of source alertmanager, by outcome.
    pub envelopes_by_outcome: BTreeMap<String, u64>,
    /// Envelopes expected: one per new alert state (open or join) answered 200.
    pub envelopes_expected: u64,
    /// Envelopes that may also be there: new alert states of failed deliveries.
    pub envelopes_maybe: u64,
    /// Envelopes whose case is not one of the alertmanager cases, or that have none.
    pub envelopes_without_case: u64,
    /// Groups (`group_key`) whose envelopes point at more than one case.
    pub split_groups: u64,
}

impl Check {
    pub fn envelopes(&self) -> u64 {
        self.envelopes_by_outcome.values().sum()
    }

    /// No group has two cases, by either count.
    pub fn no_duplicates(&self) -> bool {
        self.duplicate_cases == 0 && self.split_groups == 0
    }

    /// One case per answered group, none for a group never sent.
    pub fn cases_match(&self) -> bool {
        self.missing_groups == 0
            && self.unexpected_cases == 0
            && self.cases_opened >= self.groups_expected
            && self.cases_opened <= self.groups_expected + self.groups_unanswered
    }

    /// Every envelope accounted for: one per new alert state, each on its group's case, the
    /// opening ones as many as the cases.
    pub fn envelopes_accounted(&self) -> bool {
        let envelopes = self.envelopes();
        let opened = self
            .envelopes_by_outcome
            .get("opened")
            .copied()
            .unwrap_or(0);
        envelopes >= self.envelopes_expected
            && envelopes <= self.envelopes_expected + self.envelopes_maybe
            && self.envelopes_without_case == 0
            && opened == self.cases_opened
            && self
                .envelopes_by_outcome
                .keys()
                .all(|outcome| outcome == "opened" || outcome == "joined")
    }
}

/// What one delivery's task reports.
struct Answered {
    due_s: f64,
    size: usize,
    kinds: Vec<Kind>,
    latency_ms: f64,
    outcome: Result<(u16, Value), String>,
}

pub async fn run(
    args: &Args,
    service: &Service,
    sensor_key: &str,
    rate: u32,
) -> anyhow::Result<IngestRun> {
    let client = Client::builder()
        .pool_max_idle_per_host(args.in_flight)
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .build()?;
    let url = format!("{}/v1/signals/alertmanager", service.base);
    let authorization = format!("Bearer {sensor_key}");
    let offered = u64::from(rate) * u64::from(args.seconds);
    let workload = Arc::new(Mutex::new(Workload::new(
        args.new_group_share,
        args.max_alerts_per_delivery,
        u64::from(rate),
    )));
    let permits = Arc::new(Semaphore::new(args.in_flight));
    let (done, mut answers) = mpsc::unbounded_channel::<Answered>();
    let mut run = IngestRun {
        rate,
        offered_alerts: offered,
        ..IngestRun::default()
    };

    let cpu_before = CpuTimes::read();
    let processes_before = cpu::process_snapshot();
    let service_cpu_before = service.cpu_seconds();
    let started = Instant::now();
    let mut scheduled: u64 = 0;
    let mut max_delay = Duration::ZERO;
    // Open loop: the delivery that holds alert slot k is due at k / rate seconds, whatever
    // earlier deliveries are doing; latency counts from that due time, so a client that falls
    // behind does not hide the delay.
    while scheduled < offered {
        let due = started + Duration::from_secs_f64(scheduled as f64 / f64::from(rate));
        tokio::time::sleep_until(due).await;
        max_delay = max_delay.max(due.elapsed());
        let mut state = workload.lock().expect("workload lock");
        let delivery = state.plan();
        let size = delivery.alerts.len();
        scheduled += size as u64;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            run.late_deliveries += 1;
            run.late_alerts += size as u64;
            continue;
        };
        state.commit(&delivery);
        let body = serde_json::to_vec(&state.payload(&delivery))?;
        drop(state);
        run.sent_deliveries += 1;
        let request = client
            .post(&url)
            .header(CONTENT_TYPE, "application/json")
            .header("Authorization", &authorization)
            .body(body);
        let (workload, done) = (workload.clone(), done.clone());
        let due_s = (due - started).as_secs_f64();
        tokio::spawn(async move {
            let answer = deliver(request, due, due_s, &delivery).await;
            let ok = matches!(answer.outcome, Ok((200, _)));
            workload
                .lock()
                .expect("workload lock")
                .finish(&delivery, ok);
            let _ = done.send(answer);
            drop(permit);
        });
    }
    drop(done);
    run.max_dispatch_delay_ms = max_delay.as_secs_f64() * 1000.0;

    let mut last_answer = 0.0f64;
    while let Ok(Some(answer)) = tokio::time::timeout(REQUEST_TIMEOUT * 2, answers.recv()).await {
        last_answer = last_answer.max(started.elapsed().as_secs_f64());
        record(&mut run, answer);
    }
    run.elapsed_s = last_answer;
    run.machine_busy = CpuTimes::busy_between(cpu_before, CpuTimes::read());
    run.cpu_by_command = cpu::cpu_by_command(
        &processes_before,
        &cpu::process_snapshot(),
        started.elapsed().as_secs_f64(),
        clock_ticks(),
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    run.service_cpu = match (service_cpu_before, service.cpu_seconds()) {
        (Some(before), Some(after)) if run.elapsed_s > 0.0 => {
            Some((after - before) / run.elapsed_s / cores)
        }
        _ => None,
    };
    let groups: Vec<SentGroup> = {
        let workload = workload.lock().expect("workload lock");
        run.sent_by_kind = workload.sent;
        workload
            .groups
            .iter()
            .map(|group| SentGroup {
                alertname: group.alertname,
                service: group.service.clone(),
                answered: group.answered,
            })
            .collect()
    };
    run.check = check(service, &groups, &run).await?;
    Ok(run)
}

async fn deliver(
    request: reqwest::RequestBuilder,
    due: Instant,
    due_s: f64,
    delivery: &Delivery,
) -> Answered {
    let outcome = async {
        let response = request.send().await?;
        let status = response.status().as_u16();
        let body = response.bytes().await?;
        Ok::<_, reqwest::Error>((status, body))
    }
    .await;
    Answered {
        due_s,
        size: delivery.alerts.len(),
        kinds: delivery.alerts.iter().map(|(kind, _)| *kind).collect(),
        latency_ms: due.elapsed().as_secs_f64() * 1000.0,
        outcome: match outcome {
            Ok((status, body)) => {
                Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
            }
            Err(error) => Err(if error.is_timeout() {
                "timeout".to_string()
            } else if error.is_connect() {
                "connect".to_string()
            } else {
                "request".to_string()
            }),
        },
    }
}

fn record(run: &mut IngestRun, answer: Answered) {
    let by_kind = match &answer.outcome {
        Ok((200, _)) => &mut run.answered_by_kind,
        _ => &mut run.failed_by_kind,
    };
    for kind in &answer.kinds {
        by_kind[*kind as usize] += 1;
    }
    match answer.outcome {
        Ok((status, body)) => {
            *run.statuses.entry(status).or_default() += 1;
            run.latency_ms.push(answer.latency_ms);
            run.latency_by_size
                .entry(answer.size)
                .or_default()
                .push(answer.latency_ms);
            run.latency_by_second
                .entry(answer.due_s as u64)
                .or_default()
                .push(answer.latency_ms);
            if status == 200 {
                run.answered_duplicates += body["duplicates"].as_u64().unwrap_or(0);
                let items = body["items"].as_array().cloned().unwrap_or_default();
                for (index, kind) in answer.kinds.iter().enumerate() {
                    let got = items
                        .get(index)
                        .and_then(|item| item["outcome"].as_str())
                        .unwrap_or("missing");
                    if got != kind.expected_outcome() {
                        *run.outcome_mismatches
                            .entry(format!("{} → {got}", kind.expected_outcome()))
                            .or_default() += 1;
                    }
                }
            }
        }
        Err(kind) => *run.errors.entry(kind).or_default() += 1,
    }
}

const CASES: Query = Query {
    sqlite: "SELECT id, labels FROM ops_case WHERE source = 'alertmanager'",
    postgres: "SELECT id::text, labels::text FROM ops_case WHERE source = 'alertmanager'",
};
const ENVELOPES: Query = Query {
    sqlite: "SELECT group_key, outcome, case_id FROM event_envelope \
             WHERE source = 'alertmanager'",
    postgres: "SELECT group_key, outcome, case_id FROM event_envelope \
               WHERE source = 'alertmanager'",
};

/// A group the load sent to, and whether any of its deliveries was answered 200.
struct SentGroup {
    alertname: &'static str,
    service: String,
    answered: bool,
}

/// Compare what the database holds with what was sent and answered.
async fn check(service: &Service, groups: &[SentGroup], run: &IngestRun) -> anyhow::Result<Check> {
    let mut db = Db::open(&service.database).await?;
    let cases: Vec<(String, String)> = db.rows(&CASES).await?;
    let envelopes: Vec<(String, String, Option<String>)> = db.rows(&ENVELOPES).await?;
    db.close().await;

    let answered: BTreeSet<(&str, &str)> = groups
        .iter()
        .filter(|group| group.answered)
        .map(|group| (group.alertname, group.service.as_str()))
        .collect();
    let sent: BTreeSet<(&str, &str)> = groups
        .iter()
        .map(|group| (group.alertname, group.service.as_str()))
        .collect();
    let mut check = Check {
        groups_expected: answered.len() as u64,
        groups_unanswered: (sent.len() - answered.len()) as u64,
        cases_opened: cases.len() as u64,
        envelopes_expected: run.answered_by_kind[Kind::Open as usize]
            + run.answered_by_kind[Kind::Join as usize],
        envelopes_maybe: run.failed_by_kind[Kind::Open as usize]
            + run.failed_by_kind[Kind::Join as usize],
        ..Check::default()
    };

    // Cases by group, from the labels the default route copies (alertname, service).
    let mut cases_of: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut case_ids = BTreeSet::new();
    for (id, labels) in &cases {
        case_ids.insert(id.to_lowercase());
        let labels: Value = serde_json::from_str(labels).unwrap_or(Value::Null);
        let key = (
            labels["alertname"].as_str().unwrap_or("").to_string(),
            labels["service"].as_str().unwrap_or("").to_string(),
        );
        *cases_of.entry(key).or_default() += 1;
    }
    for (group, count) in &cases_of {
        if *count > 1 {
            check.groups_with_duplicates += 1;
            check.duplicate_cases += count - 1;
        }
        if !sent.contains(&(group.0.as_str(), group.1.as_str())) {
            check.unexpected_cases += count;
        }
    }
    check.missing_groups = answered
        .iter()
        .filter(|(alertname, service)| {
            !cases_of.contains_key(&(alertname.to_string(), service.to_string()))
        })
        .count() as u64;

    let mut cases_by_group_key: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (group_key, outcome, case_id) in &envelopes {
        *check
            .envelopes_by_outcome
            .entry(outcome.clone())
            .or_default() += 1;
        match case_id {
            Some(id) if case_ids.contains(&id.to_lowercase()) => {
                cases_by_group_key.entry(group_key).or_default().insert(id);
            }
            _ => check.envelopes_without_case += 1,
        }
    }
    check.split_groups = cases_by_group_key
        .values()
        .filter(|cases| cases.len() > 1)
        .count() as u64;
    Ok(check)
}
