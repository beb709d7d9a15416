//! Schemas as strict structured-output providers take them, and answers back as opscase's
//! own schemas expect them (pure).
//!
//! OpenAI's `strict: true` accepts a subset of JSON Schema: every object lists all its
//! properties as `required` and sets `additionalProperties: false`; an optional property is
//! expressed as nullable. An object with no fixed properties (a step's `params`, a plan's
//! `metadata`) cannot be said at all, so it travels as a string holding JSON. [`strict`]
//! makes that schema and [`relax`] turns an answer to it back into one for the original:
//! nulls of optional properties dropped, JSON strings parsed where an object was meant.
//! Keywords strict mode refuses (`pattern`, `minLength`, `maxItems`, ...) are dropped from
//! the strict schema; opscase validates every answer against the original anyway.

use serde_json::{json, Map, Value};

/// Keywords kept in a strict schema; others are left to opscase's own validation.
const KEPT: [&str; 7] = [
    "type",
    "description",
    "enum",
    "const",
    "items",
    "anyOf",
    "title",
];

/// The strict-mode form of `schema` (a draft 2020-12 schema whose `$ref`s point into its
/// own `$defs`, which are inlined).
pub fn strict(schema: &Value) -> Value {
    let defs = schema.get("$defs").cloned().unwrap_or(Value::Null);
    strict_node(schema, &defs, 0)
}

/// `$ref` depth allowed while inlining (a recursive schema has no strict form here).
const MAX_DEPTH: usize = 16;

fn strict_node(node: &Value, defs: &Value, depth: usize) -> Value {
    let Some(fields) = node.as_object() else {
        return node.clone();
    };
    if let Some(target) = fields.get("$ref").and_then(Value::as_str) {
        let name = target.trim_start_matches("#/$defs/");
        return match defs.get(name) {
            Some(def) if depth < MAX_DEPTH => strict_node(def, defs, depth + 1),
            _ => json!({}),
        };
    }
    if is_free_object(node) {
        let about = fields
            .get("description")
            .and_then(Value::as_str)
            .map(|d| format!("{d} "))
            .unwrap_or_default();
        return json!({
            "type": "string",
            "description": format!("{about}(a JSON object, encoded as a string; \"{{}}\" for none)"),
        });
    }
    let mut out = Map::new();
    for key in KEPT {
        if let Some(value) = fields.get(key) {
            let value = match key {
                "items" => strict_node(value, defs, depth),
                "anyOf" => Value::Array(
                    value
                        .as_array()
                        .map(|alts| alts.iter().map(|a| strict_node(a, defs, depth)).collect())
                        .unwrap_or_default(),
                ),
                _ => value.clone(),
            };
            out.insert(key.to_string(), value);
        }
    }
    if let Some(properties) = fields.get("properties").and_then(Value::as_object) {
        let required: Vec<&str> = fields
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut strict_properties = Map::new();
        for (name, property) in properties {
            let property = strict_node(property, defs, depth);
            let property = if required.contains(&name.as_str()) {
                property
            } else {
                json!({"anyOf": [property, {"type": "null"}]})
            };
            strict_properties.insert(name.clone(), property);
        }
        out.insert("type".into(), json!("object"));
        out.insert(
            "required".into(),
            Value::Array(properties.keys().map(|k| json!(k)).collect()),
        );
        out.insert("properties".into(), Value::Object(strict_properties));
        out.insert("additionalProperties".into(), json!(false));
    }
    Value::Object(out)
}

/// An object schema with no fixed properties: free-form.
fn is_free_object(node: &Value) -> bool {
    node.get("type") == Some(&json!("object")) && node.get("properties").is_none()
}

/// An answer to [`strict`]`(schema)` as `schema` expects it: optional properties that came
/// back null are left out, and JSON strings where `schema` has a free-form object are parsed
/// (a string that is not a JSON object is left as it is, for validation to name).
pub fn relax(answer: &Value, schema: &Value) -> Value {
    let defs = schema.get("$defs").cloned().unwrap_or(Value::Null);
    relax_node(answer, schema, &defs, 0)
}

fn relax_node(answer: &Value, node: &Value, defs: &Value, depth: usize) -> Value {
    if let Some(target) = node.get("$ref").and_then(Value::as_str) {
        let name = target.trim_start_matches("#/$defs/");
        return match defs.get(name) {
            Some(def) if depth < MAX_DEPTH => relax_node(answer, def, defs, depth + 1),
            _ => answer.clone(),
        };
    }
    if is_free_object(node) {
        if let Some(text) = answer.as_str() {
            if let Ok(parsed @ Value::Object(_)) = serde_json::from_str::<Value>(text) {
                return parsed;
            }
        }
        return answer.clone();
    }
    match answer {
        Value::Object(fields) => {
            let properties = node.get("properties").and_then(Value::as_object);
            let required: Vec<&str> = node
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut out = Map::new();
            for (name, value) in fields {
                if value.is_null() && !required.contains(&name.as_str()) {
                    continue;
                }
                let value = match properties.and_then(|p| p.get(name)) {
                    Some(property) => relax_node(value, property, defs, depth),
                    None => value.clone(),
                };
                out.insert(name.clone(), value);
            }
            Value::Object(out)
        }
        Value::Array(items) => match node.get("items") {
            Some(item) => Value::Array(
                items
                    .iter()
                    .map(|i| relax_node(i, item, defs, depth))
                    .collect(),
            ),
            None => answer.clone(),
        },
        _ => answer.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_like() -> Value {
        json!({
            "type": "object",
            "required": ["title", "steps"],
            "additionalProperties": false,
            "properties": {
                "title": {"type": "string", "minLength": 1},
                "summary": {"type": "string", "maxLength": 10},
                "steps": {"type": "array", "maxItems": 3, "items": {"$ref": "#/$defs/step"}},
                "metadata": {"type": "object"}
            },
            "$defs": {
                "step": {
                    "type": "object",
                    "required": ["action"],
                    "properties": {
                        "action": {"enum": ["noop", "script.exec"]},
                        "params": {"type": "object", "description": "The adapter's params."}
                    }
                }
            }
        })
    }

    #[test]
    fn every_object_lists_all_properties_and_optional_ones_are_nullable() {
        let strict = strict(&plan_like());
        let mut required: Vec<&str> = strict["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        required.sort();
        assert_eq!(required, ["metadata", "steps", "summary", "title"]);
        assert_eq!(strict["additionalProperties"], false);
        assert_eq!(
            strict["properties"]["summary"],
            json!({"anyOf": [{"type": "string"}, {"type": "null"}]}),
            "optional becomes nullable; maxLength is left to opscase's validation"
        );
        assert_eq!(strict["properties"]["title"], json!({"type": "string"}));
        let step = &strict["properties"]["steps"]["items"];
        assert_eq!(step["required"].as_array().unwrap().len(), 2, "{strict:#}");
        assert_eq!(step["additionalProperties"], false);
        assert_eq!(
            step["properties"]["params"]["anyOf"][0]["type"], "string",
            "a free-form object travels as JSON text"
        );
        assert!(strict.get("$defs").is_none(), "definitions are inlined");
    }

    #[test]
    fn an_answer_to_the_strict_schema_becomes_one_for_the_original() {
        let answer = json!({
            "title": "Restart",
            "summary": null,
            "metadata": null,
            "steps": [
                {"action": "script.exec", "params": "{\"script\": \"restart.sh\"}"},
                {"action": "noop", "params": null},
                {"action": "noop", "params": "not json"}
            ]
        });
        let relaxed = relax(&answer, &plan_like());
        assert_eq!(
            relaxed,
            json!({
                "title": "Restart",
                "steps": [
                    {"action": "script.exec", "params": {"script": "restart.sh"}},
                    {"action": "noop"},
                    {"action": "noop", "params": "not json"}
                ]
            })
        );
    }

    #[test]
    fn a_required_null_is_kept_for_validation_to_refuse() {
        let relaxed = relax(&json!({"title": null, "steps": []}), &plan_like());
        assert_eq!(relaxed, json!({"title": null, "steps": []}));
    }
}
