//! The loads the memory bench drives from its own process: the transition closed loop (the
//! same requests as transition-bench: `start_analysis` then `cancel`, fresh `Idempotency-Key`,
//! `If-Match`), and a bad-input storm of bodies near or over the body limit.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, ETAG};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

/// Cases are opened with this many requests at a time.
const OPEN_CONCURRENCY: usize = 32;
/// A request that takes longer is an error ("timeout").
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Keep-alive HTTP/1.1, the admin key on each request.
pub fn client(key: &str, connections: usize) -> anyhow::Result<Client> {
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {key}"))?,
    );
    Ok(Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .build()?)
}

async fn open_case(client: &Client, base: &str, number: usize) -> anyhow::Result<String> {
    let response = client
        .post(format!("{base}/v1/cases"))
        .json(&json!({"title": format!("memory bench {number}")}))
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    if status != StatusCode::CREATED {
        bail!("opening a case answered {status}: {body}");
    }
    body["id"]
        .as_str()
        .map(str::to_string)
        .context("the opened case has no id")
}

pub async fn open_cases(client: &Client, base: &str, count: usize) -> anyhow::Result<Vec<String>> {
    futures::stream::iter(0..count)
        .map(|number| open_case(client, base, number))
        .buffer_unordered(OPEN_CONCURRENCY)
        .try_collect()
        .await
}

/// What a closed loop did.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub accepted: u64,
    pub elapsed_s: f64,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: BTreeMap<String, u64>,
    /// Cases opened during the load because the pool ran dry (not counted as transitions).
    pub opened_inline: u64,
}

impl Tally {
    pub fn tps(&self) -> f64 {
        self.accepted as f64 / self.elapsed_s.max(1e-9)
    }

    pub fn failures(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(status, _)| !(200..300).contains(*status))
            .map(|(_, count)| count)
            .sum::<u64>()
            + self.errors.values().sum::<u64>()
    }

    fn add(&mut self, other: Tally) {
        self.accepted += other.accepted;
        self.opened_inline += other.opened_inline;
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_default() += count;
        }
        for (kind, count) in other.errors {
            *self.errors.entry(kind).or_default() += count;
        }
    }
}

/// `clients` workers, each walking cases NEW → start_analysis → cancel, one request at a time,
/// for `seconds`.
pub async fn transitions(
    client: &Client,
    base: &str,
    pool: &Arc<Mutex<VecDeque<String>>>,
    clients: usize,
    seconds: u64,
) -> Tally {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..clients)
        .map(|worker| {
            let (client, base, pool) = (client.clone(), base.to_string(), pool.clone());
            tokio::spawn(
                async move { transition_worker(&client, &base, &pool, deadline, worker).await },
            )
        })
        .collect();
    let mut total = Tally::default();
    for tally in futures::future::join_all(workers).await {
        match tally {
            Ok(tally) => total.add(tally),
            Err(error) => *total.errors.entry(format!("worker: {error}")).or_default() += 1,
        }
    }
    total.elapsed_s = started.elapsed().as_secs_f64();
    total
}

async fn transition_worker(
    client: &Client,
    base: &str,
    pool: &Mutex<VecDeque<String>>,
    deadline: Instant,
    worker: usize,
) -> Tally {
    let mut tally = Tally::default();
    // (case id, version the service last reported, whether start_analysis was accepted)
    let mut current: Option<(String, i64, bool)> = None;
    while Instant::now() < deadline {
        let (case, version, analyzing) = match current.take() {
            Some(case) => case,
            None => {
                let next = pool.lock().expect("case pool").pop_front();
                match next {
                    Some(id) => (id, 1, false),
                    None => match open_case(client, base, worker).await {
                        Ok(id) => {
                            tally.opened_inline += 1;
                            (id, 1, false)
                        }
                        Err(error) => {
                            *tally.errors.entry(format!("open: {error}")).or_default() += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                }
            }
        };
        let body = if analyzing {
            json!({"event": "cancel", "reason": "memory-bench"})
        } else {
            json!({"event": "start_analysis"})
        };
        let url = format!("{base}/v1/cases/{case}/transition");
        let answer = async {
            let response = client
                .patch(&url)
                .header("Idempotency-Key", Uuid::new_v4().to_string())
                .header("If-Match", format!("\"{version}\""))
                .json(&body)
                .send()
                .await?;
            let status = response.status().as_u16();
            let etag = response
                .headers()
                .get(ETAG)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim_matches('"').parse::<i64>().ok());
            response.bytes().await?;
            Ok::<_, reqwest::Error>((status, etag))
        }
        .await;
        match answer {
            Ok((status, etag)) => {
                *tally.statuses.entry(status).or_default() += 1;
                if (200..300).contains(&status) {
                    tally.accepted += 1;
                    if !analyzing {
                        current = Some((case, etag.unwrap_or(version + 1), true));
                    }
                }
            }
            Err(error) => *tally.errors.entry(failure(&error)).or_default() += 1,
        }
    }
    tally
}

fn failure(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else if error.is_body() || error.is_decode() {
        "body"
    } else if error.is_request() {
        "request"
    } else {
        "other"
    }
    .to_string()
}

/// One kind of bad request.
pub struct BadKind {
    pub name: &'static str,
    method: reqwest::Method,
    /// `{case}` is replaced by a case id.
    path: &'static str,
    authenticated: bool,
    body: Bytes,
}

/// The bad inputs, built once; `limit` is the service's `server.body_limit_bytes`.
///
/// - `truncated-json`: a `POST /v1/cases` whose body is an object holding an array of small
///   objects, cut off just before the limit: the whole body is read and nearly all of it parsed
///   into a JSON tree before the parser finds the end missing.
/// - `unknown-event`: a `PATCH .../transition` with a valid JSON object just under the limit
///   (an unknown event and a `meta` of many small keys): parsed whole, then refused.
/// - `garbage`: `PATCH .../transition` with bytes that are not JSON from the first one, just
///   under the limit: read whole, refused at once.
/// - `nested`: `[[[[...` just under the limit: refused at serde_json's depth limit.
/// - `over-limit`: twice the limit of JSON-looking bytes: 413 once the limit is reached.
/// - `unauthenticated`: the over-limit body without an API key: 401 before the body is read.
pub fn bad_kinds(limit: usize) -> Vec<BadKind> {
    let under = limit - 256;
    let mut truncated = String::with_capacity(limit);
    truncated.push_str("{\"title\":\"bad\",\"evidence\":[");
    let mut n = 0u64;
    while truncated.len() < under {
        truncated.push_str(&format!("{{\"k{n}\":[1,2,3],\"v\":\"x\"}},"));
        n += 1;
    }
    let mut unknown = String::with_capacity(limit);
    unknown.push_str("{\"event\":\"no_such_event\",\"meta\":{");
    n = 0;
    while unknown.len() < under - 64 {
        unknown.push_str(&format!("\"key{n}\":{n},"));
        n += 1;
    }
    unknown.push_str("\"last\":0}}");
    let garbage: Vec<u8> = (0..under).map(|i| b"<>?!#%&"[i % 7]).collect();
    let nested = "[".repeat(under);
    let over: Vec<u8> = (0..limit * 2).map(|i| b"{\"a\":1}"[i % 7]).collect();
    vec![
        BadKind {
            name: "truncated-json",
            method: reqwest::Method::POST,
            path: "/v1/cases",
            authenticated: true,
            body: Bytes::from(truncated),
        },
        BadKind {
            name: "unknown-event",
            method: reqwest::Method::PATCH,
            path: "/v1/cases/{case}/transition",
            authenticated: true,
            body: Bytes::from(unknown),
        },
        BadKind {
            name: "garbage",
            method: reqwest::Method::PATCH,
            path: "/v1/cases/{case}/transition",
            authenticated: true,
            body: Bytes::from(garbage),
        },
        BadKind {
            name: "nested",
            method: reqwest::Method::POST,
            path: "/v1/cases",
            authenticated: true,
            body: Bytes::from(nested),
        },
        BadKind {
            name: "over-limit",
            method: reqwest::Method::POST,
            path: "/v1/cases",
            authenticated: true,
            body: Bytes::from(over.clone()),
        },
        BadKind {
            name: "unauthenticated",
            method: reqwest::Method::POST,
            path: "/v1/cases",
            authenticated: false,
            body: Bytes::from(over),
        },
    ]
}

/// `clients` workers for `seconds`, each sending the kinds in turn (worker *w* starts at kind
/// *w*), one request at a time. Answers by kind and status.
pub async fn bad_input(
    client: &Client,
    anonymous: &Client,
    base: &str,
    case: &str,
    kinds: Arc<Vec<BadKind>>,
    clients: usize,
    seconds: u64,
) -> BTreeMap<String, BTreeMap<String, u64>> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..clients)
        .map(|worker| {
            let (client, anonymous) = (client.clone(), anonymous.clone());
            let (base, case, kinds) = (base.to_string(), case.to_string(), kinds.clone());
            tokio::spawn(async move {
                let mut seen: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
                let mut next = worker;
                while Instant::now() < deadline {
                    let kind = &kinds[next % kinds.len()];
                    next += 1;
                    let http = if kind.authenticated {
                        &client
                    } else {
                        &anonymous
                    };
                    let url = format!("{base}{}", kind.path.replace("{case}", &case));
                    let answer = async {
                        let response = http
                            .request(kind.method.clone(), &url)
                            .header(CONTENT_TYPE, "application/json")
                            .header("Idempotency-Key", Uuid::new_v4().to_string())
                            .body(kind.body.clone())
                            .send()
                            .await?;
                        let status = response.status().as_u16();
                        response.bytes().await?;
                        Ok::<_, reqwest::Error>(status)
                    }
                    .await;
                    let outcome = match answer {
                        Ok(status) => status.to_string(),
                        Err(error) => failure(&error),
                    };
                    *seen
                        .entry(kind.name.to_string())
                        .or_default()
                        .entry(outcome)
                        .or_default() += 1;
                }
                seen
            })
        })
        .collect();
    let mut total: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for seen in futures::future::join_all(workers)
        .await
        .into_iter()
        .flatten()
    {
        for (kind, outcomes) in seen {
            for (outcome, count) in outcomes {
                *total
                    .entry(kind.clone())
                    .or_default()
                    .entry(outcome)
                    .or_default() += count;
            }
        }
    }
    total
}
