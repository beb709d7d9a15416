//! `opscase analyst score`: the file side of the Analyst's offline scorer (the scoring itself
//! is `analyst::score_csv`, the live path's detector code).

use std::path::Path;

use anyhow::Context;

/// Reads `input`, scores it with the detector of `--detector` / `--param`, writes `output`.
pub fn score(
    detector: Option<&str>,
    params: &[String],
    input: &Path,
    output: &Path,
) -> anyhow::Result<()> {
    let detector = analyst::detector_from_args(detector, params)?;
    let text = std::fs::read_to_string(input)
        .with_context(|| format!("cannot read {}", input.display()))?;
    let scored =
        analyst::score_csv(&text, &detector).with_context(|| format!("{}", input.display()))?;
    std::fs::write(output, scored).with_context(|| format!("cannot write {}", output.display()))
}
