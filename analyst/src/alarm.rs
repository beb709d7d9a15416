//! Against flapping: N anomalous buckets out of M to fire (and a Prometheus-style `for`), a
//! clean window to recover (hysteresis), and a cooldown between two alarms of a series.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::span::Span;

/// The alarm parameters, resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmParams {
    pub fire_after: u32,
    pub out_of: u32,
    #[serde(rename = "for")]
    pub for_: Span,
    pub clear_after: Span,
    pub cooldown: Span,
}

/// What the alarm did at a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    /// The alarm fired: the live path raises a finding.
    Fired,
    /// The condition held but the series is in its cooldown after the last alarm.
    Suppressed,
    /// A clean window after an alarm: the alarm is over.
    Recovered,
}

/// The alarm's memory of one series.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlarmState {
    /// Anomalous flags of the last `out_of` buckets, newest last, with their timestamps.
    recent: VecDeque<(i64, bool)>,
    /// Since when the N-of-M condition has held without a break (for `for`).
    holding_since: Option<i64>,
    /// Since when the current alarm is firing.
    firing_since: Option<i64>,
    /// Clean buckets in a row while firing.
    clean: u32,
    last_fired: Option<i64>,
}

impl AlarmState {
    /// Forgets the pending evidence (after a gap the old buckets say nothing about now).
    pub fn forget_pending(&mut self) {
        self.recent.clear();
        self.holding_since = None;
    }

    pub fn firing_since(&self) -> Option<i64> {
        self.firing_since
    }

    pub fn last_fired(&self) -> Option<i64> {
        self.last_fired
    }

    /// The first anomalous bucket among the last M (the start of the evidence).
    pub fn evidence_start(&self) -> Option<i64> {
        self.recent.iter().find(|(_, a)| *a).map(|(t, _)| *t)
    }

    /// Whether an alarm is firing or cooling down at `at`: a new alarm cannot fire.
    pub fn quiet(&self, params: &AlarmParams, interval_s: Option<i64>, at: i64) -> bool {
        self.firing_since.is_some() || self.cooling(params, interval_s, at)
    }

    fn cooling(&self, params: &AlarmParams, interval_s: Option<i64>, at: i64) -> bool {
        self.last_fired.is_some_and(|fired| {
            // A cooldown in buckets is counted in the series' interval.
            let cooldown = params.cooldown.seconds(interval_s) as i64;
            at - fired < cooldown
        })
    }

    /// Takes one bucket's verdict.
    pub fn step(
        &mut self,
        params: &AlarmParams,
        interval_s: Option<i64>,
        at: i64,
        anomalous: bool,
    ) -> Option<Transition> {
        let m = params.out_of.max(1) as usize;
        self.recent.push_back((at, anomalous));
        while self.recent.len() > m {
            self.recent.pop_front();
        }
        let count = self.recent.iter().filter(|(_, a)| *a).count() as u32;
        let holds = anomalous && count >= params.fire_after.max(1);
        if holds {
            self.holding_since.get_or_insert(at);
        } else {
            self.holding_since = None;
        }

        if self.firing_since.is_some() {
            self.clean = if anomalous { 0 } else { self.clean + 1 };
            let needed = params.clear_after.buckets(interval_s).max(1);
            if self.clean >= needed {
                self.firing_since = None;
                self.clean = 0;
                return Some(Transition::Recovered);
            }
            return None;
        }

        let since = self.holding_since?;
        let for_s = params.for_.seconds(interval_s) as i64;
        if params.for_.is_zero() || at - since >= for_s {
            if self.cooling(params, interval_s, at) {
                return Some(Transition::Suppressed);
            }
            self.firing_since = Some(at);
            self.last_fired = Some(at);
            self.clean = 0;
            return Some(Transition::Fired);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(n: u32, m: u32) -> AlarmParams {
        AlarmParams {
            fire_after: n,
            out_of: m,
            for_: Span::Buckets(0),
            clear_after: Span::Buckets(3),
            cooldown: Span::Buckets(10),
        }
    }

    fn run(p: &AlarmParams, flags: &[bool]) -> Vec<Option<Transition>> {
        let mut s = AlarmState::default();
        flags
            .iter()
            .enumerate()
            .map(|(i, a)| s.step(p, Some(60), i as i64 * 60, *a))
            .collect()
    }

    #[test]
    fn fires_after_n_of_m_and_recovers_after_a_clean_window() {
        let p = params(2, 3);
        let t = run(&p, &[true, false, true, true, false, false, false]);
        assert_eq!(t[0], None);
        assert_eq!(t[2], Some(Transition::Fired));
        assert_eq!(t[3], None);
        assert_eq!(t[6], Some(Transition::Recovered));
    }

    #[test]
    fn for_needs_the_condition_to_hold_that_long() {
        let mut p = params(1, 1);
        p.for_ = Span::Seconds(120);
        let t = run(&p, &[true, true, false, true, true, true]);
        assert_eq!(t[..5], [None, None, None, None, None]);
        assert_eq!(t[5], Some(Transition::Fired));
    }

    #[test]
    fn cooldown_suppresses_a_second_alarm() {
        let p = params(1, 1);
        let t = run(
            &p,
            &[
                true, false, false, false, true, false, false, false, false, false, false, true,
            ],
        );
        assert_eq!(t[0], Some(Transition::Fired));
        assert_eq!(t[3], Some(Transition::Recovered));
        assert_eq!(t[4], Some(Transition::Suppressed));
        assert_eq!(t[11], Some(Transition::Fired));
    }
}
