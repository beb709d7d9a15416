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

/// Write `<name>-<UTC timestamp>.json` and `.md` into `dir`; returns their paths.
pub fn write_results(
    dir: &std::path::Path,
    name: &str,
    started_at: chrono::DateTime<chrono::Utc>,
    json: &serde_json::Value,
    markdown: &str,
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let stem = format!("{name}-{}", started_at.format("%Y%m%dT%H%M%SZ"));
    let json_path = dir.join(format!("{stem}.json"));
    let markdown_path = dir.join(format!("{stem}.md"));
    std::fs::write(&json_path, serde_json::to_string_pretty(json)? + "\n")
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    std::fs::write(&markdown_path, markdown)
        .with_context(|| format!("cannot write {}", markdown_path.display()))?;
    Ok(vec![json_path, markdown_path])
}
