//! `Metric1mStore` on SQLite and PostgreSQL with the real migrations.

use serde_json::json;
use verifier::{Metric1mError, Metric1mStore, Stat};

use crate::common::{point, sqlite_pool, ts, PgDatabase};

async fn upsert_is_idempotent(store: &Metric1mStore) {
    let first = vec![
        point(
            "acme",
            "checkout",
            "p95_ms",
            "2026-11-21T12:03:41Z",
            json!({"p95": 250.0, "avg": 120.0, "count": 10, "labels": {"region": "eu"}}),
        ),
        point(
            "acme",
            "checkout",
            "p95_ms",
            "2026-11-21T12:04:00Z",
            json!({"p95": 260.0}),
        ),
    ];
    assert_eq!(store.insert_batch(&first).await.unwrap(), 2);
    // The same minutes again (one with a different second, and new values): replaced.
    let again = vec![
        point(
            "acme",
            "checkout",
            "p95_ms",
            "2026-11-21T12:03:05.5Z",
            json!({"p95": 270.0}),
        ),
        point(
            "acme",
            "checkout",
            "p95_ms",
            "2026-11-21T12:04:59Z",
            json!({"p95": 260.0}),
        ),
    ];
    assert_eq!(store.insert_batch(&again).await.unwrap(), 2);
    assert_eq!(store.insert_batch(&again).await.unwrap(), 2);
    let rows = store
        .query(
            "acme",
            "checkout",
            "p95_ms",
            Stat::P95,
            ts("2026-11-21T12:00:00Z"),
            ts("2026-11-21T13:00:00Z"),
        )
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![
            (ts("2026-11-21T12:03:00Z"), 270.0),
            (ts("2026-11-21T12:04:00Z"), 260.0)
        ]
    );
    // The whole row was replaced: the avg of the first write is gone.
    let avg = store
        .query(
            "acme",
            "checkout",
            "p95_ms",
            Stat::Avg,
            ts("2026-11-21T12:00:00Z"),
            ts("2026-11-21T13:00:00Z"),
        )
        .await
        .unwrap();
    assert_eq!(avg, vec![]);
    // Within one batch the last row of a minute wins.
    let dup = vec![
        point(
            "acme",
            "checkout",
            "rps",
            "2026-11-21T12:05:01Z",
            json!({"avg": 1.0}),
        ),
        point(
            "acme",
            "checkout",
            "rps",
            "2026-11-21T12:05:02Z",
            json!({"avg": 2.0}),
        ),
    ];
    assert_eq!(store.insert_batch(&dup).await.unwrap(), 2);
    let rps = store
        .query(
            "acme",
            "checkout",
            "rps",
            Stat::Avg,
            ts("2026-11-21T12:00:00Z"),
            ts("2026-11-21T13:00:00Z"),
        )
        .await
        .unwrap();
    assert_eq!(rps, vec![(ts("2026-11-21T12:05:00Z"), 2.0)]);
    assert_eq!(store.insert_batch(&[]).await.unwrap(), 0);
}

async fn an_invalid_point_writes_nothing(store: &Metric1mStore) {
    let mut infinite = point(
        "acme",
        "cart",
        "p95_ms",
        "2026-11-21T12:04:00Z",
        json!({"p95": 1.0}),
    );
    infinite.p95 = Some(f64::INFINITY);
    let batch = vec![
        point(
            "acme",
            "cart",
            "p95_ms",
            "2026-11-21T12:03:00Z",
            json!({"p95": 1.0}),
        ),
        infinite,
    ];
    match store.insert_batch(&batch).await {
        Err(Metric1mError::Invalid { index, field, .. }) => assert_eq!((index, field), (1, "p95")),
        other => panic!("expected an invalid point, got {other:?}"),
    }
    let rows = store
        .query(
            "acme",
            "cart",
            "p95_ms",
            Stat::P95,
            ts("2026-11-21T00:00:00Z"),
            ts("2026-11-22T00:00:00Z"),
        )
        .await
        .unwrap();
    assert!(rows.is_empty());
}

async fn the_window_is_half_open_and_scoped(store: &Metric1mStore) {
    let minutes = ["12:04", "12:05", "12:06", "12:09", "12:10"];
    let mut batch: Vec<_> = minutes
        .iter()
        .enumerate()
        .map(|(i, m)| {
            point(
                "acme",
                "api",
                "err_rate",
                &format!("2026-11-21T{m}:00Z"),
                json!({"avg": i as f64, "max": 10.0 + i as f64}),
            )
        })
        .collect();
    // Other tenants, resources and metrics, and a row without avg, are not read.
    batch.push(point(
        "other",
        "api",
        "err_rate",
        "2026-11-21T12:06:00Z",
        json!({"avg": 99.0}),
    ));
    batch.push(point(
        "acme",
        "web",
        "err_rate",
        "2026-11-21T12:06:00Z",
        json!({"avg": 99.0}),
    ));
    batch.push(point(
        "acme",
        "api",
        "rps",
        "2026-11-21T12:06:00Z",
        json!({"avg": 99.0}),
    ));
    batch.push(point(
        "acme",
        "api",
        "err_rate",
        "2026-11-21T12:07:00Z",
        json!({"max": 99.0}),
    ));
    store.insert_batch(&batch).await.unwrap();

    let read = |stat, from: &'static str, to: &'static str| async move {
        store
            .query("acme", "api", "err_rate", stat, ts(from), ts(to))
            .await
            .unwrap()
    };
    // [12:05, 12:10): the bucket at the start is in, the one at the end is out.
    let rows = read(Stat::Avg, "2026-11-21T12:05:00Z", "2026-11-21T12:10:00Z").await;
    assert_eq!(
        rows,
        vec![
            (ts("2026-11-21T12:05:00Z"), 1.0),
            (ts("2026-11-21T12:06:00Z"), 2.0),
            (ts("2026-11-21T12:09:00Z"), 3.0),
        ]
    );
    // Bounds with fractional seconds: [12:05:00.5, 12:10:00.5) holds 12:06 .. 12:10.
    let rows = read(
        Stat::Avg,
        "2026-11-21T12:05:00.5Z",
        "2026-11-21T12:10:00.5Z",
    )
    .await;
    let buckets: Vec<_> = rows
        .iter()
        .map(|(b, _)| b.format("%H:%M").to_string())
        .collect();
    assert_eq!(buckets, ["12:06", "12:09", "12:10"]);
    // One nanosecond past a bucket's start leaves it out; the max column is another stat.
    let rows = read(
        Stat::Max,
        "2026-11-21T12:04:00.000000001Z",
        "2026-11-21T12:07:00.000000001Z",
    )
    .await;
    assert_eq!(
        rows,
        vec![
            (ts("2026-11-21T12:05:00Z"), 11.0),
            (ts("2026-11-21T12:06:00Z"), 12.0),
            (ts("2026-11-21T12:07:00Z"), 99.0),
        ]
    );
    assert!(
        read(Stat::P95, "2026-11-21T12:00:00Z", "2026-11-21T13:00:00Z")
            .await
            .is_empty()
    );
    assert!(
        read(Stat::Avg, "2026-11-21T12:10:00Z", "2026-11-21T12:10:00Z")
            .await
            .is_empty()
    );
}

/// A series' labels come from its latest bucket since the bound; other series, tenants and
/// metrics are not read, and a series with nothing since the bound is `None`.
async fn series_since_reads_the_latest_bucket_of_one_series(store: &Metric1mStore) {
    let batch = vec![
        point(
            "acme",
            "basket",
            "p95_ms",
            "2026-11-21T12:01:00Z",
            json!({"p95": 1.0, "labels": {"version": "1"}}),
        ),
        point(
            "acme",
            "basket",
            "p95_ms",
            "2026-11-21T12:02:00Z",
            json!({"p95": 1.0, "labels": {"version": "2"}}),
        ),
        point(
            "acme",
            "basket",
            "err_rate",
            "2026-11-21T12:03:00Z",
            json!({"avg": 1.0, "labels": {"version": "3"}}),
        ),
        point(
            "other",
            "basket",
            "p95_ms",
            "2026-11-21T12:04:00Z",
            json!({"p95": 1.0, "labels": {"version": "4"}}),
        ),
        point(
            "acme",
            "basket-eu",
            "p95_ms",
            "2026-11-21T12:05:00Z",
            json!({"p95": 1.0, "labels": {"version": "5"}}),
        ),
    ];
    store.insert_batch(&batch).await.unwrap();
    let row = store
        .series_since("acme", "basket", "p95_ms", ts("2026-11-21T12:00:00Z"))
        .await
        .unwrap()
        .expect("a bucket since 12:00");
    assert_eq!(
        (
            row.tenant.as_str(),
            row.resource.as_str(),
            row.metric.as_str()
        ),
        ("acme", "basket", "p95_ms")
    );
    assert_eq!(row.labels, json!({"version": "2"}));
    let at_the_bound = store
        .series_since("acme", "basket", "p95_ms", ts("2026-11-21T12:02:00Z"))
        .await
        .unwrap();
    assert_eq!(
        at_the_bound.map(|row| row.labels),
        Some(json!({"version": "2"}))
    );
    assert!(store
        .series_since("acme", "basket", "p95_ms", ts("2026-11-21T12:02:00.5Z"))
        .await
        .unwrap()
        .is_none());
    assert!(store
        .series_since("acme", "nowhere", "p95_ms", ts("2026-11-21T12:00:00Z"))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn sqlite_upsert_is_idempotent() {
    upsert_is_idempotent(&Metric1mStore::sqlite(sqlite_pool().await)).await;
}

#[tokio::test]
async fn sqlite_an_invalid_point_writes_nothing() {
    an_invalid_point_writes_nothing(&Metric1mStore::sqlite(sqlite_pool().await)).await;
}

#[tokio::test]
async fn sqlite_the_window_is_half_open_and_scoped() {
    the_window_is_half_open_and_scoped(&Metric1mStore::sqlite(sqlite_pool().await)).await;
}

#[tokio::test]
async fn sqlite_series_since_reads_the_latest_bucket_of_one_series() {
    series_since_reads_the_latest_bucket_of_one_series(&Metric1mStore::sqlite(sqlite_pool().await))
        .await;
}

#[tokio::test]
async fn sqlite_stores_minutes_as_rfc3339_text() {
    let pool = sqlite_pool().await;
    let store = Metric1mStore::sqlite(pool.clone());
    store
        .insert_batch(&[point(
            "acme",
            "api",
            "rps",
            "2026-11-21T12:03:41.25+02:00",
            json!({"avg": 5.0, "labels": {"a": "b"}}),
        )])
        .await
        .unwrap();
    let (bucket, labels): (String, String) = sqlx::query_as("SELECT bucket, labels FROM metric_1m")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(bucket, "2026-11-21T10:03:00+00:00");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&labels).unwrap(),
        json!({"a": "b"})
    );
}

#[tokio::test]
async fn postgres_metric_1m_store() {
    let Some(database) = PgDatabase::create().await else {
        return;
    };
    let store = Metric1mStore::postgres(database.pool.clone());
    upsert_is_idempotent(&store).await;
    an_invalid_point_writes_nothing(&store).await;
    the_window_is_half_open_and_scoped(&store).await;
    series_since_reads_the_latest_bucket_of_one_series(&store).await;
    let labels: serde_json::Value = sqlx::query_scalar(
        "SELECT labels FROM metric_1m WHERE resource = 'checkout' AND bucket = '2026-11-21T12:03:00Z'",
    )
    .fetch_one(&database.pool)
    .await
    .unwrap();
    assert_eq!(labels, json!({}));
    database.drop_database().await;
}
