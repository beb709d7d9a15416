//! A stand-in for an OpenAI-compatible embeddings endpoint, in process on a loopback port: each
//! text becomes a hashed bag of its words, normalised. Deterministic and fast, so the hybrid
//! figures measure the knowledge base's own work (a query embedded over HTTP, the vector
//! search, the fusion) — and say nothing about retrieval quality with a real model.

use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

pub const MODEL: &str = "bench-hashed-bag-of-words";

pub struct StandIn {
    pub base_url: String,
    task: tokio::task::JoinHandle<()>,
}

impl StandIn {
    pub async fn start(dimensions: usize) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let app = Router::new().route(
            "/v1/embeddings",
            post(move |Json(body): Json<Value>| async move { Json(embed(&body, dimensions)) }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            base_url: format!("http://{address}/v1"),
            task,
        })
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn embed(body: &Value, dimensions: usize) -> Value {
    let inputs: Vec<&str> = match &body["input"] {
        Value::String(text) => vec![text.as_str()],
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            json!({"object": "embedding", "index": index, "embedding": vector(text, dimensions)})
        })
        .collect();
    json!({"object": "list", "model": MODEL, "data": data})
}

/// FNV-1a of each lower-cased word picks a dimension and a sign; the sum is normalised.
pub fn vector(text: &str, dimensions: usize) -> Vec<f32> {
    let mut out = vec![0f32; dimensions.max(1)];
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
    {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in word.to_lowercase().bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        let slot = (hash % out.len() as u64) as usize;
        out[slot] += if hash >> 63 == 0 { 1.0 } else { -1.0 };
    }
    let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        out.iter_mut().for_each(|x| *x /= norm);
    } else {
        out[0] = 1.0;
    }
    out
}
