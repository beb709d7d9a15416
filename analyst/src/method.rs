//! The detection methods with their resolved parameters, and one step of a method over one
//! bucket of one series.

use std::collections::VecDeque;
use std::f64::consts::{LN_10, SQRT_2};

use serde::{Deserialize, Serialize};

use crate::calibrate::Calibrator;
use crate::components::{Direction, Estimate, EwmaState, RobustState, SeasonalState};
use crate::span::Span;

/// The default detector's parameters (see [`Ensemble`] for what it does).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ensemble {
    /// Rolling window of the robust component.
    pub window: Span,
    /// Smoothing of the EWMA component.
    pub alpha: f64,
    /// Seasons each seasonal slot remembers.
    pub seasons: u32,
    /// How long calibration remembers deviations.
    pub memory: Span,
    /// Buckets whose median surprise is the collective evidence.
    pub collective: u32,
    /// The verdict's threshold on the surprise (-log10 of the combined p-value).
    pub surprise: f64,
}

impl Default for Ensemble {
    fn default() -> Self {
        Self {
            window: Span::Buckets(240),
            alpha: 0.05,
            seasons: 3,
            memory: Span::Buckets(2_000),
            collective: 10,
            surprise: 3.0,
        }
    }
}

/// A detection method and its parameters, every default filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Method {
    /// The default: robust z, EWMA and seasonal components, calibrated and combined.
    Default(Ensemble),
    /// A static bound (with `for`, as a Prometheus rule).
    Threshold {
        above: Option<f64>,
        below: Option<f64>,
    },
    /// Robust z-score against the rolling median / MAD.
    RobustZ { window: Span, threshold: f64 },
    /// EWMA band: exponentially weighted mean ± threshold standard deviations.
    Ewma { alpha: f64, threshold: f64 },
    /// The same slot of the day (or week) in earlier seasons.
    Seasonal {
        period: Span,
        seasons: u32,
        threshold: f64,
    },
}

impl Method {
    pub fn kind(&self) -> &'static str {
        match self {
            Method::Default(_) => "default",
            Method::Threshold { .. } => "threshold",
            Method::RobustZ { .. } => "robust_z",
            Method::Ewma { .. } => "ewma",
            Method::Seasonal { .. } => "seasonal",
        }
    }
}

/// What a method read in one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Reading {
    /// Enough history to judge (false during warm-up, when nothing is anomalous).
    pub ready: bool,
    /// What the method expected.
    pub baseline: f64,
    /// The band of values it would not call anomalous (infinite on an open side; NaN when
    /// not ready).
    pub lower: f64,
    pub upper: f64,
    /// How far out the value is, in the method's unit, counted in the rule's direction:
    /// standard deviations (robust_z, ewma, seasonal), relative excess over the bound
    /// (threshold), or the surprise, -log10 of a p-value (default).
    pub deviation: f64,
    /// In [0, 1]; 0.5 and more is anomalous. Monotone in `deviation`.
    pub score: f64,
    pub anomalous: bool,
    /// What gave the evidence: the method's name, or for the default detector the
    /// component or channel (`robust_z`, `ewma`, `seasonal_day`, `seasonal_week`,
    /// `collective`).
    pub component: &'static str,
}

impl Reading {
    pub(crate) fn warming(baseline: f64) -> Self {
        Reading {
            ready: false,
            baseline,
            lower: f64::NAN,
            upper: f64::NAN,
            deviation: 0.0,
            score: 0.0,
            anomalous: false,
            component: "",
        }
    }
}

/// `r / (1 + r)` of the deviation over the threshold: 0.5 at the threshold, below 1 however
/// far out, so that scores keep their order instead of piling up at 1.
pub fn score_of(deviation: f64, threshold: f64) -> f64 {
    let r = (deviation / threshold).max(0.0);
    if r.is_finite() {
        r / (1.0 + r)
    } else {
        1.0
    }
}

/// A method's memory of one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MethodState {
    Default(Box<EnsembleState>),
    Threshold,
    RobustZ(RobustState),
    Ewma(EwmaState),
    Seasonal(SeasonalState),
}

fn buckets(span: Span, interval_s: Option<i64>) -> usize {
    span.buckets(interval_s).max(1) as usize
}

impl MethodState {
    pub fn new(method: &Method) -> Self {
        match method {
            Method::Default(e) => MethodState::Default(Box::new(EnsembleState::new(e))),
            Method::Threshold { .. } => MethodState::Threshold,
            Method::RobustZ { window, .. } => {
                MethodState::RobustZ(RobustState::new(buckets(*window, None)))
            }
            Method::Ewma { .. } => MethodState::Ewma(EwmaState::default()),
            Method::Seasonal { .. } => MethodState::Seasonal(SeasonalState::default()),
        }
    }

    /// Whether this state belongs to `method`'s kind (a rule that changed kind starts over).
    pub fn fits(&self, method: &Method) -> bool {
        matches!(
            (self, method),
            (MethodState::Default(_), Method::Default(_))
                | (MethodState::Threshold, Method::Threshold { .. })
                | (MethodState::RobustZ(_), Method::RobustZ { .. })
                | (MethodState::Ewma(_), Method::Ewma { .. })
                | (MethodState::Seasonal(_), Method::Seasonal { .. })
        )
    }

    /// Scores `value` at `at` (seconds) against the past, then learns it. `warm`: the
    /// series has enough history for a verdict.
    pub fn step(
        &mut self,
        method: &Method,
        direction: Direction,
        interval_s: Option<i64>,
        warm: bool,
        at: i64,
        value: f64,
    ) -> Reading {
        match (self, method) {
            (MethodState::Threshold, Method::Threshold { above, below }) => {
                threshold_reading(*above, *below, value)
            }
            (MethodState::RobustZ(state), Method::RobustZ { window, threshold }) => {
                let estimate = state.estimate();
                state.learn(value, buckets(*window, interval_s));
                z_reading(estimate, direction, *threshold, value, warm, "robust_z")
            }
            (MethodState::Ewma(state), Method::Ewma { alpha, threshold }) => {
                let estimate = state.estimate();
                state.learn(value, *alpha);
                z_reading(estimate, direction, *threshold, value, warm, "ewma")
            }
            (
                MethodState::Seasonal(state),
                Method::Seasonal {
                    period,
                    seasons,
                    threshold,
                },
            ) => {
                let interval = interval_s.unwrap_or(60);
                let period_s = period.seconds(interval_s) as i64;
                let estimate = state.estimate(at, period_s, interval, *seasons as usize);
                state.learn(at, value, estimate);
                z_reading(estimate, direction, *threshold, value, warm, "seasonal")
            }
            (MethodState::Default(state), Method::Default(e)) => {
                state.step(e, direction, interval_s, warm, at, value)
            }
            _ => Reading::warming(value),
        }
    }
}

fn threshold_reading(above: Option<f64>, below: Option<f64>, value: f64) -> Reading {
    // How far past the bound, relative to the bound's size (positive: beyond it).
    let relative = |excess: f64, bound: f64| excess / bound.abs().max(1e-9);
    let up = above.map(|b| relative(value - b, b));
    let down = below.map(|b| relative(b - value, b));
    let deviation = match (up, down) {
        (Some(u), Some(d)) => u.max(d),
        (Some(u), None) => u,
        (None, Some(d)) => d,
        (None, None) => f64::NEG_INFINITY,
    };
    let anomalous = above.is_some_and(|b| value > b) || below.is_some_and(|b| value < b);
    // A logistic of the relative excess: 0.5 on the bound, 0.73 at 10% past it.
    let score = if deviation.is_finite() {
        1.0 / (1.0 + (-10.0 * deviation).exp())
    } else {
        0.0
    };
    Reading {
        ready: true,
        baseline: match (above, below) {
            (Some(a), Some(b)) => (a + b) / 2.0,
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => f64::NAN,
        },
        lower: below.unwrap_or(f64::NEG_INFINITY),
        upper: above.unwrap_or(f64::INFINITY),
        deviation,
        score,
        anomalous,
        component: "threshold",
    }
}

fn z_reading(
    estimate: Option<Estimate>,
    direction: Direction,
    threshold: f64,
    value: f64,
    warm: bool,
    component: &'static str,
) -> Reading {
    let Some(e) = estimate.filter(|_| warm) else {
        return Reading::warming(estimate.map_or(value, |e| e.baseline));
    };
    let deviation = direction.of(e.z(value));
    let (lower, upper) = band(e, threshold, direction);
    Reading {
        ready: true,
        baseline: e.baseline,
        lower,
        upper,
        deviation,
        score: score_of(deviation, threshold),
        anomalous: deviation > threshold,
        component,
    }
}

fn band(e: Estimate, z: f64, direction: Direction) -> (f64, f64) {
    let lower = e.baseline - z * e.scale;
    let upper = e.baseline + z * e.scale;
    match direction {
        Direction::Both => (lower, upper),
        Direction::Above => (f64::NEG_INFINITY, upper),
        Direction::Below => (lower, f64::INFINITY),
    }
}

// ---------------------------------------------------------------------------------------
// The default detector.

/// Components of the default detector, in the order of its arrays.
pub const COMPONENTS: [&str; 4] = ["robust_z", "ewma", "seasonal_day", "seasonal_week"];

const DAY: i64 = 86_400;
const WEEK: i64 = 7 * DAY;
/// A channel votes once its calibrator has this many deviations.
const WARMUP: f64 = 100.0;
/// Horizon (buckets) of the average log-likelihood that picks the best predictor.
const FIT_HORIZON: f64 = 200.0;

/// The default detector's memory of one series.
///
/// Four predictors run side by side: the robust component (rolling median and MAD over
/// `window`), the EWMA band (`alpha`), and seasonal baselines for the same slot of the day
/// and of the week (from two seasons of history on). Three channels of evidence come out:
///
/// * **any**: each component's deviation, calibrated against that component's own history
///   on this series ([`Calibrator`]); the smallest p-value times the number of components
///   voting (Bonferroni).
/// * **model**: the component that predicted this series best recently (highest average
///   Laplace log-likelihood over 200 buckets) gives its Laplace tail probability, whose
///   -log10 is calibrated in turn.
/// * **collective**: the median surprise of the last `collective` buckets, calibrated: a
///   run of moderately unusual buckets, which no single bucket shows.
///
/// The surprise is the largest of the channels' -log10 p-values, less log10 of the number of
/// channels (Bonferroni again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnsembleState {
    robust: RobustState,
    ewma: EwmaState,
    day: SeasonalState,
    week: SeasonalState,
    calibrators: [Calibrator; 4],
    fit: [Option<(f64, f64)>; 4],
    model: Calibrator,
    recent: VecDeque<f64>,
    collective: Calibrator,
}

/// The tail probability of a Laplace deviation `z` (in standard deviations) in `direction`.
fn laplace_tail(z: f64, direction: Direction) -> f64 {
    match direction {
        Direction::Both => (-SQRT_2 * z.abs()).exp(),
        Direction::Above if z > 0.0 => 0.5 * (-SQRT_2 * z).exp(),
        Direction::Above => 1.0 - 0.5 * (SQRT_2 * z).exp(),
        Direction::Below => laplace_tail(-z, Direction::Above),
    }
}

/// The deviation in standard deviations whose Laplace tail is `10^-surprise`.
fn laplace_deviation(surprise: f64, direction: Direction) -> f64 {
    let one_sided = if direction == Direction::Both {
        0.0
    } else {
        2f64.log10()
    };
    ((surprise - one_sided).max(0.0) * LN_10 / SQRT_2).max(0.0)
}

impl EnsembleState {
    fn new(e: &Ensemble) -> Self {
        Self {
            robust: RobustState::new(buckets(e.window, None)),
            ewma: EwmaState::default(),
            day: SeasonalState::default(),
            week: SeasonalState::default(),
            calibrators: std::array::from_fn(|_| Calibrator::with_prior()),
            fit: [None; 4],
            model: Calibrator::with_prior(),
            recent: VecDeque::new(),
            collective: Calibrator::default(),
        }
    }

    fn step(
        &mut self,
        e: &Ensemble,
        direction: Direction,
        interval_s: Option<i64>,
        warm: bool,
        at: i64,
        value: f64,
    ) -> Reading {
        let interval = interval_s.unwrap_or(60);
        let seasons = e.seasons as usize;
        let estimates: [Option<Estimate>; 4] = [
            self.robust.estimate(),
            self.ewma.estimate(),
            (interval < DAY / 8)
                .then(|| self.day.estimate(at, DAY, interval, seasons))
                .flatten(),
            (interval < WEEK / 8)
                .then(|| self.week.estimate(at, WEEK, interval, seasons))
                .flatten(),
        ];
        let decay = 1.0 - 1.0 / buckets(e.memory, interval_s) as f64;

        // Channel "any": each component calibrated on its own history.
        let mut any: Option<(usize, f64)> = None;
        let mut voting = 0;
        for (i, estimate) in estimates.iter().enumerate() {
            let Some(est) = estimate else { continue };
            let d = direction.of(est.z(value));
            let calibrator = &mut self.calibrators[i];
            if calibrator.total() >= WARMUP {
                voting += 1;
                let p = calibrator.p_value(d);
                if any.is_none_or(|(_, best)| p < best) {
                    any = Some((i, p));
                }
            }
            calibrator.record(d, decay);
        }
        let any = any.map(|(i, p)| (i, -(p * f64::from(voting)).min(1.0).log10()));

        // Channel "model": the best recent predictor's Laplace tail, calibrated.
        for (fit, estimate) in self.fit.iter_mut().zip(&estimates) {
            if estimate.is_none() {
                *fit = None;
            }
        }
        let chosen = (0..4)
            .filter_map(|i| self.fit[i].filter(|f| f.1 >= 1.0).map(|f| (i, f.0)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i);
        for (fit, estimate) in self.fit.iter_mut().zip(&estimates) {
            if let Some(est) = estimate {
                let b = est.scale / SQRT_2;
                let log_likelihood = -(2.0 * b).ln() - ((value - est.baseline).abs() / b).min(1e6);
                let (mean, n) = fit.unwrap_or((0.0, 0.0));
                let n = (n + 1.0).min(FIT_HORIZON);
                *fit = Some((mean + (log_likelihood - mean) / n, n));
            }
        }
        // The channels that will vote, known before anything is learnt.
        let model_ready = chosen.is_some() && self.model.total() >= WARMUP;
        let collective_ready = e.collective > 0 && self.collective.total() >= WARMUP;
        let channels =
            f64::from(u8::from(model_ready) + u8::from(voting > 0) + u8::from(collective_ready));
        // The band: where the chosen predictor's evidence alone would reach the threshold
        // (read before this bucket is learnt).
        let band_z = model_ready.then(|| {
            let needed = self
                .model
                .deviation_at(10f64.powf(-(e.surprise + channels.log10())));
            laplace_deviation(needed, direction)
        });
        let model = chosen.and_then(|i| {
            let est = estimates[i].expect("a chosen component has an estimate");
            let raw = -laplace_tail(est.z(value), direction)
                .clamp(1e-300, 1.0)
                .log10();
            let p = self.model.p_value(raw);
            self.model.record(raw, decay);
            model_ready.then(|| (i, -p.log10()))
        });

        // Learn the value.
        self.robust.learn(value, buckets(e.window, interval_s));
        self.ewma.learn(value, e.alpha);
        self.day.learn(at, value, estimates[2]);
        self.week.learn(at, value, estimates[3]);

        let (mut component, mut surprise) = match (model, any) {
            (Some(m), Some(a)) if a.1 > m.1 => (COMPONENTS[a.0], a.1),
            (Some(m), _) => (COMPONENTS[m.0], m.1),
            (None, Some(a)) => (COMPONENTS[a.0], a.1),
            (None, None) => return Reading::warming(estimates[0].map_or(value, |e| e.baseline)),
        };

        // Channel "collective": the median surprise of the last buckets, calibrated.
        if e.collective > 0 {
            self.recent.push_back(surprise);
            while self.recent.len() > e.collective as usize {
                self.recent.pop_front();
            }
            let mut recent: Vec<f64> = self.recent.iter().copied().collect();
            let median = crate::stats::median(&mut recent);
            let p = self.collective.p_value(median);
            self.collective.record(median, decay);
            if collective_ready {
                let collective = -p.log10();
                if collective > surprise {
                    component = "collective";
                    surprise = collective;
                }
            }
        }
        let surprise = (surprise - channels.log10()).max(0.0);

        let shown = chosen.or(any.map(|a| a.0)).unwrap_or(0);
        let Some(est) = estimates[shown].filter(|_| warm) else {
            return Reading::warming(estimates[shown].map_or(value, |e| e.baseline));
        };
        let (lower, upper) = band(est, band_z.unwrap_or(f64::INFINITY), direction);
        Reading {
            ready: true,
            baseline: est.baseline,
            lower,
            upper,
            deviation: surprise,
            score: score_of(surprise, e.surprise),
            anomalous: surprise > e.surprise,
            component,
        }
    }
}
