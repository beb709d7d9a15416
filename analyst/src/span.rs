//! A length of history or time: a number of buckets (`60`) or a duration (`"1h"`).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number of buckets (`window = 60`) or a duration (`window = "1h"`: `s`, `m`, `h`, `d`,
/// `w`). A duration becomes a number of buckets with the series' own sampling interval, so
/// the same rule reads one-minute buckets live and five-minute rows in a NAB file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    Buckets(u32),
    Seconds(u64),
}

impl Span {
    /// Buckets this span covers at `interval_s` seconds per bucket (at least `min`).
    pub fn buckets(self, interval_s: Option<i64>) -> u32 {
        match self {
            Span::Buckets(n) => n,
            Span::Seconds(s) => {
                let interval = interval_s.unwrap_or(60).max(1) as u64;
                u32::try_from(s.div_ceil(interval)).unwrap_or(u32::MAX)
            }
        }
    }

    /// Seconds this span covers at `interval_s` seconds per bucket.
    pub fn seconds(self, interval_s: Option<i64>) -> u64 {
        match self {
            Span::Seconds(s) => s,
            Span::Buckets(n) => u64::from(n) * interval_s.unwrap_or(60).max(1) as u64,
        }
    }

    pub fn is_zero(self) -> bool {
        matches!(self, Span::Buckets(0) | Span::Seconds(0))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Span::Buckets(n) => write!(f, "{n}"),
            Span::Seconds(s) => {
                for (unit, size) in [("w", 604_800), ("d", 86_400), ("h", 3_600), ("m", 60)] {
                    if s > 0 && s % size == 0 {
                        return write!(f, "\"{}{unit}\"", s / size);
                    }
                }
                write!(f, "\"{s}s\"")
            }
        }
    }
}

/// Parses `90s`, `15m`, `2h`, `1d`, `1w` (a positive integer and a unit).
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit (s, m, h, d or w)"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 30m or 1d"))?;
    let size = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (s, m, h, d or w)")),
    };
    number
        .checked_mul(size)
        .ok_or_else(|| format!("{text:?} is too long"))
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match *self {
            Span::Buckets(n) => serializer.serialize_u32(n),
            Span::Seconds(_) => {
                let text = self.to_string();
                serializer.serialize_str(text.trim_matches('"'))
            }
        }
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Span;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of buckets or a duration such as \"30m\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Span, E> {
                u32::try_from(v)
                    .map(Span::Buckets)
                    .map_err(|_| E::custom(format!("{v} buckets is too many")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Span, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom("a span cannot be negative"))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Span, E> {
                if v >= 0.0 && v.fract() == 0.0 && v <= f64::from(u32::MAX) {
                    Ok(Span::Buckets(v as u32))
                } else {
                    Err(E::custom(format!("{v} is not a whole number of buckets")))
                }
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Span, E> {
                if let Ok(n) = v.trim().parse::<u64>() {
                    return self.visit_u64(n);
                }
                parse_duration(v).map(Span::Seconds).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_parse_and_convert() {
        let s: Span = serde_json::from_str("\"2h\"").unwrap();
        assert_eq!(s, Span::Seconds(7_200));
        assert_eq!(s.buckets(Some(60)), 120);
        assert_eq!(s.buckets(Some(300)), 24);
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"2h\"");
        let n: Span = serde_json::from_str("15").unwrap();
        assert_eq!(n, Span::Buckets(15));
        assert_eq!(n.seconds(Some(300)), 4_500);
        assert!(serde_json::from_str::<Span>("\"5 parsecs\"").is_err());
        assert!(serde_json::from_str::<Span>("-3").is_err());
    }
}
