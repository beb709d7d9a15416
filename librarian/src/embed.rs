//! The client of an OpenAI-compatible embeddings endpoint (`POST {base_url}/embeddings`, as
//! served by OpenAI, vLLM, Ollama and llama.cpp): texts in, one checked vector per text out.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where and how texts are embedded (`[librarian.embeddings]`).
#[derive(Clone, PartialEq)]
pub struct EmbeddingSettings {
    /// The API root, ending in `/v1` (`http://127.0.0.1:11434/v1` for Ollama).
    pub base_url: String,
    pub model: String,
    /// The length of every vector; the vector tables are made for it.
    pub dimensions: usize,
    /// Sent as `dimensions` in each request. vLLM refuses the field for models without
    /// Matryoshka support, even when it is their native size: turn it off there.
    pub send_dimensions: bool,
    /// Texts per request when chunks are embedded in the background.
    pub batch_size: usize,
    /// Longest wait for one answer (a search waits this long for its query's vector).
    pub timeout: Duration,
    /// Sent as `Authorization: Bearer ...` when set (never logged).
    pub api_key: Option<String>,
}

impl std::fmt::Debug for EmbeddingSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingSettings")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("dimensions", &self.dimensions)
            .field("send_dimensions", &self.send_dimensions)
            .field("batch_size", &self.batch_size)
            .field("timeout", &self.timeout)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Why texts could not be embedded. None of these fails an import or a search.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EmbedError {
    #[error("the embeddings endpoint could not be reached or did not answer in time: {0}")]
    Transport(String),
    #[error("the embeddings endpoint answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the embeddings endpoint's answer is not usable: {0}")]
    Invalid(String),
}

impl EmbedError {
    /// The endpoint refused what was sent (a text too long for the model, say) rather than
    /// being down, misconfigured or overloaded: other texts may still go through.
    pub fn refuses_input(&self) -> bool {
        matches!(
            self,
            EmbedError::Status {
                status: 400 | 413 | 422,
                ..
            }
        )
    }
}

#[derive(Serialize)]
struct Request<'a> {
    model: &'a str,
    input: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<usize>,
}

#[derive(Deserialize)]
struct Response {
    data: Vec<Datum>,
}

#[derive(Deserialize)]
struct Datum {
    index: usize,
    embedding: Vec<f64>,
}

/// Longest part of an error body kept in an error message.
const ERROR_BODY_CHARS: usize = 300;

/// Embeds texts through the configured endpoint.
#[derive(Debug, Clone)]
pub struct Embedder {
    settings: EmbeddingSettings,
    url: String,
    http: reqwest::Client,
}

impl Embedder {
    pub fn new(settings: EmbeddingSettings) -> Result<Self, EmbedError> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .build()
            .map_err(|e| EmbedError::Transport(e.to_string()))?;
        let url = format!("{}/embeddings", settings.base_url.trim_end_matches('/'));
        Ok(Self {
            settings,
            url,
            http,
        })
    }

    pub fn settings(&self) -> &EmbeddingSettings {
        &self.settings
    }

    /// One vector per text, in the order given: exactly `dimensions` finite numbers each.
    pub async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let body = Request {
            model: &self.settings.model,
            input: texts,
            dimensions: self
                .settings
                .send_dimensions
                .then_some(self.settings.dimensions),
        };
        let mut request = self.http.post(&self.url).json(&body);
        for (name, value) in bus::trace::current_headers() {
            request = request.header(name, value);
        }
        if let Some(key) = &self.settings.api_key {
            request = request.bearer_auth(key);
        }
        let response = request
            .send()
            .await
            .map_err(|e| EmbedError::Transport(without_url(e)))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(EmbedError::Status {
                status: status.as_u16(),
                body: text.chars().take(ERROR_BODY_CHARS).collect(),
            });
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| EmbedError::Transport(without_url(e)))?;
        let answer: Response =
            serde_json::from_slice(&bytes).map_err(|e| EmbedError::Invalid(e.to_string()))?;
        order_and_check(answer.data, texts.len(), self.settings.dimensions)
    }
}

/// reqwest's errors name the URL; the base URL is configuration, fine to log, but a key could
/// sit in a query string, so keep the error's kind and cause only.
fn without_url(error: reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_decode() || error.is_body() {
        "the answer could not be read"
    } else {
        "request failed"
    };
    match std::error::Error::source(&error) {
        Some(source) => format!("{kind}: {source}"),
        None => kind.to_string(),
    }
}

/// The vectors by `index`: one per input, each of `dimensions` finite numbers.
fn order_and_check(
    data: Vec<Datum>,
    inputs: usize,
    dimensions: usize,
) -> Result<Vec<Vec<f32>>, EmbedError> {
    if data.len() != inputs {
        return Err(EmbedError::Invalid(format!(
            "{} embeddings for {inputs} inputs",
            data.len()
        )));
    }
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; inputs];
    for datum in data {
        let slot = vectors.get_mut(datum.index).ok_or_else(|| {
            EmbedError::Invalid(format!(
                "index {} out of range for {inputs} inputs",
                datum.index
            ))
        })?;
        if slot.is_some() {
            return Err(EmbedError::Invalid(format!(
                "index {} answered twice",
                datum.index
            )));
        }
        if datum.embedding.len() != dimensions {
            return Err(EmbedError::Invalid(format!(
                "embedding {} has {} dimensions, not {dimensions}",
                datum.index,
                datum.embedding.len()
            )));
        }
        let vector: Vec<f32> = datum.embedding.iter().map(|&x| x as f32).collect();
        if vector.iter().any(|x| !x.is_finite()) {
            return Err(EmbedError::Invalid(format!(
                "embedding {} holds a number that is not finite as a 32-bit float",
                datum.index
            )));
        }
        if vector.iter().all(|&x| x == 0.0) {
            // A zero vector has no direction: cosine distance is undefined for it.
            return Err(EmbedError::Invalid(format!(
                "embedding {} is all zeros",
                datum.index
            )));
        }
        *slot = Some(vector);
    }
    // Every slot is filled: as many data as inputs, each index once and in range.
    Ok(vectors.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datum(index: usize, embedding: &[f64]) -> Datum {
        Datum {
            index,
            embedding: embedding.to_vec(),
        }
    }

    #[test]
    fn vectors_come_back_in_input_order() {
        let vectors =
            order_and_check(vec![datum(1, &[0.0, 1.0]), datum(0, &[1.0, 0.5])], 2, 2).unwrap();
        assert_eq!(vectors, vec![vec![1.0, 0.5], vec![0.0, 1.0]]);
    }

    #[test]
    fn a_wrong_answer_is_an_error_saying_what_is_wrong() {
        let cases = [
            (vec![datum(0, &[1.0, 0.0])], 2, "1 embeddings for 2 inputs"),
            (
                vec![datum(0, &[1.0, 0.0]), datum(0, &[1.0, 0.0])],
                2,
                "answered twice",
            ),
            (
                vec![datum(0, &[1.0, 0.0]), datum(2, &[1.0, 0.0])],
                2,
                "out of range",
            ),
            (vec![datum(0, &[1.0, 0.0, 3.0])], 1, "3 dimensions, not 2"),
            (vec![datum(0, &[1.0, 1e300])], 1, "not finite"),
            (vec![datum(0, &[0.0, 0.0])], 1, "all zeros"),
        ];
        for (data, inputs, expected) in cases {
            let error = order_and_check(data, inputs, 2).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn only_a_refusal_of_the_input_is_one() {
        let status = |status| EmbedError::Status {
            status,
            body: String::new(),
        };
        for refused in [400, 413, 422] {
            assert!(status(refused).refuses_input());
        }
        for other in [401, 403, 404, 408, 429, 500, 503] {
            assert!(!status(other).refuses_input(), "{other}");
        }
        assert!(!EmbedError::Transport("timed out".into()).refuses_input());
        assert!(!EmbedError::Invalid("3 dimensions".into()).refuses_input());
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let settings = EmbeddingSettings {
            base_url: "http://127.0.0.1:11434/v1".into(),
            model: "nomic-embed-text".into(),
            dimensions: 768,
            send_dimensions: true,
            batch_size: 32,
            timeout: Duration::from_secs(5),
            api_key: Some("sk-very-secret".into()),
        };
        let shown = format!("{settings:?}");
        assert!(
            !shown.contains("very-secret") && shown.contains("***"),
            "{shown}"
        );
    }

    #[test]
    fn the_request_is_the_openai_shape() {
        let input = vec!["a".to_string(), "b".to_string()];
        let body = serde_json::to_value(Request {
            model: "m",
            input: &input,
            dimensions: Some(8),
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"model": "m", "input": ["a", "b"], "dimensions": 8})
        );
        let body = serde_json::to_value(Request {
            model: "m",
            input: &input,
            dimensions: None,
        })
        .unwrap();
        assert_eq!(body, serde_json::json!({"model": "m", "input": ["a", "b"]}));
    }
}
