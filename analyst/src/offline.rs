//! The offline scorer behind `opscase analyst score`: a CSV of `timestamp,value` rows in,
//! `timestamp,value,anomaly_score` out, one row per input row in input order — the
//! interface of the Numenta Anomaly Benchmark. It runs the live path's code
//! ([`SeriesState::observe`]) row by row, so a row's score depends only on the rows before
//! it. Pure: text in, text out; the caller reads and writes the files.

use std::collections::VecDeque;

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::rule::{DetectorTable, RuleError};
use crate::series::{Detector, SeriesState};

/// A malformed input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfflineError {
    #[error("the input is empty (a header `timestamp,value` is needed)")]
    Empty,
    #[error("line 1: the header must name the columns `timestamp` and `value`, not {0:?}")]
    Header(String),
    #[error("line {line}: {message}")]
    Row { line: usize, message: String },
}

/// Parses a timestamp: `YYYY-MM-DD HH:MM:SS[.fff]` (UTC), RFC 3339 (`...T...Z`, offsets), or
/// seconds since the epoch.
pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let t = text.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Some(d.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(d) = NaiveDateTime::parse_from_str(t, format) {
            return Some(d.and_utc());
        }
    }
    let seconds: f64 = t.parse().ok()?;
    DateTime::from_timestamp(seconds.floor() as i64, 0)
}

/// Scores rows one at a time: the detector's score, halved when the series already had a
/// score at least as high within the last `cooldown` buckets — one anomaly counts once,
/// as the live path raises one finding per cooldown.
pub struct OfflineScorer {
    detector: Detector,
    state: SeriesState,
    /// (row, raw score) of the recent rows, decreasing scores (a sliding maximum).
    peaks: VecDeque<(u64, f64)>,
    row: u64,
}

impl OfflineScorer {
    pub fn new(detector: Detector) -> Self {
        let state = SeriesState::new(&detector);
        Self {
            detector,
            state,
            peaks: VecDeque::new(),
            row: 0,
        }
    }

    /// The score in [0, 1] of the next row.
    pub fn score(&mut self, at: DateTime<Utc>, value: f64) -> f64 {
        let evaluation = self.state.observe(&self.detector, at, value);
        let raw = evaluation.reading.score.clamp(0.0, 1.0);
        let window = u64::from(
            self.detector
                .alarm
                .cooldown
                .buckets(self.state.interval_s()),
        );
        while self
            .peaks
            .front()
            .is_some_and(|(row, _)| row + window < self.row)
        {
            self.peaks.pop_front();
        }
        let recent_peak = self.peaks.front().map_or(0.0, |(_, s)| *s);
        while self.peaks.back().is_some_and(|(_, s)| *s <= raw) {
            self.peaks.pop_back();
        }
        self.peaks.push_back((self.row, raw));
        self.row += 1;
        if raw > recent_peak {
            raw
        } else {
            0.5 * raw
        }
    }
}

/// Splits a CSV line on commas (fields are not quoted in the inputs this reads; quotes
/// around a field are dropped).
fn fields(line: &str) -> Vec<&str> {
    line.split(',')
        .map(|f| f.trim().trim_matches('"'))
        .collect()
}

/// Scores a whole CSV: header with `timestamp` and `value` columns (others are ignored),
/// one row per line. The output repeats each row's timestamp and value as written, plus the
/// score at full precision. A value that is not a number (`nan`, empty) scores 0 and is not
/// learnt; a row out of time order scores 0.
pub fn score_csv(input: &str, detector: &Detector) -> Result<String, OfflineError> {
    let mut lines = input.lines().enumerate();
    let (_, header) = lines
        .by_ref()
        .find(|(_, l)| !l.trim().is_empty())
        .ok_or(OfflineError::Empty)?;
    let names = fields(header.trim_start_matches('\u{feff}'));
    let column = |name: &str| names.iter().position(|n| n.eq_ignore_ascii_case(name));
    let (Some(ts_col), Some(value_col)) = (column("timestamp"), column("value")) else {
        return Err(OfflineError::Header(header.to_string()));
    };
    let mut scorer = OfflineScorer::new(detector.clone());
    let mut out = String::with_capacity(input.len() + input.len() / 2);
    out.push_str("timestamp,value,anomaly_score\n");
    for (index, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let row = fields(line);
        let bad = |message: String| OfflineError::Row {
            line: index + 1,
            message,
        };
        let (Some(ts), Some(value)) = (row.get(ts_col), row.get(value_col)) else {
            return Err(bad(format!(
                "expected {} fields, found {}",
                names.len(),
                row.len()
            )));
        };
        let at = parse_timestamp(ts).ok_or_else(|| bad(format!("{ts:?} is not a timestamp")))?;
        let score = match value.parse::<f64>() {
            Ok(v) => scorer.score(at, v),
            Err(_) if value.is_empty() || value.eq_ignore_ascii_case("nan") => {
                scorer.score(at, f64::NAN)
            }
            Err(_) => return Err(bad(format!("{value:?} is not a number"))),
        };
        out.push_str(ts);
        out.push(',');
        out.push_str(value);
        out.push(',');
        out.push_str(&format!("{score}\n"));
    }
    Ok(out)
}

/// The detector of `--detector NAME` and `--param KEY=VALUE ...` (no name, or `default`: the
/// default detector). Values are read as TOML would: numbers, `true`/`false`, else text
/// (`30m`, `above`). Errors name the parameter (`--param window: ...`).
pub fn detector_from_args(name: Option<&str>, params: &[String]) -> Result<Detector, RuleError> {
    let mut table = serde_json::Map::new();
    if let Some(name) = name {
        table.insert("kind".into(), serde_json::Value::String(name.to_string()));
    }
    for param in params {
        let (key, value) = param
            .split_once('=')
            .ok_or_else(|| RuleError::new("--param", format!("{param:?} is not KEY=VALUE")))?;
        let (key, value) = (key.trim(), value.trim());
        let value = if let Ok(i) = value.parse::<i64>() {
            serde_json::Value::from(i)
        } else if let Ok(f) = value.parse::<f64>() {
            serde_json::Value::from(f)
        } else if let Ok(b) = value.parse::<bool>() {
            serde_json::Value::from(b)
        } else {
            serde_json::Value::String(value.to_string())
        };
        if table.insert(key.to_string(), value).is_some() {
            return Err(RuleError::new(format!("--param {key}"), "given twice"));
        }
    }
    let table: DetectorTable = serde_json::from_value(serde_json::Value::Object(table))
        .map_err(|e| RuleError::new("--param", e.to_string()))?;
    table.resolve("--param").map_err(|mut e| {
        // `--param.window` reads better as `--param window`.
        e.key = e.key.replacen("--param.", "--param ", 1);
        if e.key == "--param kind" {
            e.key = "--detector".into();
        }
        e
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_the_usual_forms() {
        let nab = parse_timestamp("2014-04-10 07:15:00").unwrap();
        assert_eq!(parse_timestamp("2014-04-10T07:15:00Z"), Some(nab));
        assert_eq!(parse_timestamp("2014-04-10T09:15:00+02:00"), Some(nab));
        assert_eq!(parse_timestamp("2014-04-10 07:15:00.000000"), Some(nab));
        assert_eq!(parse_timestamp(&nab.timestamp().to_string()), Some(nab));
        assert_eq!(parse_timestamp("10/04/2014"), None);
    }

    #[test]
    fn columns_are_found_by_name_and_rows_echoed() {
        let d = Detector::default_detector();
        let input = "\u{feff}value,timestamp,host\n1.5,2014-04-10 07:15:00,a\n\nnan,2014-04-10 07:20:00,a\n2,2014-04-10 07:25:00,a\n";
        let out = score_csv(input, &d).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "timestamp,value,anomaly_score");
        assert_eq!(lines.len(), 4);
        assert!(lines[1].starts_with("2014-04-10 07:15:00,1.5,"));
        assert!(lines[2].starts_with("2014-04-10 07:20:00,nan,0"));
        assert_eq!(score_csv("", &d), Err(OfflineError::Empty));
        assert!(matches!(
            score_csv("timestamp,value\n2014-04-10 07:15:00,abc\n", &d),
            Err(OfflineError::Row { line: 2, .. })
        ));
    }
}
