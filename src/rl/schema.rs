//! The RL settings' schema, derived from [`RlConfig`] itself (its clap arguments and serde
//! defaults), for the Python side: the TRL backend's entry point and the Python package read
//! names, types, defaults and allowed values from here (`warp rl --print-schema`, the
//! extension module's `rl_schema()`, or `$WARP_RL_SCHEMA` set by the launcher), so a setting is
//! declared once, in Rust.

use std::any::TypeId;
use std::path::PathBuf;

use super::settings::RlConfig;

/// JSON type of a setting: from its clap value parser, else from its default's JSON form.
fn type_name(a: &clap::Arg, default: &serde_json::Value) -> &'static str {
    let t = a.get_value_parser().type_id();
    let ints = [
        TypeId::of::<u64>(),
        TypeId::of::<usize>(),
        TypeId::of::<u32>(),
        TypeId::of::<i64>(),
        TypeId::of::<i32>(),
    ];
    if ints.iter().any(|i| t == *i) {
        "integer"
    } else if t == TypeId::of::<f64>() || t == TypeId::of::<f32>() {
        "number"
    } else if t == TypeId::of::<bool>() {
        "boolean"
    } else if t == TypeId::of::<String>() || t == TypeId::of::<PathBuf>() {
        "string"
    } else {
        match default {
            serde_json::Value::Bool(_) => "boolean",
            serde_json::Value::Number(n) if n.is_f64() => "number",
            serde_json::Value::Number(_) => "integer",
            // Enums, devices, template choices: their serde form is a string.
            _ => "string",
        }
    }
}

/// `{"name": "RlConfig", "version": …, "fields": [{name, type, default, nullable, choices,
/// flag, help}, …]}`, in declaration order. `choices` lists the allowed values of an enum
/// (empty: any value of the type); `nullable` fields may be null (unset).
pub fn rl_schema() -> serde_json::Value {
    let cmd = <RlConfig as clap::Args>::augment_args(clap::Command::new("rl"));
    let defaults = RlConfig::default().to_json();
    let mut fields = Vec::new();
    for a in cmd.get_arguments() {
        let name = a.get_id().as_str();
        let Some(default) = defaults.get(name) else {
            continue;
        };
        let ty = type_name(a, default);
        // A boolean flag's parser lists "true"/"false" as strings; its JSON form is a boolean.
        let choices: Vec<String> = if ty == "boolean" {
            Vec::new()
        } else {
            a.get_possible_values()
                .iter()
                .filter(|p| !p.is_hide_set())
                .map(|p| p.get_name().to_string())
                .collect()
        };
        let flag = match a.get_long() {
            Some(l) => format!("--{l}"),
            None => format!("<{}>", name.to_uppercase()),
        };
        fields.push(serde_json::json!({
            "name": name,
            "type": ty,
            "default": default,
            "nullable": default.is_null(),
            "choices": choices,
            "flag": flag,
            "help": a.get_help().map(|h| h.to_string()).unwrap_or_default(),
        }));
    }
    serde_json::json!({
        "name": "RlConfig",
        "version": env!("CARGO_PKG_VERSION"),
        "fields": fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_is_in_the_schema_with_its_default_and_type() {
        let s = rl_schema();
        let fields = s["fields"].as_array().unwrap();
        let defaults = RlConfig::default().to_json();
        let obj = defaults.as_object().unwrap();
        // Every serde key, in order, and nothing else.
        let names: Vec<&str> = fields.iter().map(|f| f["name"].as_str().unwrap()).collect();
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(names, keys);
        let field = |n: &str| fields.iter().find(|f| f["name"] == n).unwrap().clone();
        assert_eq!(field("dtype")["default"], "auto");
        assert_eq!(
            field("dtype")["choices"],
            serde_json::json!(["auto", "f32", "bf16"])
        );
        assert_eq!(field("steps")["type"], "integer");
        // The clap names of the baselines are their serde names (Python checks against them).
        assert_eq!(
            field("baseline")["choices"],
            serde_json::json!(["rloo", "none", "grpo", "dr-grpo"])
        );
        assert_eq!(field("updates_per_batch")["type"], "integer");
        assert_eq!(field("updates_per_batch")["default"], 1);
        assert_eq!(field("clip_eps")["type"], "number");
        assert_eq!(field("clip_eps")["default"], 0.2);
        assert_eq!(field("mu")["type"], "number");
        assert_eq!(field("mu")["default"], 0.05);
        assert_eq!(field("model")["flag"], "<MODEL>");
        // A boolean is checked by its type; "true"/"false" strings as choices would refuse it.
        assert_eq!(field("rslora")["type"], "boolean");
        assert_eq!(field("rslora")["choices"], serde_json::json!([]));
        assert_eq!(field("max_memory")["nullable"], true);
        assert_eq!(field("max_memory")["type"], "string");
        assert_eq!(field("device")["type"], "string");
        assert_eq!(
            field("backend")["choices"],
            serde_json::json!(["warp", "trl"])
        );
        // The defaults in the schema are a complete, valid config.
        let back: RlConfig = serde_json::from_value(serde_json::Value::Object(
            fields
                .iter()
                .map(|f| {
                    (
                        f["name"].as_str().unwrap().to_string(),
                        f["default"].clone(),
                    )
                })
                .collect(),
        ))
        .unwrap();
        assert_eq!(back, RlConfig::default());
    }
}
