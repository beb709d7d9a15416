//! The Sensor: alerts and events from the monitoring systems people already run come in,
//! are deduplicated, and open a case or join the open one; every case can point at the logs,
//! metrics and traces that justify it.
//!
//! * Pure: [`intake`] reads Alertmanager, Grafana and PagerDuty Events v2 payloads into
//!   [`Signal`]s; [`route`] decides the group a signal belongs to; [`correlate`] whether it
//!   joins its group's case, opens one, resolves or cancels it; [`evidence`] checks evidence
//!   and builds its links.
//! * Tables ([`store`]): `event_envelope`, `signal_group`, `evidence_link`, `oo_locator`,
//!   written in the transaction of the case change they belong to.
//! * Runtime ([`ingest::Sensor`]): the signal → case path, which the analyst's anomalies take
//!   too.

pub mod correlate;
pub mod evidence;
pub mod ingest;
pub mod intake;
pub mod logs;
pub mod metrics;
pub mod outputs;
pub mod route;
pub mod signal;
pub mod store;

pub use evidence::{LinkSettings, NewEvidence};
pub use ingest::{Caller, IngestError, Sensor, SensorSettings, SignalOutcome};
pub use intake::{IntakeError, Limits};
pub use route::{OnResolved, Route, RouteConfig, Routes};
pub use signal::{Reference, Signal, Source, Status};
pub use store::{Envelope, Evidence, Locator, LogSystem, SensorStore};
