//! The live path: the rules' detectors run over `metric_1m` as buckets arrive, and an alarm
//! becomes a signal that takes the sensor's path (route, group, join or open, dedup).
//!
//! Evaluation is driven by ingestion (the API pokes the series it wrote) and by a sweep every
//! `sweep_interval` for late or missing data. Each (rule, series) keeps its detector state in
//! `analyst_series` with the last bucket it judged, so a restart goes on where it was and never
//! judges a bucket twice; a bucket older than the last judged is skipped. Signals go to the
//! sensor before the state is saved: a crash in between judges the same buckets again after the
//! restart, and the sensor keeps a repeated alert state once. Only a bucket of the last
//! `max_age` can open or join a case, so back-filled history only warms the detectors up.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Notify};

use orchestrator::store::numbered;
use orchestrator::{RequestContext, SqlPool, StoreError};
use sensor::{Caller, Reference, Route, Sensor, Signal, Source, Status};
use verifier::{Metric1mStore, SeriesRow};

use crate::alarm::Transition;
use crate::finding::{Finding, SeriesKey};
use crate::rule::{Automation, Rule, Severity, Stat};
use crate::series::{Detector, Evaluation, SeriesState};

/// `[analyst]` settings besides the rules.
#[derive(Debug, Clone)]
pub struct LiveSettings {
    /// Only a bucket this recent can open or join a case (default 10 minutes).
    pub max_age: Duration,
    /// The sweep for late or missing data (default 60 s).
    pub sweep_interval: Duration,
    /// History read for a series the first time a rule sees it (default 14 days: two weeks
    /// make a weekly baseline).
    pub warmup: Duration,
}

impl Default for LiveSettings {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(600),
            sweep_interval: Duration::from_secs(60),
            warmup: Duration::from_secs(14 * 24 * 3600),
        }
    }
}

/// The live Analyst of one service.
pub struct Watcher {
    rules: Vec<(Rule, Detector)>,
    settings: LiveSettings,
    metrics: Metric1mStore,
    states: StateStore,
    sensor: Arc<Sensor>,
    meters: crate::meters::AnalystMeters,
    /// Series the API wrote since the last evaluation.
    poked: Mutex<BTreeSet<(String, String, String)>>,
    wake: Notify,
}

/// Where a series stands under a rule: its detector state, the last bucket judged, and when
/// the alarm that went to a case fired (`None`: not firing, or firing on old data only).
#[derive(Debug, Clone)]
struct Tracked {
    state: SeriesState,
    last_bucket: Option<DateTime<Utc>>,
    reported: Option<DateTime<Utc>>,
}

impl Watcher {
    /// `rules` were validated with the configuration.
    pub fn new(
        rules: &[Rule],
        settings: LiveSettings,
        pool: SqlPool,
        sensor: Arc<Sensor>,
        registry: &prometheus::Registry,
    ) -> Result<Self, crate::RuleError> {
        let rules = rules
            .iter()
            .map(|rule| Ok((rule.clone(), rule.detector()?)))
            .collect::<Result<Vec<_>, crate::RuleError>>()?;
        let metrics = match &pool {
            SqlPool::Sqlite(pool) => Metric1mStore::sqlite(pool.clone()),
            SqlPool::Postgres(pool) => Metric1mStore::postgres(pool.clone()),
        };
        let meters = crate::meters::AnalystMeters::register(registry, &rules);
        Ok(Self {
            rules,
            settings,
            metrics,
            states: StateStore { pool },
            sensor,
            meters,
            poked: Mutex::new(BTreeSet::new()),
            wake: Notify::new(),
        })
    }

    /// The API wrote buckets of these series: evaluate them now.
    pub fn poke(&self, series: impl IntoIterator<Item = (String, String, String)>) {
        if self.rules.is_empty() {
            return;
        }
        self.poked.lock().expect("not poisoned").extend(series);
        self.wake.notify_one();
    }

    /// Evaluate poked series at once, and every series on the sweep, until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if self.rules.is_empty() {
            return;
        }
        let mut sweep = tokio::time::interval(self.settings.sweep_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !*shutdown.borrow() {
            let everything = tokio::select! {
                _ = sweep.tick() => true,
                () = self.wake.notified() => false,
                _ = shutdown.changed() => break,
            };
            let result = if everything {
                self.sweep(Utc::now()).await
            } else {
                let poked = std::mem::take(&mut *self.poked.lock().expect("not poisoned"));
                self.evaluate_series(poked, Utc::now()).await
            };
            if let Err(error) = result {
                tracing::warn!(%error, "analyst: evaluation failed; the next sweep tries again");
            }
        }
    }

    /// Every series with a bucket in the last day, and every firing one gone stale.
    pub async fn sweep(&self, now: DateTime<Utc>) -> Result<usize, LiveError> {
        let recent = self
            .metrics
            .recent_series(now - chrono::Duration::days(1))
            .await
            .map_err(|e| LiveError::Store(e.to_string()))?;
        self.meters.series(recent.len());
        let mut signals = 0;
        for series in &recent {
            signals += self.evaluate_one(series, now).await?;
        }
        signals += self.close_stale(now).await?;
        Ok(signals)
    }

    async fn evaluate_series(
        &self,
        series: BTreeSet<(String, String, String)>,
        now: DateTime<Utc>,
    ) -> Result<usize, LiveError> {
        // The labels of each series: from its latest bucket, read for the poked series only
        // (reading every series of the last day on each poke cost 0.5 s at 200 series × a
        // day of buckets on PostgreSQL, and grows with the table).
        let mut signals = 0;
        for (tenant, resource, metric) in &series {
            let row = self
                .metrics
                .series_since(tenant, resource, metric, now - chrono::Duration::days(1))
                .await
                .map_err(|e| LiveError::Store(e.to_string()))?;
            if let Some(row) = row {
                signals += self.evaluate_one(&row, now).await?;
            }
        }
        Ok(signals)
    }

    /// Every rule that watches `series` judges its new buckets; returns the signals sent.
    pub async fn evaluate_one(
        &self,
        series: &SeriesRow,
        now: DateTime<Utc>,
    ) -> Result<usize, LiveError> {
        let mut sent = 0;
        for (rule, detector) in &self.rules {
            if !rule.matches(
                &series.tenant,
                &series.resource,
                &series.metric,
                &series.labels,
            ) {
                continue;
            }
            let key = SeriesKey {
                tenant: series.tenant.clone(),
                resource: series.resource.clone(),
                metric: series.metric.clone(),
                stat: rule.stat_for(&series.metric),
            };
            // Two tries: a save refused because another service judged the series meanwhile
            // reads its state again.
            for _ in 0..2 {
                match self.judge(rule, detector, &key, now).await? {
                    Some(count) => {
                        sent += count;
                        break;
                    }
                    None => continue,
                }
            }
        }
        Ok(sent)
    }

    /// Judge the new buckets of one series under one rule. `None` when another service saved
    /// the series' state first.
    async fn judge(
        &self,
        rule: &Rule,
        detector: &Detector,
        key: &SeriesKey,
        now: DateTime<Utc>,
    ) -> Result<Option<usize>, LiveError> {
        let timer = self.meters.eval_timer();
        let saved = self.states.load(&rule.name, key).await?;
        let mut tracked = saved.clone().unwrap_or_else(|| Tracked {
            state: SeriesState::new(detector),
            last_bucket: None,
            reported: None,
        });
        let from = match tracked.last_bucket {
            // Buckets are whole minutes: the next one starts a second later at the earliest.
            Some(last) => last + chrono::Duration::seconds(1),
            None => now - chrono::Duration::from_std(self.settings.warmup).unwrap_or_default(),
        };
        let to = now + chrono::Duration::minutes(1);
        let buckets = self
            .metrics
            .query(
                &key.tenant,
                &key.resource,
                &key.metric,
                verifier_stat(key.stat),
                from,
                to,
            )
            .await
            .map_err(|e| LiveError::Store(e.to_string()))?;
        if buckets.is_empty() {
            return Ok(Some(0));
        }
        let max_age = chrono::Duration::from_std(self.settings.max_age).unwrap_or_default();
        let mut signals = Vec::new();
        for (bucket, value) in &buckets {
            let evaluation = tracked.state.observe(detector, *bucket, *value);
            tracked.last_bucket = Some(*bucket);
            let recent = now - *bucket <= max_age;
            match evaluation.transition {
                Some(Transition::Fired) => {
                    let finding = evaluation
                        .finding(&rule.name, detector, key)
                        .expect("a fired evaluation has a finding");
                    self.meters.finding(&finding);
                    if recent {
                        signals.push(firing_signal(rule, &finding, &evaluation));
                        tracked.reported = Some(evaluation.at);
                    } else {
                        tracked.reported = None;
                    }
                }
                Some(Transition::Recovered) => {
                    if let Some(fired_at) = tracked.reported.take() {
                        signals.push(resolved_signal(rule, key, fired_at, &evaluation));
                    }
                }
                Some(Transition::Suppressed) | None => {}
            }
        }
        let count = signals.len();
        if !signals.is_empty() {
            self.report(signals).await?;
        }
        let saved_last = saved.as_ref().and_then(|s| s.last_bucket);
        let stored = self
            .states
            .save(&rule.name, key, &tracked, saved.is_some(), saved_last, now)
            .await?;
        timer.observe_duration();
        Ok(stored.then_some(count))
    }

    /// Series whose alarm went to a case and that have sent nothing since `stale_after`: the
    /// alarm cannot recover by itself, so its case is told the series went quiet.
    async fn close_stale(&self, now: DateTime<Utc>) -> Result<usize, LiveError> {
        let mut sent = 0;
        for (rule, detector) in &self.rules {
            for (key, tracked) in self.states.reported(&rule.name).await? {
                if !tracked.state.is_stale(detector, now) {
                    continue;
                }
                let fired_at = tracked.reported.expect("reported rows have it");
                let mut signal = resolved_signal_at(rule, &key, fired_at, now);
                signal.annotations.insert(
                    "summary".into(),
                    format!("{} went quiet: no bucket since it fired", describe(&key)),
                );
                self.report(vec![signal]).await?;
                let mut quiet = tracked.clone();
                quiet.reported = None;
                let last = tracked.last_bucket;
                self.states
                    .save(&rule.name, &key, &quiet, true, last, now)
                    .await?;
                sent += 1;
            }
        }
        Ok(sent)
    }

    async fn report(&self, signals: Vec<Signal>) -> Result<(), LiveError> {
        let fields: Vec<String> = (0..signals.len())
            .map(|i| format!("findings[{i}]"))
            .collect();
        let caller = Caller {
            tenant: None,
            context: RequestContext::default(),
        };
        self.sensor
            .ingest(Source::Analyst, signals, &fields, &caller)
            .await
            .map(|_| ())
            .map_err(|e| LiveError::Sensor(e.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("store: {0}")]
    Store(String),
    #[error("the sensor refused a finding: {0}")]
    Sensor(String),
}

impl From<StoreError> for LiveError {
    fn from(error: StoreError) -> Self {
        LiveError::Store(error.to_string())
    }
}

fn verifier_stat(stat: Stat) -> verifier::Stat {
    match stat {
        Stat::Avg => verifier::Stat::Avg,
        Stat::Max => verifier::Stat::Max,
        Stat::P95 => verifier::Stat::P95,
    }
}

fn describe(key: &SeriesKey) -> String {
    format!("{} {} of {}", key.metric, key.stat.as_str(), key.resource)
}

/// One alert per (rule, series): a new alarm of the series is a new alert state of it.
fn fingerprint(rule: &str, key: &SeriesKey) -> String {
    let mut hasher = Sha256::new();
    for part in [
        rule,
        &key.tenant,
        &key.resource,
        &key.metric,
        key.stat.as_str(),
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..16])
}

fn severity(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "critical",
        Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low => "low",
        Severity::Info => "info",
    }
}

/// The route a rule's findings take: grouped by rule and resource, the rule's automation,
/// template and labels on the case.
fn route_of(rule: &Rule) -> Route {
    let mut route = Route::named(&format!("analyst/{}", rule.name));
    route.group_by = vec!["alertname".into(), "service".into()];
    route.automation = match rule.route.automation {
        Automation::Manual => orchestrator::model::Automation::Manual,
        Automation::Auto => orchestrator::model::Automation::Auto,
    };
    route.template = rule.route.template.clone();
    route.copy_labels = ["alertname", "service", "metric", "stat"]
        .into_iter()
        .map(String::from)
        .chain(rule.route.labels.keys().cloned())
        .collect();
    route
}

fn labels_of(rule: &Rule, key: &SeriesKey) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = rule.route.labels.clone();
    for (name, value) in [
        ("alertname", rule.name.clone()),
        ("service", key.resource.clone()),
        ("metric", key.metric.clone()),
        ("stat", key.stat.as_str().to_string()),
        ("tenant", key.tenant.clone()),
        ("severity", severity(rule.severity).to_string()),
    ] {
        labels.insert(name.to_string(), value);
    }
    labels
}

fn firing_signal(rule: &Rule, finding: &Finding, evaluation: &Evaluation) -> Signal {
    let key = &finding.series;
    let expected = match (finding.band.lower, finding.band.upper) {
        (Some(lower), Some(upper)) => format!("{lower:.4} to {upper:.4}"),
        (None, Some(upper)) => format!("at most {upper:.4}"),
        (Some(lower), None) => format!("at least {lower:.4}"),
        (None, None) => "any".into(),
    };
    let summary = format!(
        "{} is {:.4} at {} (baseline {:.4}, expected {expected}; rule {})",
        describe(key),
        finding.observed,
        evaluation.at.to_rfc3339(),
        finding.baseline,
        rule.name
    );
    let finding_json = serde_json::to_value(finding).unwrap_or(Value::Null);
    let window_ref = json!({"table": "metric_1m", "keys": {
        "tenant": key.tenant, "resource": key.resource, "metric": key.metric,
        "from": finding.window.start.to_rfc3339(),
        "to": (finding.window.end + chrono::Duration::minutes(1)).to_rfc3339(),
    }});
    Signal {
        source: Source::Analyst,
        status: Status::Firing,
        severity: severity(rule.severity).into(),
        title: summary.chars().take(200).collect(),
        summary: Some(summary.clone()),
        labels: labels_of(rule, key),
        annotations: BTreeMap::from([
            ("summary".to_string(), summary),
            ("finding".to_string(), finding_json.to_string()),
        ]),
        fingerprint: fingerprint(&rule.name, key),
        starts_at: Some(evaluation.at),
        ends_at: None,
        generator_url: None,
        links: Vec::new(),
        references: vec![Reference {
            kind: "metric".into(),
            title: format!("{} around the anomaly", describe(key)),
            reference: window_ref,
        }],
        route: Some(route_of(rule)),
        raw: json!({"finding": finding_json}),
    }
}

fn resolved_signal(
    rule: &Rule,
    key: &SeriesKey,
    fired_at: DateTime<Utc>,
    evaluation: &Evaluation,
) -> Signal {
    resolved_signal_at(rule, key, fired_at, evaluation.at)
}

fn resolved_signal_at(
    rule: &Rule,
    key: &SeriesKey,
    fired_at: DateTime<Utc>,
    at: DateTime<Utc>,
) -> Signal {
    let summary = format!("{} is back within its band ({})", describe(key), rule.name);
    Signal {
        source: Source::Analyst,
        status: Status::Resolved,
        severity: severity(rule.severity).into(),
        title: summary.clone(),
        summary: Some(summary.clone()),
        labels: labels_of(rule, key),
        annotations: BTreeMap::from([("summary".to_string(), summary)]),
        fingerprint: fingerprint(&rule.name, key),
        starts_at: Some(fired_at),
        ends_at: Some(at),
        generator_url: None,
        links: Vec::new(),
        references: Vec::new(),
        route: Some(route_of(rule)),
        raw: json!({"recovered_at": at}),
    }
}

/// A state row: the state's JSON, the last bucket judged, when the reported alarm fired.
type StateRow = (String, Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// `analyst_series`: each (rule, series)'s state, saved with a check that nobody saved it
/// since it was read (several services may share a PostgreSQL database).
struct StateStore {
    pool: SqlPool,
}

impl StateStore {
    async fn load(&self, rule: &str, key: &SeriesKey) -> Result<Option<Tracked>, LiveError> {
        let sql = "SELECT state, last_bucket, reported FROM analyst_series \
                   WHERE rule = ? AND tenant = ? AND resource = ? AND metric = ? AND stat = ?";
        let row: Option<StateRow> = match &self.pool {
            SqlPool::Sqlite(pool) => sqlx::query_as(sql)
                .bind(rule)
                .bind(&key.tenant)
                .bind(&key.resource)
                .bind(&key.metric)
                .bind(key.stat.as_str())
                .fetch_optional(pool)
                .await
                .map_err(StoreError::from)?,
            SqlPool::Postgres(pool) => sqlx::query_as(&numbered(sql))
                .bind(rule)
                .bind(&key.tenant)
                .bind(&key.resource)
                .bind(&key.metric)
                .bind(key.stat.as_str())
                .fetch_optional(pool)
                .await
                .map_err(StoreError::from)?,
        };
        row.map(|(state, last_bucket, reported)| {
            Ok(Tracked {
                state: serde_json::from_str(&state)
                    .map_err(|e| LiveError::Store(format!("analyst_series.state: {e}")))?,
                last_bucket,
                reported,
            })
        })
        .transpose()
    }

    /// Save unless another service did since `seen_last` was read; false then.
    async fn save(
        &self,
        rule: &str,
        key: &SeriesKey,
        tracked: &Tracked,
        existed: bool,
        seen_last: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<bool, LiveError> {
        let state = serde_json::to_string(&tracked.state)
            .map_err(|e| LiveError::Store(format!("the state does not serialise: {e}")))?;
        let changed = if existed {
            let sql = "UPDATE analyst_series SET state = ?, last_bucket = ?, reported = ?, \
                       updated_at = ? WHERE rule = ? AND tenant = ? AND resource = ? \
                       AND metric = ? AND stat = ? AND last_bucket IS NOT DISTINCT FROM ?";
            match &self.pool {
                SqlPool::Sqlite(pool) => sqlx::query(&sql.replace("IS NOT DISTINCT FROM", "IS"))
                    .bind(&state)
                    .bind(tracked.last_bucket)
                    .bind(tracked.reported)
                    .bind(now)
                    .bind(rule)
                    .bind(&key.tenant)
                    .bind(&key.resource)
                    .bind(&key.metric)
                    .bind(key.stat.as_str())
                    .bind(seen_last)
                    .execute(pool)
                    .await
                    .map_err(StoreError::from)?
                    .rows_affected(),
                SqlPool::Postgres(pool) => sqlx::query(&numbered(sql))
                    .bind(&state)
                    .bind(tracked.last_bucket)
                    .bind(tracked.reported)
                    .bind(now)
                    .bind(rule)
                    .bind(&key.tenant)
                    .bind(&key.resource)
                    .bind(&key.metric)
                    .bind(key.stat.as_str())
                    .bind(seen_last)
                    .execute(pool)
                    .await
                    .map_err(StoreError::from)?
                    .rows_affected(),
            }
        } else {
            let sql = "INSERT INTO analyst_series (rule, tenant, resource, metric, stat, state, \
                       last_bucket, reported, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
                       ON CONFLICT (rule, tenant, resource, metric, stat) DO NOTHING";
            match &self.pool {
                SqlPool::Sqlite(pool) => sqlx::query(sql)
                    .bind(rule)
                    .bind(&key.tenant)
                    .bind(&key.resource)
                    .bind(&key.metric)
                    .bind(key.stat.as_str())
                    .bind(&state)
                    .bind(tracked.last_bucket)
                    .bind(tracked.reported)
                    .bind(now)
                    .execute(pool)
                    .await
                    .map_err(StoreError::from)?
                    .rows_affected(),
                SqlPool::Postgres(pool) => sqlx::query(&numbered(sql))
                    .bind(rule)
                    .bind(&key.tenant)
                    .bind(&key.resource)
                    .bind(&key.metric)
                    .bind(key.stat.as_str())
                    .bind(&state)
                    .bind(tracked.last_bucket)
                    .bind(tracked.reported)
                    .bind(now)
                    .execute(pool)
                    .await
                    .map_err(StoreError::from)?
                    .rows_affected(),
            }
        };
        Ok(changed == 1)
    }

    /// The series of `rule` whose alarm went to a case.
    async fn reported(&self, rule: &str) -> Result<Vec<(SeriesKey, Tracked)>, LiveError> {
        let sql = "SELECT tenant, resource, metric, stat, state, last_bucket, reported \
                   FROM analyst_series WHERE rule = ? AND reported IS NOT NULL";
        type Row = (
            String,
            String,
            String,
            String,
            String,
            Option<DateTime<Utc>>,
            Option<DateTime<Utc>>,
        );
        let rows: Vec<Row> = match &self.pool {
            SqlPool::Sqlite(pool) => sqlx::query_as(sql)
                .bind(rule)
                .fetch_all(pool)
                .await
                .map_err(StoreError::from)?,
            SqlPool::Postgres(pool) => sqlx::query_as(&numbered(sql))
                .bind(rule)
                .fetch_all(pool)
                .await
                .map_err(StoreError::from)?,
        };
        rows.into_iter()
            .map(
                |(tenant, resource, metric, stat, state, last_bucket, reported)| {
                    let stat = match stat.as_str() {
                        "p95" => Stat::P95,
                        "max" => Stat::Max,
                        _ => Stat::Avg,
                    };
                    Ok((
                        SeriesKey {
                            tenant,
                            resource,
                            metric,
                            stat,
                        },
                        Tracked {
                            state: serde_json::from_str(&state).map_err(|e| {
                                LiveError::Store(format!("analyst_series.state: {e}"))
                            })?,
                            last_bucket,
                            reported,
                        },
                    ))
                },
            )
            .collect()
    }
}
