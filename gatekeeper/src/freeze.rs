//! Change-freeze windows: an absolute range (`start`..=`end`), a weekly window (`days`, `from`,
//! `to`, `utc_offset`), or both (a weekly window that only applies between `start` and `end`).

use std::fmt;

use chrono::{DateTime, Datelike, Duration, SecondsFormat, Timelike, Utc, Weekday};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

/// One `[[freeze]]` entry of a policy. While it is active for a tenant, every plan of that
/// tenant is rejected (rule `freeze:<name>`) and no ad-hoc step may run.
///
/// Boundaries: `start` is inclusive and `end` is inclusive (`start <= now <= end`), so
/// `end = "2026-11-30T23:59:59Z"` still freezes that last second. A weekly window runs from
/// `from` (inclusive) to `to` (exclusive) in the local time of `utc_offset`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Freeze {
    /// `name`: unique among the freezes; the rule that fires is `freeze:<name>`.
    pub name: String,
    /// `start`: RFC 3339 timestamp with an offset (a quoted string, or an unquoted TOML offset
    /// date-time); the freeze is not active before it. Absent: no lower bound.
    #[serde(
        default,
        deserialize_with = "de_timestamp",
        skip_serializing_if = "Option::is_none"
    )]
    pub start: Option<DateTime<Utc>>,
    /// `end`: RFC 3339 timestamp (inclusive); the freeze is not active after it. Absent: no
    /// upper bound.
    #[serde(
        default,
        deserialize_with = "de_timestamp",
        skip_serializing_if = "Option::is_none"
    )]
    pub end: Option<DateTime<Utc>>,
    /// `days`: a recurring weekly window on these days (`mon`..`sun` or full names). With
    /// `from`/`to` but no `days`, the window recurs every day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<Day>,
    /// `from`: local clock time `HH:MM` the weekly window opens on each of `days` (default
    /// `00:00`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<ClockTime>,
    /// `to`: local clock time `HH:MM` it closes (exclusive; default `24:00`). When `to <= from`
    /// the window runs past midnight into the next day (`fri` 22:00 to 06:00 ends on Saturday).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<ClockTime>,
    /// `utc_offset`: the offset of the local time of `from`/`to`/`days`, e.g. `+08:00`
    /// (default `Z`, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utc_offset: Option<UtcOffset>,
    /// `tenants`: the tenants it applies to; absent means every tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<Vec<String>>,
}

impl Freeze {
    /// The rule name this freeze fires as.
    pub fn rule(&self) -> String {
        format!("freeze:{}", self.name)
    }

    /// Does it apply to `tenant` at all (ignoring time)?
    pub fn applies_to(&self, tenant: &str) -> bool {
        self.tenants
            .as_ref()
            .is_none_or(|tenants| tenants.iter().any(|t| t == tenant))
    }

    /// Has a weekly part (`days`, `from` or `to`).
    pub fn is_weekly(&self) -> bool {
        !self.days.is_empty() || self.from.is_some() || self.to.is_some()
    }

    /// Is `now` inside the window (ignoring tenants)?
    pub fn covers(&self, now: DateTime<Utc>) -> bool {
        if self.start.is_some_and(|start| now < start) {
            return false;
        }
        if self.end.is_some_and(|end| now > end) {
            return false;
        }
        !self.is_weekly() || self.weekly_covers(now)
    }

    /// Active for `tenant` at `now`.
    pub fn is_active(&self, tenant: &str, now: DateTime<Utc>) -> bool {
        self.applies_to(tenant) && self.covers(now)
    }

    fn weekly_covers(&self, now: DateTime<Utc>) -> bool {
        let offset = self.utc_offset.map_or(0, |o| o.0);
        let local = now.naive_utc() + Duration::seconds(i64::from(offset));
        let day = local.weekday();
        let secs = local.num_seconds_from_midnight();
        let from = self.from.map_or(0, ClockTime::seconds);
        let to = self.to.map_or(24 * 3600, ClockTime::seconds);
        let on = |d: Weekday| self.days.is_empty() || self.days.iter().any(|x| x.0 == d);
        if from < to {
            on(day) && from <= secs && secs < to
        } else {
            // Overnight (or a full 24 h when from == to): opens on a listed day at `from` and
            // closes on the next day at `to`.
            (on(day) && secs >= from) || (on(day.pred()) && secs < to)
        }
    }

    /// A short description of the window for reasons, e.g.
    /// `2026-11-27T00:00:00Z..=2026-11-30T23:59:59Z` or `weekly sat,sun 22:00-06:00 +08:00`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.start.is_some() || self.end.is_some() {
            let ts = |t: Option<DateTime<Utc>>| {
                t.map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
                    .unwrap_or_default()
            };
            parts.push(format!("{}..={}", ts(self.start), ts(self.end)));
        }
        if self.is_weekly() {
            let days = if self.days.is_empty() {
                "daily".to_string()
            } else {
                let names: Vec<String> = self.days.iter().map(ToString::to_string).collect();
                format!("weekly {}", names.join(","))
            };
            parts.push(format!(
                "{days} {}-{} {}",
                self.from.unwrap_or(ClockTime(0)),
                self.to.unwrap_or(ClockTime(24 * 60)),
                self.utc_offset.unwrap_or(UtcOffset(0))
            ));
        }
        parts.join(" ")
    }
}

/// A day of the week: `mon`, `tue`, ... or `monday`, ... (any case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Day(pub Weekday);

impl TryFrom<String> for Day {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value
            .parse::<Weekday>()
            .map(Day)
            .map_err(|_| format!("{value:?} is not a day of the week (mon, tue, ... sun)"))
    }
}

impl From<Day> for String {
    fn from(day: Day) -> String {
        day.to_string()
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_string().to_lowercase())
    }
}

/// A local clock time `HH:MM`, `00:00` to `24:00`, kept as minutes since midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClockTime(pub u16);

impl ClockTime {
    fn seconds(self) -> u32 {
        u32::from(self.0) * 60
    }
}

impl TryFrom<String> for ClockTime {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        let bad = || format!("{value:?} is not a clock time HH:MM between 00:00 and 24:00");
        let (h, m) = value.split_once(':').ok_or_else(bad)?;
        if h.len() != 2 || m.len() != 2 {
            return Err(bad());
        }
        let h: u16 = h.parse().map_err(|_| bad())?;
        let m: u16 = m.parse().map_err(|_| bad())?;
        if m > 59 || h > 24 || (h == 24 && m != 0) {
            return Err(bad());
        }
        Ok(ClockTime(h * 60 + m))
    }
}

impl From<ClockTime> for String {
    fn from(t: ClockTime) -> String {
        t.to_string()
    }
}

impl fmt::Display for ClockTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

/// An offset from UTC: `Z`, `UTC`, `+08:00`, `-05:30`, kept as seconds east of UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UtcOffset(pub i32);

impl TryFrom<String> for UtcOffset {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        let bad = || format!("{value:?} is not a UTC offset like \"Z\", \"+08:00\" or \"-05:30\"");
        if value.eq_ignore_ascii_case("z") || value.eq_ignore_ascii_case("utc") {
            return Ok(UtcOffset(0));
        }
        let (sign, rest) = match value.as_bytes().first() {
            Some(b'+') => (1, &value[1..]),
            Some(b'-') => (-1, &value[1..]),
            _ => return Err(bad()),
        };
        let (h, m) = rest.split_once(':').unwrap_or((rest, "00"));
        if h.len() != 2 || m.len() != 2 {
            return Err(bad());
        }
        let h: i32 = h.parse().map_err(|_| bad())?;
        let m: i32 = m.parse().map_err(|_| bad())?;
        if h > 18 || m > 59 {
            return Err(bad());
        }
        Ok(UtcOffset(sign * (h * 3600 + m * 60)))
    }
}

impl From<UtcOffset> for String {
    fn from(o: UtcOffset) -> String {
        o.to_string()
    }
}

impl fmt::Display for UtcOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("UTC");
        }
        let sign = if self.0 < 0 { '-' } else { '+' };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{:02}:{:02}", abs / 3600, abs % 3600 / 60)
    }
}

/// A timestamp given as an RFC 3339 string (TOML or YAML) or as an unquoted TOML offset
/// date-time, which the `toml` crate hands over as a one-entry map.
fn de_timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    struct TimestampVisitor;

    impl<'de> Visitor<'de> for TimestampVisitor {
        type Value = DateTime<Utc>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an RFC 3339 timestamp with an offset, e.g. \"2026-11-27T00:00:00Z\"")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    E::custom(format!(
                        "{v:?} is not an RFC 3339 timestamp with an offset ({e}), e.g. \"2026-11-27T00:00:00Z\""
                    ))
                })
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            // toml's private representation of a date-time: {"$__toml_private_datetime": "..."}.
            let Some((_, text)) = map.next_entry::<String, String>()? else {
                return Err(de::Error::invalid_type(de::Unexpected::Map, &self));
            };
            self.visit_str(&text)
        }
    }

    d.deserialize_any(TimestampVisitor).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn weekly(days: &[&str], from: &str, to: &str, offset: Option<&str>) -> Freeze {
        Freeze {
            name: "w".into(),
            start: None,
            end: None,
            days: days
                .iter()
                .map(|d| Day::try_from(d.to_string()).unwrap())
                .collect(),
            from: Some(ClockTime::try_from(from.to_string()).unwrap()),
            to: Some(ClockTime::try_from(to.to_string()).unwrap()),
            utc_offset: offset.map(|o| UtcOffset::try_from(o.to_string()).unwrap()),
            tenants: None,
        }
    }

    #[test]
    fn overnight_weekly_window_spills_into_the_next_day() {
        // 2026-11-27 is a Friday.
        let f = weekly(&["fri"], "22:00", "06:00", None);
        assert!(!f.covers(at("2026-11-27T21:59:59Z")));
        assert!(f.covers(at("2026-11-27T22:00:00Z")));
        assert!(f.covers(at("2026-11-28T05:59:59Z")));
        assert!(!f.covers(at("2026-11-28T06:00:00Z")));
        assert!(
            !f.covers(at("2026-11-28T22:30:00Z")),
            "saturday is not listed"
        );
        assert!(
            !f.covers(at("2026-11-27T05:00:00Z")),
            "thursday night is not listed"
        );
    }

    #[test]
    fn weekly_window_in_local_time() {
        // Saturday 00:00 at +08:00 is Friday 16:00 UTC.
        let f = weekly(&["sat", "sunday"], "00:00", "24:00", Some("+08:00"));
        assert!(!f.covers(at("2026-11-27T15:59:59Z")));
        assert!(f.covers(at("2026-11-28T15:59:59Z")));
        assert!(f.covers(at("2026-11-27T16:00:00Z")));
        assert!(f.covers(at("2026-11-29T15:59:59Z")));
        assert!(!f.covers(at("2026-11-29T16:00:00Z")));
    }

    #[test]
    fn daily_window_without_days() {
        let mut f = weekly(&[], "12:00", "13:00", None);
        f.start = Some(at("2026-01-01T00:00:00Z"));
        assert!(!f.covers(at("2025-12-31T12:30:00Z")), "before start");
        assert!(f.covers(at("2026-03-03T12:30:00Z")));
        assert!(!f.covers(at("2026-03-03T13:00:00Z")));
    }

    #[test]
    fn clock_and_offset_parse() {
        assert!(ClockTime::try_from("24:01".to_string()).is_err());
        assert!(ClockTime::try_from("7:00".to_string()).is_err());
        assert_eq!(ClockTime::try_from("24:00".to_string()).unwrap().0, 1440);
        assert_eq!(UtcOffset::try_from("-05:30".to_string()).unwrap().0, -19800);
        assert_eq!(UtcOffset::try_from("Z".to_string()).unwrap().0, 0);
        assert!(UtcOffset::try_from("08:00".to_string()).is_err());
        assert_eq!(
            weekly(&["sat"], "22:00", "06:00", Some("+08:00")).describe(),
            "weekly sat 22:00-06:00 +08:00"
        );
    }
}
