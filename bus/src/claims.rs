//! Durable command claims on JetStream (distributed mode). Each claim is one message on
//! `claims.<key>` in the `OPS_EXEC_CLAIMS` stream, which keeps the last message per subject. A
//! claim is published with `Nats-Expected-Last-Subject-Sequence: 0`, so exactly one publisher
//! per key succeeds, cluster-wide and across restarts; finishing replaces it with the outcome.
//! (This is how JetStream's key-value `create` works underneath; the KV API itself is not used
//! because async-nats's bucket creation does not parse nats-server 2.9's answers.)

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream;
use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::{BusError, Claim, Claims, JetStreamTransport};

/// The stream the executor's claims live in.
pub const CLAIMS_STREAM: &str = "OPS_EXEC_CLAIMS";
const SUBJECT_PREFIX: &str = "claims.";
/// Claims are kept this long: far beyond any redelivery of the command they guard.
const RETENTION: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

pub struct StreamClaims {
    context: async_nats::jetstream::Context,
    stream: stream::Stream,
}

impl StreamClaims {
    /// Open (creating it on first use) the claims stream on `transport`'s JetStream.
    pub async fn open(transport: &JetStreamTransport) -> Result<Self, BusError> {
        let context = transport.context().clone();
        let stream = context
            .get_or_create_stream(stream::Config {
                name: CLAIMS_STREAM.into(),
                description: Some("opscase: durable claims on commands with side effects".into()),
                subjects: vec![format!("{SUBJECT_PREFIX}>")],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                max_messages_per_subject: 1,
                max_age: RETENTION,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::Setup(format!("stream {CLAIMS_STREAM}: {e}")))?;
        Ok(Self { context, stream })
    }

    async fn put(&self, key: &str, record: Value, create: bool) -> Result<bool, BusError> {
        let mut message = PublishMessage::build().payload(Bytes::from(record.to_string()));
        if create {
            message = message.expected_last_subject_sequence(0);
        }
        let ack = self
            .context
            .send_publish(format!("{SUBJECT_PREFIX}{key}"), message)
            .await
            .map_err(|e| BusError::Unavailable(format!("claim {key}: {e}")))?;
        match ack.await {
            Ok(_) => Ok(true),
            Err(error) if create && error.kind() == PublishErrorKind::WrongLastSequence => {
                Ok(false)
            }
            Err(error) => Err(BusError::Unavailable(format!("claim {key}: {error}"))),
        }
    }

    async fn record(&self, key: &str) -> Result<Value, BusError> {
        let message = self
            .stream
            .get_last_raw_message_by_subject(&format!("{SUBJECT_PREFIX}{key}"))
            .await
            .map_err(|e| BusError::Unavailable(format!("read claim {key}: {e}")))?;
        serde_json::from_slice(&message.payload)
            .map_err(|e| BusError::Rejected(format!("claim {key} is not JSON: {e}")))
    }
}

#[async_trait]
impl Claims for StreamClaims {
    async fn claim(&self, key: &str, holder: &str) -> Result<Claim, BusError> {
        if self.put(key, json!({ "holder": holder }), true).await? {
            return Ok(Claim::Claimed);
        }
        let record = self.record(key).await?;
        Ok(match record.get("outcome") {
            Some(outcome) => Claim::Finished(outcome.clone()),
            None => Claim::Running {
                holder: record["holder"].as_str().unwrap_or_default().to_string(),
            },
        })
    }

    async fn finish(&self, key: &str, outcome: &Value) -> Result<(), BusError> {
        let holder = self.record(key).await?["holder"].clone();
        self.put(key, json!({ "holder": holder, "outcome": outcome }), false)
            .await
            .map(|_| ())
    }
}
