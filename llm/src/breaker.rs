//! The circuit breaker (pure: time is passed in). After `threshold` calls in a row fail, calls
//! are refused at once for `cooldown`; then one trial call is let through, and its outcome
//! closes the breaker or opens it again.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A trial call is out since then (one that is abandoned, its caller gone, is given up
    /// after a cooldown and another trial let through).
    HalfOpen {
        since: Instant,
    },
}

#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: State,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            state: State::Closed { failures: 0 },
        }
    }

    /// May a call go out now? `Err` holds how long until one may.
    pub fn admit(&mut self, now: Instant) -> Result<(), Duration> {
        match self.state {
            State::Closed { .. } => Ok(()),
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen { since: now };
                Ok(())
            }
            State::Open { until } => Err(until - now),
            State::HalfOpen { since } if now >= since + self.cooldown => {
                self.state = State::HalfOpen { since: now };
                Ok(())
            }
            // One trial at a time; the others wait for its outcome.
            State::HalfOpen { .. } => Err(Duration::ZERO),
        }
    }

    pub fn succeeded(&mut self) {
        self.state = State::Closed { failures: 0 };
    }

    pub fn failed(&mut self, now: Instant) {
        self.state = match self.state {
            State::Closed { failures } if failures + 1 < self.threshold => State::Closed {
                failures: failures + 1,
            },
            _ => State::Open {
                until: now + self.cooldown,
            },
        };
    }

    pub fn is_open(&self) -> bool {
        !matches!(self.state, State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_then_lets_one_trial_through_after_the_cooldown() {
        let start = Instant::now();
        let mut breaker = Breaker::new(3, Duration::from_secs(30));
        for _ in 0..2 {
            assert!(breaker.admit(start).is_ok());
            breaker.failed(start);
        }
        assert!(!breaker.is_open(), "two failures are under the threshold");
        breaker.failed(start);
        assert_eq!(breaker.admit(start), Err(Duration::from_secs(30)));
        let later = start + Duration::from_secs(31);
        assert!(breaker.admit(later).is_ok(), "the trial call");
        assert!(breaker.admit(later).is_err(), "only one trial at a time");
        breaker.failed(later);
        assert!(breaker.admit(later + Duration::from_secs(1)).is_err());
        let again = later + Duration::from_secs(31);
        assert!(breaker.admit(again).is_ok());
        breaker.succeeded();
        assert!(breaker.admit(again).is_ok());
        assert!(!breaker.is_open());
    }

    #[test]
    fn an_abandoned_trial_is_given_up_after_a_cooldown() {
        let start = Instant::now();
        let mut breaker = Breaker::new(1, Duration::from_secs(10));
        breaker.failed(start);
        let trial = start + Duration::from_secs(11);
        assert!(
            breaker.admit(trial).is_ok(),
            "the trial, whose caller then goes away"
        );
        assert!(breaker.admit(trial + Duration::from_secs(5)).is_err());
        assert!(
            breaker.admit(trial + Duration::from_secs(11)).is_ok(),
            "another trial"
        );
    }

    #[test]
    fn a_success_resets_the_count() {
        let now = Instant::now();
        let mut breaker = Breaker::new(2, Duration::from_secs(5));
        breaker.failed(now);
        breaker.succeeded();
        breaker.failed(now);
        assert!(breaker.admit(now).is_ok());
    }
}
