//! The Alertmanager side of the ingest load: groups of alerts and the version-4 webhook
//! deliveries Alertmanager would send for them.
//!
//! Alertmanager notifies per group (`group_by: [alertname, service]`, the sensor's default
//! grouping), and each notification carries the group's firing alerts. So every delivery here
//! is one group's, with 1 to `max_alerts` alerts, and each alert is one of:
//! - **open**: the first alert of a new group, alone in its delivery (it opens a case);
//! - **join**: a new alert (a new `instance`, so a new fingerprint) of an existing group;
//! - **repeat**: an alert of the group already taken, with the same `startsAt` and status, as
//!   Alertmanager resends it every `group_interval` (a duplicate: nothing is written).
//!
//! Opens are kept at `new_group_share` of the alerts sent so far; joins and repeats share the
//! rest about equally. Like Alertmanager, which sends a group's next notification only after
//! the previous one finished, a delivery goes to an existing group only when none of that
//! group's is in flight and the group's alerts were answered: so every alert's outcome
//! (opened / joined / duplicate) is known before it is sent and is checked in the answer.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// Alert names the groups cycle through (with `service`, the group).
const ALERT_NAMES: [&str; 6] = [
    "HighLatency",
    "HighErrorRate",
    "PodCrashLooping",
    "DiskFillingUp",
    "SaturatedCPU",
    "QueueBacklog",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Open,
    Join,
    Repeat,
}

impl Kind {
    /// What the sensor answers for an alert of this kind.
    pub fn expected_outcome(self) -> &'static str {
        match self {
            Kind::Open => "opened",
            Kind::Join => "joined",
            Kind::Repeat => "duplicate",
        }
    }
}

/// One alert as Alertmanager knows it.
#[derive(Debug, Clone)]
pub struct Alert {
    pub instance: String,
    pub fingerprint: String,
    pub starts_at: DateTime<Utc>,
}

/// A group of alerts: `alertname` + `service`, its alerts the service has taken, and whether a
/// delivery of it is in flight.
#[derive(Debug)]
pub struct Group {
    pub alertname: &'static str,
    pub service: String,
    /// Alerts of answered deliveries: the ones a later delivery may repeat.
    pub taken: Vec<Alert>,
    /// Alerts made for the group so far (taken or not), to name new ones.
    pub made: u32,
    pub in_flight: bool,
    /// At least one delivery of the group was answered 200.
    pub answered: bool,
}

/// One planned delivery: which group, and each alert with its kind.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub group: usize,
    /// `Some` when this delivery opens a new group.
    pub new_group: Option<(&'static str, String)>,
    pub alerts: Vec<(Kind, Alert)>,
}

/// The load's state: the groups, and how many alerts of each kind were sent.
pub struct Workload {
    pub groups: Vec<Group>,
    pub sent: [u64; 3],
    new_group_share: f64,
    max_alerts: usize,
    rng: SplitMix64,
    started: DateTime<Utc>,
}

impl Workload {
    pub fn new(new_group_share: f64, max_alerts: usize, seed: u64) -> Self {
        Self {
            groups: Vec::new(),
            sent: [0; 3],
            new_group_share,
            max_alerts,
            rng: SplitMix64(seed),
            started: Utc::now(),
        }
    }

    pub fn alerts_sent(&self) -> u64 {
        self.sent.iter().sum()
    }

    /// The next delivery, without changing the state (a delivery that cannot be sent, late,
    /// is dropped); [`Workload::commit`] records one that is sent.
    pub fn plan(&mut self) -> Delivery {
        let alerts = self.alerts_sent();
        let opens_due =
            (self.sent[Kind::Open as usize] as f64) < self.new_group_share * (alerts + 1) as f64;
        let existing = if opens_due { None } else { self.idle_group() };
        let Some(group) = existing else {
            return self.new_group_delivery();
        };
        let size = 1 + (self.rng.next() % self.max_alerts as u64) as usize;
        let (mut repeats, mut joins) = (
            self.sent[Kind::Repeat as usize],
            self.sent[Kind::Join as usize],
        );
        let mut candidates: Vec<usize> = (0..self.groups[group].taken.len()).collect();
        let mut made = self.groups[group].made;
        let mut planned = Vec::with_capacity(size);
        for _ in 0..size {
            if repeats <= joins && !candidates.is_empty() {
                let pick =
                    candidates.swap_remove((self.rng.next() % candidates.len() as u64) as usize);
                planned.push((Kind::Repeat, self.groups[group].taken[pick].clone()));
                repeats += 1;
            } else {
                planned.push((Kind::Join, self.alert(group, made)));
                made += 1;
                joins += 1;
            }
        }
        Delivery {
            group,
            new_group: None,
            alerts: planned,
        }
    }

    /// Record a delivery as sent: its group is in flight, its alerts counted.
    pub fn commit(&mut self, delivery: &Delivery) {
        if let Some((alertname, service)) = &delivery.new_group {
            self.groups.push(Group {
                alertname,
                service: service.clone(),
                taken: Vec::new(),
                made: 0,
                in_flight: false,
                answered: false,
            });
        }
        let group = &mut self.groups[delivery.group];
        group.in_flight = true;
        for (kind, _) in &delivery.alerts {
            self.sent[*kind as usize] += 1;
            if *kind != Kind::Repeat {
                group.made += 1;
            }
        }
    }

    /// The delivery was answered (`ok`: 200) or failed: the group may be sent to again, and
    /// on success its new alerts may be repeated.
    pub fn finish(&mut self, delivery: &Delivery, ok: bool) {
        let group = &mut self.groups[delivery.group];
        group.in_flight = false;
        if ok {
            group.answered = true;
            for (kind, alert) in &delivery.alerts {
                if *kind != Kind::Repeat {
                    group.taken.push(alert.clone());
                }
            }
        }
    }

    /// A random group that has taken alerts and has no delivery in flight (a few tries; at
    /// the very start there is none).
    fn idle_group(&mut self) -> Option<usize> {
        if self.groups.is_empty() {
            return None;
        }
        for _ in 0..16 {
            let index = (self.rng.next() % self.groups.len() as u64) as usize;
            let group = &self.groups[index];
            if !group.in_flight && !group.taken.is_empty() {
                return Some(index);
            }
        }
        None
    }

    fn new_group_delivery(&mut self) -> Delivery {
        let index = self.groups.len();
        let alertname = ALERT_NAMES[index % ALERT_NAMES.len()];
        let service = format!("svc-{index:05}");
        // The alert is named from the group's index and number, as `alert` does.
        let instance = format!("{service}-0:9090");
        let alert = Alert {
            fingerprint: fingerprint(alertname, &service, &instance),
            instance,
            starts_at: self.started,
        };
        Delivery {
            group: index,
            new_group: Some((alertname, service)),
            alerts: vec![(Kind::Open, alert)],
        }
    }

    /// The `number`th alert of `group`.
    fn alert(&self, group: usize, number: u32) -> Alert {
        let group = &self.groups[group];
        let instance = format!("{}-{number}:9090", group.service);
        Alert {
            fingerprint: fingerprint(group.alertname, &group.service, &instance),
            instance,
            // Alerts of a group start at different times, as they would.
            starts_at: self.started + chrono::Duration::seconds(i64::from(number)),
        }
    }

    /// The webhook body Alertmanager (version 4) sends for `delivery`.
    pub fn payload(&self, delivery: &Delivery) -> Value {
        let (alertname, service) = match &delivery.new_group {
            Some((alertname, service)) => (*alertname, service.as_str()),
            None => {
                let group = &self.groups[delivery.group];
                (group.alertname, group.service.as_str())
            }
        };
        let alerts: Vec<Value> = delivery
            .alerts
            .iter()
            .map(|(_, alert)| {
                json!({
                    "status": "firing",
                    "labels": {
                        "alertname": alertname,
                        "service": service,
                        "instance": alert.instance,
                        "job": "node",
                        "severity": "warning",
                    },
                    "annotations": {
                        "summary": format!("{alertname} on {service}"),
                        "description": format!("{alertname} on {service} ({}) for 5 minutes", alert.instance),
                        "runbook_url": format!("https://runbooks.example/{alertname}"),
                    },
                    "startsAt": alert.starts_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": format!("http://prometheus.example:9090/graph?g0.expr=up%7Bservice%3D%22{service}%22%7D"),
                    "fingerprint": alert.fingerprint,
                })
            })
            .collect();
        json!({
            "version": "4",
            "receiver": "opscase",
            "status": "firing",
            "groupKey": format!("{{}}:{{alertname=\"{alertname}\", service=\"{service}\"}}"),
            "truncatedAlerts": 0,
            "groupLabels": {"alertname": alertname, "service": service},
            "commonLabels": {"alertname": alertname, "service": service, "job": "node", "severity": "warning"},
            "commonAnnotations": {"runbook_url": format!("https://runbooks.example/{alertname}")},
            "externalURL": "http://alertmanager.example:9093",
            "alerts": alerts,
        })
    }
}

/// Alertmanager's fingerprint is a 64-bit hash of the label set, in hex; FNV-1a over the
/// sorted labels serves the same purpose here.
fn fingerprint(alertname: &str, service: &str, instance: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [
        "alertname",
        alertname,
        "instance",
        instance,
        "job",
        "node",
        "service",
        service,
        "severity",
        "warning",
    ] {
        for byte in part.bytes().chain([0xff]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// A small deterministic generator (SplitMix64): the same seed makes the same load.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}
