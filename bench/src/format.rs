//! Number formatting shared by the markdown reports.

use crate::stats::Summary;

pub fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "not met"
    }
}

pub fn ms(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.2} ms")
    } else {
        format!("{value:.1} ms")
    }
}

/// "p50 / p99 / p99.9 / max (n = count)".
pub fn percentiles(summary: Option<Summary>) -> String {
    match summary {
        Some(s) => format!(
            "{} / {} / {} / {} (n = {})",
            ms(s.p50),
            ms(s.p99),
            ms(s.p999),
            ms(s.max),
            thousands(s.count as u64)
        ),
        None => "no data".into(),
    }
}

/// 12345678 → "12,345,678".
pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}
