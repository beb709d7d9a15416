//! The adapters a plan step may name, each with the JSON Schema of its `params`. The plan
//! guard validates every step against its adapter's schema; the executor validates again
//! before it runs anything.

use std::sync::LazyLock;

use serde_json::Value;

/// One adapter: its action name, what it does, and its params schema (as served).
#[derive(Debug, Clone)]
pub struct AdapterSpec {
    pub action: &'static str,
    pub description: &'static str,
    pub params_schema: &'static str,
}

pub const ADAPTERS: &[AdapterSpec] = &[
    AdapterSpec {
        action: "noop",
        description: "Does nothing and succeeds.",
        params_schema: include_str!("../schemas/adapters/noop.json"),
    },
    AdapterSpec {
        action: "script.exec",
        description: "Runs an allowlisted executable with an argument array, no shell, a scrubbed environment and a timeout that kills its process group.",
        params_schema: include_str!("../schemas/adapters/script.exec.json"),
    },
    AdapterSpec {
        action: "http.call",
        description: "Sends a templated request to a configured base URL and checks the status.",
        params_schema: include_str!("../schemas/adapters/http.call.json"),
    },
    AdapterSpec {
        action: "gateway.flip",
        description: "http.call against a gateway's admin API (e.g. shift traffic).",
        params_schema: include_str!("../schemas/adapters/gateway.flip.json"),
    },
    AdapterSpec {
        action: "k8s.rollout",
        description: "Patches a Deployment's image or restart annotation and waits for the rollout.",
        params_schema: include_str!("../schemas/adapters/k8s.rollout.json"),
    },
];

static VALIDATORS: LazyLock<Vec<(&'static str, jsonschema::Validator)>> = LazyLock::new(|| {
    ADAPTERS
        .iter()
        .map(|spec| {
            let schema: Value =
                serde_json::from_str(spec.params_schema).expect("adapter schema is JSON");
            let validator = jsonschema::draft202012::new(&schema)
                .expect("adapter schema is a valid draft 2020-12 schema");
            (spec.action, validator)
        })
        .collect()
});

pub fn find(action: &str) -> Option<&'static AdapterSpec> {
    ADAPTERS.iter().find(|spec| spec.action == action)
}

pub fn params_schema(action: &str) -> Option<Value> {
    find(action).map(|spec| serde_json::from_str(spec.params_schema).expect("schema is JSON"))
}

/// A params error: the JSON pointer inside `params` and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamsError {
    pub pointer: String,
    pub message: String,
}

/// Every way `params` (absent = `{}`) breaks `action`'s schema; `None` for an unknown action.
pub fn validate_params(action: &str, params: Option<&Value>) -> Option<Vec<ParamsError>> {
    let (_, validator) = VALIDATORS.iter().find(|(name, _)| *name == action)?;
    let empty = Value::Object(Default::default());
    let params = params.unwrap_or(&empty);
    Some(
        validator
            .iter_errors(params)
            .map(|error| ParamsError {
                pointer: error.instance_path.to_string(),
                message: error.to_string(),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_action_of_the_plan_schema_has_an_adapter() {
        let plan = crate::plan::schema();
        let actions = plan["$defs"]["step"]["properties"]["action"]["enum"]
            .as_array()
            .unwrap()
            .clone();
        for action in actions {
            assert!(find(action.as_str().unwrap()).is_some(), "{action}");
        }
        assert_eq!(actions_len(), ADAPTERS.len());
    }

    fn actions_len() -> usize {
        crate::plan::schema()["$defs"]["step"]["properties"]["action"]["enum"]
            .as_array()
            .unwrap()
            .len()
    }

    #[test]
    fn params_are_checked_against_the_adapter() {
        assert_eq!(validate_params("noop", None), Some(vec![]));
        let errors = validate_params("script.exec", Some(&json!({"script": "../bin/sh"}))).unwrap();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].pointer, "/script");
        let both = json!({"namespace": "shop", "deployment": "web", "container": "web",
                          "image": "web:2", "restart": true});
        assert!(!validate_params("k8s.rollout", Some(&both))
            .unwrap()
            .is_empty());
        let image =
            json!({"namespace": "shop", "deployment": "web", "container": "web", "image": "web:2"});
        assert_eq!(validate_params("k8s.rollout", Some(&image)), Some(vec![]));
        assert_eq!(validate_params("rm.rf", None), None);
    }
}
