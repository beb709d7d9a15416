//! Rules as written in `opscase.toml`: the minimal rule, validation errors that name the
//! key, the matcher, and every parameter documented, defaulted and settable.

use std::collections::BTreeMap;

use analyst::{
    detector_from_args, AnalystConfig, Automation, Detector, DetectorTable, Method, Severity, Span,
    Stat, PARAMETERS,
};

/// `[analyst]` as the service's configuration will nest it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    analyst: AnalystConfig,
}

fn parse(toml_text: &str) -> Result<AnalystConfig, String> {
    let file: File = toml::from_str(toml_text).map_err(|e| e.to_string())?;
    file.analyst
        .validate("analyst")
        .map_err(|e| e.to_string())?;
    Ok(file.analyst)
}

#[test]
fn the_minimal_rule_watches_p95_latency_with_the_default_detector() {
    let config = parse("[[analyst.rules]]\nname = \"latency\"\nmetric = \"p95_ms\"\n").unwrap();
    let rule = &config.rules[0];
    let detector = rule.detector().unwrap();
    assert_eq!(detector, Detector::default_detector());
    assert!(matches!(detector.method, Method::Default(_)));
    let no_labels = BTreeMap::new();
    assert!(rule.matches("t-001", "checkout", "p95_ms", &no_labels));
    assert!(rule.matches("t-002", "search", "p95_ms", &no_labels));
    assert!(!rule.matches("t-001", "checkout", "err_rate", &no_labels));
    assert_eq!(rule.stat_for("p95_ms"), Stat::P95);
    assert_eq!(rule.severity, Severity::Medium);
    assert_eq!(rule.route.automation, Automation::Manual);
}

#[test]
fn a_full_rule_reads_every_section() {
    let config = parse(
        r#"
        [[analyst.rules]]
        name = "checkout errors"
        tenant = "t-*"
        resource = "checkout*"
        metric = "err_rate"
        labels = { env = "prod", region = "eu-*" }
        stat = "max"
        severity = "high"
        detector = { kind = "robust_z", window = "2h", threshold = 4.5, direction = "above", fire_after = 2, out_of = 3, cooldown = "30m" }
        route = { automation = "auto", template = "script.restart", labels = { team = "payments" } }
        "#,
    )
    .unwrap();
    let rule = &config.rules[0];
    let prod: BTreeMap<String, String> = [
        ("env".into(), "prod".into()),
        ("region".into(), "eu-west-1".into()),
    ]
    .into();
    let staging: BTreeMap<String, String> = [
        ("env".into(), "staging".into()),
        ("region".into(), "eu-west-1".into()),
    ]
    .into();
    assert!(rule.matches("t-001", "checkout-api", "err_rate", &prod));
    assert!(!rule.matches("t-001", "checkout-api", "err_rate", &staging));
    assert!(!rule.matches("acme", "checkout-api", "err_rate", &prod));
    assert!(!rule.matches("t-001", "search", "err_rate", &prod));
    let json = serde_json::json!({"env": "prod", "region": "eu-central-1", "pod": 3});
    assert!(rule.matches("t-001", "checkout", "err_rate", &json));
    assert_eq!(rule.stat_for("err_rate"), Stat::Max);
    assert_eq!(rule.severity, Severity::High);
    assert_eq!(rule.route.template.as_deref(), Some("script.restart"));
    let d = rule.detector().unwrap();
    assert_eq!(
        d.method,
        Method::RobustZ {
            window: Span::Seconds(7_200),
            threshold: 4.5
        }
    );
    assert_eq!((d.alarm.fire_after, d.alarm.out_of), (2, 3));
    assert_eq!(d.alarm.cooldown, Span::Seconds(1_800));
}

#[test]
fn errors_name_the_key() {
    let cases = [
        (
            "name = \"x\"\nmetric = \"m\"\ndetector = { kind = \"robust_z\", window = 1 }",
            "analyst.rules[0].detector.window: must be at least 3 buckets",
        ),
        (
            "name = \"x\"\nmetric = \"m\"\ndetector = { kind = \"robust_z\", alpha = 0.1 }",
            "analyst.rules[0].detector.alpha: not a parameter of the robust_z detector",
        ),
        (
            "name = \"x\"\nmetric = \"m\"\ndetector = { kind = \"ewma\", alpha = 1.5 }",
            "analyst.rules[0].detector.alpha: must be in (0, 1]",
        ),
        (
            "name = \"x\"\nmetric = \"m\"\ndetector = { kind = \"threshold\" }",
            "analyst.rules[0].detector.above: the threshold detector needs",
        ),
        (
            "name = \"x\"\nmetric = \"m\"\ndetector = { kind = \"magic\" }",
            "analyst.rules[0].detector.kind: unknown detector \"magic\"",
        ),
        (
            "name = \"x\"\nmetric = \"m\"\ndetector = { fire_after = 3, out_of = 2 }",
            "analyst.rules[0].detector.out_of: must be from fire_after (3) to 64",
        ),
        (
            "name = \"x\"\nmetric = \"m\"\ndetector = { surprise = -1 }",
            "analyst.rules[0].detector.surprise: must be a positive number",
        ),
        (
            "name = \"x\"",
            "analyst.rules[0]: a rule needs at least one matcher",
        ),
        (
            "name = \"\"\nmetric = \"m\"",
            "analyst.rules[0].name: a rule needs a name",
        ),
        (
            "name = \"x\"\nresource = \"\"",
            "analyst.rules[0].resource: must not be empty",
        ),
    ];
    for (rule, expected) in cases {
        let error = parse(&format!("[[analyst.rules]]\n{rule}\n")).unwrap_err();
        assert!(error.starts_with(expected), "{rule:?}: {error}");
    }
    let twice = "[[analyst.rules]]\nname = \"a\"\nmetric = \"m\"\n[[analyst.rules]]\nname = \"a\"\nmetric = \"n\"\n";
    let error = parse(twice).unwrap_err();
    assert!(
        error.starts_with("analyst.rules[1].name: \"a\" is already the name of analyst.rules[0]"),
        "{error}"
    );
    // Unknown keys are refused by the parser, which names them.
    for unknown in [
        "windoww = 3",
        "detector = { windoww = 3 }",
        "route = { team = \"x\" }",
    ] {
        let error = parse(&format!(
            "[[analyst.rules]]\nname = \"x\"\nmetric = \"m\"\n{unknown}\n"
        ))
        .unwrap_err();
        assert!(error.contains("unknown field"), "{unknown}: {error}");
    }
}

#[test]
fn every_parameter_is_documented_defaulted_and_settable() {
    let readme = include_str!("../../README.md");
    let table = readme
        .split("| key | detectors | default | meaning |")
        .nth(1)
        .expect("the README has the parameter table");
    let kinds = ["default", "threshold", "robust_z", "ewma", "seasonal"];
    for param in PARAMETERS {
        // Documented: the README's table has a row for it, with its default.
        let row = table
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with('|'))
            .find(|l| l.starts_with(&format!("| `{}` |", param.key)))
            .unwrap_or_else(|| panic!("README has no row for `{}`", param.key));
        assert!(
            row.contains(param.default),
            "README row of `{}` lacks its default {}: {row}",
            param.key,
            param.default
        );
        // Settable: for every kind that reads it, the example value changes the detector.
        let readers: Vec<&str> = if param.kinds.is_empty() {
            kinds.to_vec()
        } else {
            param.kinds.to_vec()
        };
        for kind in readers {
            let base = match kind {
                "threshold" if param.key != "below" => {
                    "kind = \"threshold\"\nbelow = 0.5\n".to_string()
                }
                "threshold" => "kind = \"threshold\"\nabove = 300.0\n".to_string(),
                _ => format!("kind = \"{kind}\"\n"),
            };
            let base = if param.key == "kind" {
                String::new()
            } else {
                base
            };
            let table: DetectorTable = toml::from_str(&base).unwrap();
            let with: DetectorTable =
                toml::from_str(&format!("{base}{} = {}\n", param.key, param.example)).unwrap();
            let (before, after) = (table.resolve("d").unwrap(), with.resolve("d").unwrap());
            assert_ne!(
                before, after,
                "`{}` = {} changes nothing for {kind}",
                param.key, param.example
            );
            // The same through `--param KEY=VALUE` of the offline scorer.
            if param.key != "kind" {
                let mut args: Vec<String> = base
                    .lines()
                    .skip(1)
                    .map(|l| l.replace(" = ", "="))
                    .collect();
                args.push(format!("{}={}", param.key, param.example.trim_matches('"')));
                let cli = detector_from_args(Some(kind), &args).unwrap();
                assert_eq!(cli, after, "--param {} for {kind}", param.key);
            }
        }
    }
    // And nothing the table takes is undocumented.
    let all = serde_json::to_value(DetectorTable {
        kind: Some("default".into()),
        direction: Some(Default::default()),
        threshold: Some(1.0),
        above: Some(1.0),
        below: Some(0.0),
        window: Some(Span::Buckets(1)),
        alpha: Some(1.0),
        period: Some(Span::Buckets(1)),
        seasons: Some(1),
        memory: Some(Span::Buckets(1)),
        collective: Some(1),
        surprise: Some(1.0),
        fire_after: Some(1),
        out_of: Some(1),
        for_: Some(Span::Buckets(1)),
        clear_after: Some(Span::Buckets(1)),
        cooldown: Some(Span::Buckets(1)),
        min_history: Some(1),
        stale_after: Some(Span::Buckets(1)),
    })
    .unwrap();
    for key in all.as_object().unwrap().keys() {
        assert!(
            PARAMETERS.iter().any(|p| p.key == key),
            "`{key}` is not in PARAMETERS"
        );
    }
}

#[test]
fn the_cli_names_the_parameter_it_refuses() {
    let error = detector_from_args(Some("robust_z"), &["window=1".into()]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "--param window: must be at least 3 buckets, not 1"
    );
    let error = detector_from_args(Some("nope"), &[]).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("--detector: unknown detector"),
        "{error}"
    );
    let error = detector_from_args(None, &["bogus=1".into()]).unwrap_err();
    assert!(
        error.to_string().contains("unknown field `bogus`"),
        "{error}"
    );
    let error = detector_from_args(None, &["window".into()]).unwrap_err();
    assert!(error.to_string().contains("is not KEY=VALUE"), "{error}");
    assert_eq!(
        detector_from_args(Some("default"), &[]).unwrap(),
        Detector::default_detector()
    );
}
