//! Each detector on synthetic series with known answers, the alarm against flapping, and
//! the streaming guarantees (a score never depends on later rows; a restored state goes on
//! exactly as an uninterrupted one).

use analyst::{
    detector_from_args, score_csv, Detector, Evaluation, SeriesKey, SeriesState, Stat, Transition,
};
use chrono::{DateTime, TimeZone, Utc};

const START: i64 = 1_700_000_000 - 1_700_000_000 % 86_400; // a midnight
const MINUTE: i64 = 60;

/// A deterministic pseudo-random stream (xorshift), standard normal by Box-Muller.
struct Noise(u64);

impl Noise {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn at(i: i64, step: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(START + i * step, 0).unwrap()
}

fn detector(kind: &str, params: &[&str]) -> Detector {
    let params: Vec<String> = params.iter().map(|p| p.to_string()).collect();
    detector_from_args(Some(kind), &params).unwrap()
}

/// Runs a series through a detector; returns every evaluation.
fn run(d: &Detector, points: &[(i64, f64)], step: i64) -> Vec<Evaluation> {
    let mut state = SeriesState::new(d);
    points
        .iter()
        .map(|&(i, v)| state.observe(d, at(i, step), v))
        .collect()
}

fn fired(evaluations: &[Evaluation]) -> Vec<i64> {
    evaluations
        .iter()
        .filter(|e| e.fired())
        .map(|e| (e.at.timestamp() - START) / (e.interval_s.unwrap_or(60)))
        .collect()
}

/// Noise around 100 (sd 2), `n` buckets.
fn noisy(n: i64, seed: u64) -> Vec<(i64, f64)> {
    let mut noise = Noise(seed);
    (0..n).map(|i| (i, 100.0 + 2.0 * noise.normal())).collect()
}

/// A daily pattern (five-minute buckets): low at night, high by day, plus noise.
fn daily(days: i64, seed: u64) -> Vec<(i64, f64)> {
    let mut noise = Noise(seed);
    (0..days * 288)
        .map(|i| {
            let hour = (i % 288) as f64 / 12.0;
            let level = if (8.0..20.0).contains(&hour) {
                80.0
            } else {
                20.0
            };
            (i, level + noise.normal())
        })
        .collect()
}

/// Every detector that learns its baseline (the threshold one is given a bound instead).
fn adaptive() -> Vec<(&'static str, Detector)> {
    vec![
        ("default", detector("default", &[])),
        ("robust_z", detector("robust_z", &[])),
        ("ewma", detector("ewma", &[])),
    ]
}

#[test]
fn a_noisy_series_without_anomaly_raises_no_finding() {
    for (name, d) in adaptive() {
        let evaluations = run(&d, &noisy(5_000, 7), MINUTE);
        assert_eq!(fired(&evaluations), Vec::<i64>::new(), "{name}");
    }
    let d = detector("seasonal", &[]);
    assert_eq!(
        fired(&run(&d, &daily(6, 7), 300)),
        Vec::<i64>::new(),
        "seasonal"
    );
    let d = detector("default", &[]);
    assert_eq!(
        fired(&run(&d, &daily(6, 7), 300)),
        Vec::<i64>::new(),
        "default, daily"
    );
}

#[test]
fn a_spike_fires_at_the_spike() {
    for (name, d) in adaptive() {
        let mut points = noisy(3_000, 11);
        points[2_500].1 += 60.0;
        assert_eq!(fired(&run(&d, &points, MINUTE)), vec![2_500], "{name}");
    }
    let d = detector("seasonal", &[]);
    let mut points = daily(5, 11);
    points[4 * 288 + 30].1 += 40.0; // 02:30 on day five: a daytime level at night
    assert_eq!(
        fired(&run(&d, &points, 300)),
        vec![4 * 288 + 30],
        "seasonal"
    );
    let d = detector("threshold", &["above=150"]);
    assert_eq!(
        fired(&run(&d, &noisy(3_000, 11), MINUTE)),
        Vec::<i64>::new()
    );
    let mut points = noisy(3_000, 11);
    points[2_500].1 += 60.0;
    assert_eq!(fired(&run(&d, &points, MINUTE)), vec![2_500], "threshold");
}

#[test]
fn a_step_fires_once_near_the_step() {
    for (name, d) in adaptive() {
        let mut points = noisy(3_000, 13);
        for p in &mut points[2_400..] {
            p.1 += 30.0;
        }
        let f = fired(&run(&d, &points, MINUTE));
        assert!(
            !f.is_empty() && (2_400..2_405).contains(&f[0]),
            "{name}: {f:?}"
        );
        assert_eq!(f.len(), 1, "{name}: one alarm for one step: {f:?}");
    }
    // A step of the daily pattern's level, at night, for the seasonal baseline.
    let d = detector("seasonal", &[]);
    let mut points = daily(5, 13);
    for p in &mut points[4 * 288 + 24..4 * 288 + 60] {
        p.1 += 30.0;
    }
    let f = fired(&run(&d, &points, 300));
    assert_eq!(f, vec![4 * 288 + 24], "seasonal");
}

#[test]
fn a_slow_drift_is_followed_by_adaptive_detectors_and_caught_by_a_threshold() {
    // 0.01 per minute: 50 units over 5,000 minutes, a quarter of the noise per hour.
    let mut points = noisy(5_000, 17);
    for (i, p) in points.iter_mut().enumerate() {
        p.1 += 0.01 * i as f64;
    }
    for (name, d) in adaptive() {
        assert_eq!(
            fired(&run(&d, &points, MINUTE)),
            Vec::<i64>::new(),
            "{name}"
        );
    }
    // The bound is crossed around minute 3,000 (the noise reaches it a little earlier); the
    // alarms are a cooldown apart.
    let d = detector("threshold", &["above=130", "cooldown=1d"]);
    let f = fired(&run(&d, &points, MINUTE));
    assert!((2_400..3_100).contains(&f[0]), "{f:?}");
    assert!(
        f.len() <= 3 && f.windows(2).all(|w| w[1] - w[0] >= 1_440),
        "{f:?}"
    );
}

#[test]
fn a_flat_line_raises_nothing_until_it_moves() {
    let flat: Vec<(i64, f64)> = (0..2_000).map(|i| (i, 42.0)).collect();
    for (name, d) in adaptive() {
        let evaluations = run(&d, &flat, MINUTE);
        assert_eq!(fired(&evaluations), Vec::<i64>::new(), "{name}");
        assert!(
            evaluations.iter().all(|e| e.reading.score.is_finite()),
            "{name}"
        );
        // The MAD is 0: the scale floor keeps the deviation finite when the line moves.
        let mut moved = flat.clone();
        moved[1_500].1 = 60.0;
        let evaluations = run(&d, &moved, MINUTE);
        assert_eq!(fired(&evaluations), vec![1_500], "{name}");
        assert!(evaluations[1_500].reading.deviation.is_finite(), "{name}");
    }
    let zero: Vec<(i64, f64)> = (0..2_000).map(|i| (i, 0.0)).collect();
    let d = detector("default", &[]);
    assert_eq!(fired(&run(&d, &zero, MINUTE)), Vec::<i64>::new());
}

#[test]
fn missing_buckets_neither_fire_nor_blind_the_detector() {
    for (name, d) in adaptive() {
        // Every seventh bucket missing, and a gap of three hours.
        let points: Vec<(i64, f64)> = noisy(3_000, 19)
            .into_iter()
            .filter(|(i, _)| i % 7 != 3 && !(1_000..1_180).contains(i))
            .collect();
        let evaluations = run(&d, &points, MINUTE);
        assert_eq!(fired(&evaluations), Vec::<i64>::new(), "{name}");
        assert_eq!(evaluations.last().unwrap().interval_s, Some(60), "{name}");
        assert!(
            evaluations.iter().any(|e| e.after_gap),
            "{name}: the gap is seen"
        );
        let mut spiked = points.clone();
        let last = spiked.len() - 10;
        spiked[last].1 += 60.0;
        assert_eq!(
            fired(&run(&d, &spiked, MINUTE)),
            vec![spiked[last].0],
            "{name}"
        );
    }
}

#[test]
fn too_little_history_gives_no_verdict() {
    let d = detector("robust_z", &["min_history=50"]);
    let mut points = noisy(200, 23);
    points[30].1 += 100.0;
    let evaluations = run(&d, &points, MINUTE);
    assert!(!evaluations[30].reading.ready && !evaluations[30].anomalous);
    assert!(evaluations[60].reading.ready);
    assert_eq!(fired(&evaluations), Vec::<i64>::new());
}

#[test]
fn an_oscillation_around_the_threshold_fires_at_most_once_per_cooldown() {
    // 99, 101, 99, 101, ... around `above = 100`, for 1,000 minutes.
    let flapping: Vec<(i64, f64)> = (0..1_000)
        .map(|i| (i, if i % 2 == 0 { 99.0 } else { 101.0 }))
        .collect();
    // Hysteresis: the alarm never sees ten clean buckets in a row, so it stays one alarm.
    let d = detector("threshold", &["above=100"]);
    assert_eq!(fired(&run(&d, &flapping, MINUTE)), vec![1]);
    // Even recovering after every clean bucket, the cooldown spaces the alarms out.
    let d = detector("threshold", &["above=100", "clear_after=1", "cooldown=2h"]);
    let evaluations = run(&d, &flapping, MINUTE);
    let f = fired(&evaluations);
    assert!(f.windows(2).all(|w| w[1] - w[0] >= 120), "{f:?}");
    assert_eq!(f.len(), 9, "{f:?}");
    assert!(evaluations
        .iter()
        .any(|e| e.transition == Some(Transition::Suppressed)));
    // N of M: two anomalous buckets out of three are needed; 1 in 2 never gets there.
    let d = detector("threshold", &["above=100", "fire_after=2", "out_of=3"]);
    let every_third: Vec<(i64, f64)> = (0..300)
        .map(|i| (i, if i % 3 == 0 { 101.0 } else { 99.0 }))
        .collect();
    assert_eq!(fired(&run(&d, &every_third, MINUTE)), Vec::<i64>::new());
    // `for`: the condition must hold five minutes.
    let d = detector("threshold", &["above=100", "for=5m"]);
    let mut burst: Vec<(i64, f64)> = (0..100).map(|i| (i, 50.0)).collect();
    for p in &mut burst[40..44] {
        p.1 = 120.0;
    }
    for p in &mut burst[60..80] {
        p.1 = 120.0;
    }
    assert_eq!(fired(&run(&d, &burst, MINUTE)), vec![65]);
}

fn csv(points: &[(i64, f64)], step: i64) -> String {
    let mut text = String::from("timestamp,value\n");
    for (i, v) in points {
        text.push_str(&format!(
            "{},{v}\n",
            at(*i, step).format("%Y-%m-%d %H:%M:%S")
        ));
    }
    text
}

fn scores(output: &str) -> Vec<String> {
    output
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().to_string())
        .collect()
}

#[test]
fn a_score_never_depends_on_later_rows() {
    let mut points = daily(4, 29);
    points[3 * 288 + 100].1 += 50.0;
    for p in &mut points[3 * 288 + 200..] {
        p.1 *= 1.5;
    }
    let kinds: &[(&str, &[&str])] = &[
        ("default", &[]),
        ("robust_z", &[]),
        ("ewma", &[]),
        ("seasonal", &[]),
        ("threshold", &["above=90"]),
    ];
    for (kind, params) in kinds {
        let d = detector(kind, params);
        let full = scores(&score_csv(&csv(&points, 300), &d).unwrap());
        assert_eq!(full.len(), points.len());
        for cut in [1, 500, 3 * 288 + 101, 3 * 288 + 250, points.len() - 1] {
            let prefix = scores(&score_csv(&csv(&points[..cut], 300), &d).unwrap());
            assert_eq!(prefix[..], full[..cut], "{kind}: the first {cut} rows");
        }
    }
}

#[test]
fn a_restored_state_goes_on_as_if_never_interrupted() {
    let mut points = daily(4, 31);
    points[3 * 288 + 100].1 += 50.0;
    let kinds: &[(&str, &[&str])] = &[
        ("default", &[]),
        ("robust_z", &[]),
        ("ewma", &[]),
        ("seasonal", &[]),
        ("threshold", &["above=70", "fire_after=2", "out_of=4"]),
    ];
    for (kind, params) in kinds {
        let d = detector(kind, params);
        let uninterrupted: Vec<String> = run(&d, &points, 300)
            .iter()
            .map(|e| format!("{e:?}"))
            .collect();
        for cut in [10, 600, 3 * 288 + 100] {
            let mut state = SeriesState::new(&d);
            let mut resumed = Vec::new();
            for &(i, v) in &points[..cut] {
                resumed.push(format!("{:?}", state.observe(&d, at(i, 300), v)));
            }
            let saved = serde_json::to_string(&state).unwrap();
            let mut state: SeriesState = serde_json::from_str(&saved).unwrap();
            for &(i, v) in &points[cut..] {
                resumed.push(format!("{:?}", state.observe(&d, at(i, 300), v)));
            }
            let first = resumed.iter().zip(&uninterrupted).position(|(a, b)| a != b);
            assert_eq!(
                first.map(|i| (i, &resumed[i], &uninterrupted[i])),
                None,
                "{kind}, restored after {cut} buckets"
            );
        }
    }
}

#[test]
fn a_finding_says_what_was_seen() {
    let d = detector("default", &[]);
    let mut points = noisy(3_000, 37);
    points[2_500].1 += 60.0;
    let series = SeriesKey {
        tenant: "t-001".into(),
        resource: "checkout".into(),
        metric: "p95_ms".into(),
        stat: Stat::P95,
    };
    let evaluations = run(&d, &points, MINUTE);
    let findings: Vec<_> = evaluations
        .iter()
        .filter_map(|e| e.finding("latency", &d, &series))
        .collect();
    assert_eq!(findings.len(), 1);
    let f = &findings[0];
    assert_eq!(f.observed, points[2_500].1);
    assert_eq!(f.window.end, at(2_500, MINUTE));
    assert!(f.window.start <= f.window.end);
    assert!((f.baseline - 100.0).abs() < 2.0, "{}", f.baseline);
    let (lower, upper) = (f.band.lower.unwrap(), f.band.upper.unwrap());
    assert!(
        lower < f.baseline && f.baseline < upper && upper < f.observed,
        "{lower} {upper} {f:?}"
    );
    assert!(f.score >= 0.5 && f.score < 1.0);
    assert_eq!(f.detector, "default");
    let json = serde_json::to_value(f).unwrap();
    for key in [
        "rule",
        "series",
        "window",
        "observed",
        "baseline",
        "band",
        "score",
        "detector",
        "parameters",
    ] {
        assert!(json.get(key).is_some(), "{key} in {json}");
    }
    assert_eq!(json["parameters"]["window"], 240);
    assert_eq!(json["parameters"]["cooldown"], 120);
    assert_eq!(json["series"]["stat"], "p95");
}
