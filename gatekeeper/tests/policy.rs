//! Parsing: keys, defaults, errors that name the file/key/line, TOML = YAML, revisions.

use gatekeeper::freeze::{ClockTime, Day, UtcOffset};
use gatekeeper::{policy_rev, Format, LoadedPolicy, Policy, PolicyError, DEFAULT_POLICY_TOML};

const EXAMPLE_TOML: &str = include_str!("../policy.example.toml");
const EXAMPLE_YAML: &str = include_str!("../policy.example.yaml");

#[test]
fn example_files_parse_to_the_same_policy() {
    let toml = Policy::from_toml_str(EXAMPLE_TOML, "policy.example.toml").unwrap();
    let yaml = Policy::from_yaml_str(EXAMPLE_YAML, "policy.example.yaml").unwrap();
    assert_eq!(toml, yaml);
    assert_eq!(toml.max_auto_risk, 0.3);
    assert_eq!(toml.max_steps, 10);
    assert_eq!(toml.human_actions, ["k8s.rollout"]);
    assert!(toml.forbidden_actions.is_empty());
    assert_eq!(toml.freezes.len(), 2);
    assert_eq!(toml.freezes[0].name, "black-friday");
    assert_eq!(
        toml.freezes[0].tenants.as_deref(),
        Some(&["t-001".to_string()][..])
    );
    assert_eq!(
        toml.freezes[0].start.unwrap().to_rfc3339(),
        "2026-11-27T00:00:00+00:00"
    );
    let weekly = &toml.freezes[1];
    assert_eq!(
        weekly.days,
        [Day(chrono::Weekday::Fri), Day(chrono::Weekday::Sat)]
    );
    assert_eq!(weekly.from, Some(ClockTime(22 * 60)));
    assert_eq!(weekly.to, Some(ClockTime(6 * 60)));
    assert_eq!(weekly.utc_offset, Some(UtcOffset(8 * 3600)));
    assert_eq!(toml.tenants[0].name, "t-002");
    assert_eq!(toml.tenants[0].max_auto_risk, Some(0.1));
    assert_eq!(
        toml.tenants[1].forbidden_actions.as_deref(),
        Some(&["k8s.rollout".to_string()][..])
    );
    assert_eq!(toml.adhoc.allow_scripts, ["echo", "uptime"]);
    assert_eq!(toml.adhoc.allow_actions, ["noop"]);
}

#[test]
fn builtin_policy_and_its_revision() {
    let p = Policy::builtin();
    assert_eq!(p.max_auto_risk, 0.3);
    assert_eq!(p.max_steps, 20);
    assert!(p.human_actions.is_empty() && p.forbidden_actions.is_empty());
    assert!(p.freezes.is_empty() && p.tenants.is_empty());
    assert_eq!(p.adhoc.allow_scripts, ["echo"]);
    assert_eq!(p.adhoc.allow_actions, ["noop"]);
    let loaded = LoadedPolicy::builtin();
    assert_eq!(loaded.rev, policy_rev(DEFAULT_POLICY_TOML.as_bytes()));
    assert_eq!(loaded.rev.len(), 16);
    assert!(loaded.rev.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(loaded.origin, "<builtin>");
}

#[test]
fn absent_keys_take_the_builtin_values() {
    assert_eq!(
        Policy::from_toml_str("", "empty.toml").unwrap(),
        Policy::builtin()
    );
    assert_eq!(
        Policy::from_yaml_str("# nothing\n", "empty.yaml").unwrap(),
        Policy::builtin()
    );
    let p =
        Policy::from_toml_str("max_steps = 3\n[adhoc]\nallow_scripts = []\n", "p.toml").unwrap();
    assert_eq!(p.max_auto_risk, 0.3);
    assert_eq!(p.max_steps, 3);
    assert!(p.adhoc.allow_scripts.is_empty());
    assert_eq!(p.adhoc.allow_actions, ["noop"]);
}

#[test]
fn integer_risk_and_unquoted_toml_datetimes() {
    let p = Policy::from_toml_str(
        "max_auto_risk = 1\n[[freeze]]\nname = \"x\"\nstart = 2026-11-27T00:00:00Z\nend = 2026-11-28T00:00:00+08:00\n",
        "p.toml",
    )
    .unwrap();
    assert_eq!(p.max_auto_risk, 1.0);
    assert_eq!(
        p.freezes[0].end.unwrap().to_rfc3339(),
        "2026-11-27T16:00:00+00:00"
    );
    let err = Policy::from_toml_str(
        "[[freeze]]\nname = \"x\"\nstart = 2026-11-27T00:00:00\n",
        "p.toml",
    )
    .unwrap_err();
    assert_eq!(err.key(), Some("freeze[0].start"), "{err}");
    assert!(err.to_string().contains("RFC 3339"), "{err}");
}

fn parse_error(err: PolicyError) -> (String, Option<String>, Option<usize>, String) {
    match err {
        PolicyError::Parse {
            file,
            key,
            line,
            message,
        } => (file, key, line, message),
        other => panic!("not a parse error: {other:?}"),
    }
}

#[test]
fn unknown_keys_are_errors_naming_the_key_and_line() {
    let (file, key, line, message) = parse_error(
        Policy::from_toml_str("max_steps = 3\nmax_risk = 0.3\n", "gate.toml").unwrap_err(),
    );
    assert_eq!(file, "gate.toml");
    assert_eq!(key.as_deref(), Some("max_risk"));
    assert_eq!(line, Some(2));
    assert!(message.contains("unknown field `max_risk`"), "{message}");

    let text = "[[freeze]]\nname = \"x\"\nstart = \"2026-01-01T00:00:00Z\"\n\n[[freeze]]\nname = \"y\"\nstrat = \"2026-01-01T00:00:00Z\"\n";
    let err = Policy::from_toml_str(text, "gate.toml").unwrap_err();
    assert!(err.to_string().starts_with("gate.toml:"), "{err}");
    let (_, key, line, _) = parse_error(err);
    assert_eq!(key.as_deref(), Some("freeze[1].strat"));
    assert_eq!(line, Some(7));

    let err = Policy::from_toml_str("[adhoc]\nallow = []\n", "gate.toml").unwrap_err();
    assert_eq!(err.key(), Some("adhoc.allow"));

    let (file, key, line, _) = parse_error(
        Policy::from_yaml_str(
            "max_steps: 3\ntenant:\n  - name: a\n    max_risk: 0.1\n",
            "gate.yaml",
        )
        .unwrap_err(),
    );
    assert_eq!(file, "gate.yaml");
    assert_eq!(key.as_deref(), Some("tenant[0].max_risk"));
    assert_eq!(line, Some(4));
}

#[test]
fn wrong_types_name_the_key_and_line() {
    let err = Policy::from_toml_str("max_steps = 3\nmax_auto_risk = \"high\"\n", "gate.toml")
        .unwrap_err();
    assert_eq!(
        err.to_string().split(": ").next(),
        Some("gate.toml:2"),
        "{err}"
    );
    let (_, key, line, message) = parse_error(err);
    assert_eq!(key.as_deref(), Some("max_auto_risk"));
    assert_eq!(line, Some(2));
    assert!(message.contains("invalid type"), "{message}");

    let err =
        Policy::from_yaml_str("max_steps: 3\nmax_auto_risk: high\n", "gate.yaml").unwrap_err();
    let (_, key, line, _) = parse_error(err);
    assert_eq!(key.as_deref(), Some("max_auto_risk"));
    assert_eq!(line, Some(2));

    let err = Policy::from_toml_str("human_actions = \"k8s.rollout\"\n", "gate.toml").unwrap_err();
    assert_eq!(err.key(), Some("human_actions"));
    let err = Policy::from_toml_str(
        "[[freeze]]\nname = \"w\"\ndays = [\"funday\"]\n",
        "gate.toml",
    )
    .unwrap_err();
    assert_eq!(err.key(), Some("freeze[0].days[0]"), "{err}");
    let err = Policy::from_toml_str("[[freeze]]\nname = \"w\"\nfrom = \"25:00\"\n", "gate.toml")
        .unwrap_err();
    assert_eq!(err.key(), Some("freeze[0].from"), "{err}");
    let err = Policy::from_toml_str("max_steps = -1\n", "gate.toml").unwrap_err();
    assert_eq!(err.key(), Some("max_steps"), "{err}");
}

#[test]
fn senseless_values_name_the_key() {
    for (text, key) in [
        ("max_auto_risk = 1.5", "max_auto_risk"),
        ("max_steps = 0", "max_steps"),
        ("forbidden_actions = [\"\"]", "forbidden_actions"),
        ("[[freeze]]\nname = \"x\"\nstart = \"2026-02-01T00:00:00Z\"\nend = \"2026-01-01T00:00:00Z\"", "freeze[0].end"),
        ("[[freeze]]\nname = \"x\"", "freeze[0]"),
        ("[[freeze]]\nname = \"x\"\nend = \"2026-01-01T00:00:00Z\"\ntenants = []", "freeze[0].tenants"),
        ("[[freeze]]\nname = \"x\"\nend = \"2026-01-01T00:00:00Z\"\n[[freeze]]\nname = \"x\"\nend = \"2026-01-01T00:00:00Z\"", "freeze[1].name"),
        ("[[tenant]]\nname = \"a\"\n[[tenant]]\nname = \"a\"", "tenant[1].name"),
        ("[[tenant]]\nname = \"a\"\nmax_auto_risk = -0.1", "tenant[0].max_auto_risk"),
    ] {
        let err = Policy::from_toml_str(text, "gate.toml").unwrap_err();
        assert!(matches!(err, PolicyError::Invalid { .. }), "{text}: {err:?}");
        assert_eq!(err.key(), Some(key), "{text}: {err}");
        assert!(err.to_string().starts_with(&format!("gate.toml: {key}: ")), "{err}");
    }
}

#[test]
fn files_load_by_extension_with_the_revision_of_their_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let toml_path = dir.path().join("gate.toml");
    std::fs::write(&toml_path, EXAMPLE_TOML).unwrap();
    let yml_path = dir.path().join("gate.YML");
    std::fs::write(&yml_path, EXAMPLE_YAML).unwrap();
    let toml = LoadedPolicy::load(&toml_path).unwrap();
    let yaml = LoadedPolicy::load(&yml_path).unwrap();
    assert_eq!(toml.policy, yaml.policy);
    assert_eq!(toml.rev, policy_rev(EXAMPLE_TOML.as_bytes()));
    assert_ne!(toml.rev, yaml.rev);
    assert_eq!(toml.origin, toml_path.display().to_string());

    let json_path = dir.path().join("gate.json");
    std::fs::write(&json_path, "{}").unwrap();
    assert!(matches!(
        LoadedPolicy::load(&json_path),
        Err(PolicyError::Extension { .. })
    ));
    assert_eq!(Format::from_path(&yml_path).unwrap(), Format::Yaml);
    let missing = LoadedPolicy::load(&dir.path().join("nope.toml")).unwrap_err();
    assert!(matches!(missing, PolicyError::Io { .. }));
    assert!(missing.to_string().contains("nope.toml"), "{missing}");
}
