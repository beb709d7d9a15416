//! NATS JetStream transport: commands on a work-queue stream, events on a limits stream, both
//! on disk with a duplicate window keyed by `Nats-Msg-Id`.

use std::time::Duration;

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage, stream};
use async_trait::async_trait;
use futures::future::join_all;

use crate::{BusError, Delivery, Envelope, Transport};

pub const STREAM_COMMANDS: &str = "OPS_CMD";
pub const STREAM_EVENTS: &str = "OPS_EVT";

#[derive(Debug, Clone)]
pub struct JetStreamSettings {
    /// Messages with the same `Nats-Msg-Id` within this window are stored once.
    pub duplicate_window: Duration,
    /// How long events are kept (commands leave the work queue when acked).
    pub event_max_age: Duration,
    /// How long to wait for a PubAck before counting the publish as failed.
    pub ack_timeout: Duration,
}

impl Default for JetStreamSettings {
    fn default() -> Self {
        Self {
            duplicate_window: Duration::from_secs(120),
            event_max_age: Duration::from_secs(7 * 24 * 3600),
            ack_timeout: Duration::from_secs(5),
        }
    }
}

pub struct JetStreamTransport {
    client: async_nats::Client,
    context: jetstream::Context,
}

impl JetStreamTransport {
    /// Connect and create (or update) the streams.
    pub async fn connect(url: &str, settings: &JetStreamSettings) -> Result<Self, BusError> {
        let client = async_nats::ConnectOptions::new()
            .name("opscase")
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| BusError::Unavailable(format!("{url}: {e}")))?;
        let mut context = jetstream::new(client.clone());
        context.set_timeout(settings.ack_timeout);
        for config in stream_configs(settings) {
            let name = config.name.clone();
            context
                .create_or_update_stream(config)
                .await
                .map_err(|e| BusError::Setup(format!("stream {name}: {e}")))?;
        }
        Ok(Self { client, context })
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn context(&self) -> &jetstream::Context {
        &self.context
    }
}

fn stream_configs(settings: &JetStreamSettings) -> [stream::Config; 3] {
    [
        stream::Config {
            name: STREAM_COMMANDS.into(),
            subjects: vec!["cmd.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: settings.duplicate_window,
            ..Default::default()
        },
        stream::Config {
            name: STREAM_EVENTS.into(),
            subjects: vec!["evt.>".into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            duplicate_window: settings.duplicate_window,
            max_age: settings.event_max_age,
            ..Default::default()
        },
        stream::Config {
            name: crate::STREAM_DEAD_LETTERS.into(),
            subjects: vec!["dlq.>".into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            duplicate_window: settings.duplicate_window,
            ..Default::default()
        },
    ]
}

#[async_trait]
impl Transport for JetStreamTransport {
    async fn publish(&self, envelopes: &[Envelope]) -> Result<Vec<Delivery>, BusError> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(BusError::Unavailable("not connected to NATS".into()));
        }
        // Send them all, in order, then collect the acks: one round trip for the batch.
        let mut pending: Vec<Result<PublishAckFuture, String>> =
            Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            let mut headers = HeaderMap::new();
            headers.insert(NATS_MESSAGE_ID, envelope.id.to_string().as_str());
            headers.insert("Content-Type", "application/cloudevents+json");
            if let Some(traceparent) = &envelope.traceparent {
                headers.insert("traceparent", traceparent.as_str());
            }
            if let Some(tracestate) = &envelope.tracestate {
                headers.insert("tracestate", tracestate.as_str());
            }
            let message = PublishMessage::build()
                .headers(headers)
                .payload(envelope.to_json().into());
            let sent = self
                .context
                .send_publish(envelope.kind.clone(), message)
                .await;
            pending.push(sent.map_err(|e| e.to_string()));
        }
        let acks = join_all(pending.into_iter().map(|sent| async move {
            match sent {
                Ok(ack) => match ack.await {
                    Ok(ack) => Delivery::Acked {
                        duplicate: ack.duplicate,
                    },
                    Err(e) => Delivery::Failed(e.to_string()),
                },
                Err(e) => Delivery::Failed(e),
            }
        }))
        .await;
        Ok(acks)
    }

    async fn check(&self) -> Result<(), BusError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(BusError::Unavailable(format!(
                "NATS connection is {state:?}"
            ))),
        }
    }
}
