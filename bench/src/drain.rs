//! Phase 1: drain a backlog. Rows go straight into the outbox (as if the bus had been down
//! while the service kept committing), then one `Relay` publishes them batch by batch, exactly
//! as the service's relay loop does, until a batch comes back empty.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bus::{Delivery, Envelope, JetStreamTransport, Transport};
use chrono::Utc;
use orchestrator::relay::envelope_of;
use orchestrator::{Metrics, Relay, RelaySettings, Store};
use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio::sync::Notify;

use crate::setup::stored_events;
use crate::Args;

/// The relay's batch size, as configured by default in the service.
pub const BATCH_SIZE: u32 = 500;
/// One repetition that takes longer than this is a failure, not a result.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

pub struct Drain {
    /// Rows inserted for each repetition and for the timed pass (`--rows`).
    pub rows_per_backlog: u64,
    pub repetitions: Vec<Repetition>,
    pub breakdown: Breakdown,
    /// New messages the events stream should hold: every row inserted, once.
    pub events_expected: u64,
    pub events_stored: u64,
    /// Unpublished rows left in the outbox at the end (should be 0).
    pub left_pending: i64,
}

pub struct Repetition {
    pub rows: u64,
    pub insert_s: f64,
    pub published: u64,
    pub batches: u64,
    pub drain_s: f64,
}

impl Repetition {
    pub fn rows_per_s(&self) -> f64 {
        self.published as f64 / self.drain_s
    }
}

/// Where a batch's time goes: the steps of `Relay::relay_batch`, timed one by one over one more
/// backlog of the same size.
pub struct Breakdown {
    pub rows: u64,
    pub batches: u64,
    /// `SELECT ... FOR UPDATE SKIP LOCKED` and decoding the rows.
    pub claim_s: f64,
    /// Building the CloudEvents envelopes.
    pub envelopes_s: f64,
    /// Sending the batch to JetStream and awaiting every ack.
    pub publish_s: f64,
    /// `UPDATE ... SET published_at` and the commit that releases the claim.
    pub mark_s: f64,
}

impl Breakdown {
    pub fn total_s(&self) -> f64 {
        self.claim_s + self.envelopes_s + self.publish_s + self.mark_s
    }
}

impl Drain {
    pub fn median_rows_per_s(&self) -> f64 {
        let rates: Vec<f64> = self
            .repetitions
            .iter()
            .map(Repetition::rows_per_s)
            .collect();
        crate::stats::median(&rates)
    }

    /// No row lost or published twice, and nothing left behind.
    pub fn integrity_ok(&self) -> bool {
        self.events_stored == self.events_expected
            && self.left_pending == 0
            && self.repetitions.iter().all(|r| r.published == r.rows)
            && self.breakdown.rows == self.rows_per_backlog
    }
}

pub async fn run(
    args: &Args,
    database_url: &str,
    transport: Arc<JetStreamTransport>,
) -> anyhow::Result<Drain> {
    let store = orchestrator::connect(database_url, 4).await?;
    store.migrate().await?;
    // The bench's own SQL (insert, vacuum, truncate) goes through a separate small pool.
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(database_url)
        .await?;
    let relay = Relay::new(
        store.clone(),
        transport.clone(),
        Metrics::new(),
        Arc::new(Notify::new()),
        RelaySettings {
            batch_size: BATCH_SIZE,
            ..RelaySettings::default()
        },
    );
    let events_before = stored_events(&transport).await?;

    let mut repetitions = Vec::new();
    for number in 1..=args.repetitions {
        let insert_s = insert_backlog(&pool, args.rows).await?;
        let started = Instant::now();
        let (published, batches) = tokio::time::timeout(DRAIN_TIMEOUT, drain(&relay, args.rows))
            .await
            .context("the drain took longer than 300 s")??;
        let repetition = Repetition {
            rows: u64::from(args.rows),
            insert_s,
            published,
            batches,
            drain_s: started.elapsed().as_secs_f64(),
        };
        eprintln!(
            "relay-bench: drain {number}/{}: {published} rows in {:.2} s = {:.0} rows/s",
            args.repetitions,
            repetition.drain_s,
            repetition.rows_per_s()
        );
        repetitions.push(repetition);
    }

    insert_backlog(&pool, args.rows).await?;
    let breakdown = tokio::time::timeout(DRAIN_TIMEOUT, timed_steps(store.as_ref(), &transport))
        .await
        .context("the timed pass took longer than 300 s")??;
    eprintln!(
        "relay-bench: timed pass: {} rows, claim {:.2} s, publish {:.2} s, mark {:.2} s",
        breakdown.rows, breakdown.claim_s, breakdown.publish_s, breakdown.mark_s
    );

    let drained = Drain {
        rows_per_backlog: u64::from(args.rows),
        events_expected: u64::from(args.rows) * (u64::from(args.repetitions) + 1),
        events_stored: stored_events(&transport).await? - events_before,
        left_pending: store.outbox_pending().await?,
        repetitions,
        breakdown,
    };
    // The lag phase starts from an empty outbox, as a service that keeps up would have.
    sqlx::query("TRUNCATE outbox").execute(&pool).await?;
    pool.close().await;
    store.close().await;
    Ok(drained)
}

/// Insert `rows` unpublished transition messages in one statement; returns the seconds taken.
async fn insert_backlog(pool: &PgPool, rows: u32) -> anyhow::Result<f64> {
    // Clear the previous repetition's dead rows first, so each repetition starts alike.
    sqlx::raw_sql("VACUUM (ANALYZE) outbox")
        .execute(pool)
        .await?;
    let started = Instant::now();
    // Shaped like the service's own case-transition messages (see transition_message in the
    // orchestrator), so the relay decodes and publishes payloads of a realistic size.
    let inserted = sqlx::query(
        "INSERT INTO outbox (message_id, topic, key, payload, headers, created_at) \
         SELECT gen_random_uuid(), $2, c.id::text, \
                jsonb_build_object( \
                    'case_id', c.id, 'tenant', 'default', 'event', 'start_analysis', \
                    'from', 'NEW', 'to', 'ANALYZING', 'version', 2, 'actor', 'relay-bench', \
                    'reason', NULL, 'resolution', NULL, 'plan_id', NULL, 'occurred_at', now()), \
                '{}'::jsonb, now() \
         FROM (SELECT gen_random_uuid() AS id FROM generate_series(1, $1)) AS c",
    )
    .bind(i64::from(rows))
    .bind(workflow::TOPIC_CASE_TRANSITION)
    .execute(pool)
    .await?;
    if inserted.rows_affected() != u64::from(rows) {
        bail!("inserted {} rows, not {rows}", inserted.rows_affected());
    }
    Ok(started.elapsed().as_secs_f64())
}

/// `relay_batch` until it finds nothing; returns (rows published, non-empty batches).
async fn drain(relay: &Relay, expected: u32) -> anyhow::Result<(u64, u64)> {
    // Bounded: a few batches more than the rows need, then something is wrong.
    let max_batches = u64::from(expected).div_ceil(u64::from(BATCH_SIZE)) + 10;
    let mut published = 0;
    for batch in 0..max_batches {
        match relay.relay_batch().await? {
            0 => return Ok((published, batch)),
            count => published += count as u64,
        }
    }
    bail!("the outbox was not empty after {max_batches} batches")
}

/// One more drain with the steps of `Relay::relay_batch` spelled out and timed; the rows are
/// marked only when every message of the batch was acknowledged, as the relay does.
async fn timed_steps(
    store: &dyn Store,
    transport: &JetStreamTransport,
) -> anyhow::Result<Breakdown> {
    let mut breakdown = Breakdown {
        rows: 0,
        batches: 0,
        claim_s: 0.0,
        envelopes_s: 0.0,
        publish_s: 0.0,
        mark_s: 0.0,
    };
    // Same bound as `drain`: the backlog has `--rows` rows, at most 2,000,000.
    for _ in 0..(2_000_000 / u64::from(BATCH_SIZE) + 10) {
        let started = Instant::now();
        let claim = store.claim_outbox(BATCH_SIZE).await?;
        breakdown.claim_s += started.elapsed().as_secs_f64();
        if claim.rows().is_empty() {
            return Ok(breakdown);
        }

        let started = Instant::now();
        let envelopes: Vec<Envelope> = claim
            .rows()
            .iter()
            .map(|row| envelope_of(&row.message))
            .collect();
        breakdown.envelopes_s += started.elapsed().as_secs_f64();

        let started = Instant::now();
        let deliveries = transport.publish(&envelopes).await?;
        breakdown.publish_s += started.elapsed().as_secs_f64();
        if let Some(failed) = deliveries
            .iter()
            .find(|delivery| !matches!(delivery, Delivery::Acked { .. }))
        {
            bail!("a message was not acknowledged: {failed:?}");
        }

        let started = Instant::now();
        let ids: Vec<i64> = claim.rows().iter().map(|row| row.id).collect();
        claim.mark_published(&ids, Utc::now()).await?;
        breakdown.mark_s += started.elapsed().as_secs_f64();
        breakdown.rows += ids.len() as u64;
        breakdown.batches += 1;
    }
    bail!("the outbox was not empty after the timed pass's batch limit")
}
