//! Where a pipeline's settings come from, in order: the defaults; the built-in task's data,
//! reward and RL settings (`task`); the preset's schedule (`preset`); the config file's keys;
//! the command-line flags. Each layer only names what it changes, and an `rl` table is merged
//! key by key, so a config file that sets `rl.batch` keeps the task's `rl.lr`.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::PipelineConfig;
use crate::error::{Error, IoContext, Result};

/// The presets: name and description.
pub const PRESETS: [(&str, &str); 2] = [
    (
        "small",
        "the default demo: 2 iterations of 2 RLOO runs of 100 steps, μ = 0.05, η = 0.5",
    ),
    (
        "paper",
        "the paper's recipe at small scale: REINFORCE (no baseline), μ = 0.01, η = 0.3, \
         3 iterations of 2 runs of 400 steps",
    ),
];

/// What a preset sets.
fn preset_layer(name: &str) -> Option<Value> {
    Some(match name {
        "small" => json!({}),
        // Paper, Sec. 4 / App. B: REINFORCE, μ = 0.01, η = 0.3 (I up to 5, T = 9k for Gemma 7B);
        // here T = 400 keeps the EMA horizon 1/μ = 100 steps well inside a run.
        "paper" => json!({
            "iterations": 3,
            "steps": 400,
            "mu": 0.01,
            "eta": 0.3,
            "checkpoints": 8,
            "rl": {"baseline": "none"},
        }),
        _ => return None,
    })
}

fn names<const N: usize>(list: &[(&str, &str); N]) -> String {
    list.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

/// Writes `layer`'s keys over `base` (the `rl` table key by key).
fn overlay(base: &mut Map<String, Value>, layer: &Map<String, Value>) {
    for (k, v) in layer {
        match (k.as_str(), base.get_mut(k), v) {
            ("rl", Some(Value::Object(b)), Value::Object(l)) => {
                for (k2, v2) in l {
                    b.insert(k2.clone(), v2.clone());
                }
            }
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// The settings of a pipeline: defaults, then `task` (else the file's `task`, else arith), then
/// `preset` (else the file's, else small), then the keys of the TOML file `file`. Errors name the
/// file and the key.
pub fn layered(
    task: Option<&str>,
    preset: Option<&str>,
    file: Option<&Path>,
) -> Result<PipelineConfig> {
    let file_keys: Map<String, Value> = match file {
        None => Map::new(),
        Some(p) => {
            let text = std::fs::read_to_string(p).at(p)?;
            let table: toml::Table =
                toml::from_str(&text).map_err(|e| setting(p, e.to_string().trim_end()))?;
            // JSON has no nan or inf: they would turn into null and be reported as a wrong type.
            if let Some((key, x)) = non_finite(&table, "") {
                return Err(setting(
                    p,
                    &format!("key '{key}': {x} is not a number a setting can take"),
                ));
            }
            match serde_json::to_value(table) {
                Ok(Value::Object(m)) => m,
                _ => return Err(setting(p, "not a table of settings")),
            }
        }
    };
    let from_file = |key: &str| {
        file_keys
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let task = task.map(str::to_string).or_else(|| from_file("task"));
    let task = task.unwrap_or_else(|| "arith".into());
    let preset = preset.map(str::to_string).or_else(|| from_file("preset"));
    let preset = preset.unwrap_or_else(|| "small".into());
    // What the built-in task sets ([`crate::tasks`]).
    let task_keys = crate::tasks::task(&task)
        .map(|t| (t.pipeline)())
        .ok_or_else(|| {
            Error::setting(
                "task",
                format!(
                    "unknown task '{task}' (built-in: {})",
                    crate::tasks::names()
                ),
            )
        })?;
    let preset_keys = preset_layer(&preset).ok_or_else(|| {
        Error::setting(
            "preset",
            format!("unknown preset '{preset}' (known: {})", names(&PRESETS)),
        )
    })?;
    let mut v = match serde_json::to_value(PipelineConfig::default()) {
        Ok(Value::Object(m)) => m,
        _ => {
            return Err(Error::Internal(
                "pipeline defaults are not an object".into(),
            ))
        }
    };
    for layer in [&task_keys, &preset_keys] {
        if let Value::Object(m) = layer {
            overlay(&mut v, m);
        }
    }
    let defaults = v.clone();
    overlay(&mut v, &file_keys);
    v.insert("task".into(), json!(task));
    v.insert("preset".into(), json!(preset));
    serde_json::from_value(Value::Object(v)).map_err(|e| match file {
        // serde's message for a wrong type does not name the key: the key that fails alone does.
        Some(p) => match culprit::<PipelineConfig>(&defaults, &file_keys) {
            Some(key) => setting(p, &format!("key '{key}': {e}")),
            None => setting(p, &e.to_string()),
        },
        None => Error::Internal(format!("preset settings: {e}")),
    })
}

/// The first key of `layer` that does not deserialize as `T` when put alone over `base`.
pub fn culprit<T: serde::de::DeserializeOwned>(
    base: &Map<String, Value>,
    layer: &Map<String, Value>,
) -> Option<String> {
    layer.iter().find_map(|(k, v)| {
        let mut m = base.clone();
        m.insert(k.clone(), v.clone());
        serde_json::from_value::<T>(Value::Object(m))
            .is_err()
            .then(|| k.clone())
    })
}

/// The first float of `t` (nested tables and arrays included) that is nan or infinite.
fn non_finite(t: &toml::Table, prefix: &str) -> Option<(String, f64)> {
    fn walk(v: &toml::Value, key: String) -> Option<(String, f64)> {
        match v {
            toml::Value::Float(x) if !x.is_finite() => Some((key, *x)),
            toml::Value::Table(t) => non_finite(t, &format!("{key}.")),
            toml::Value::Array(a) => a
                .iter()
                .enumerate()
                .find_map(|(i, x)| walk(x, format!("{key}[{i}]"))),
            _ => None,
        }
    }
    t.iter().find_map(|(k, v)| walk(v, format!("{prefix}{k}")))
}

/// A settings error in the file `p` (exit code 2, like a bad flag).
fn setting(p: &Path, msg: &str) -> Error {
    Error::setting(p.display().to_string(), msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        let c = layered(None, None, None).unwrap();
        assert_eq!(c, PipelineConfig::default());
        let c = layered(Some("cipher"), Some("paper"), None).unwrap();
        assert_eq!(c.reward, "model:builtin:cipher/rm");
        assert_eq!((c.iterations, c.steps, c.mu, c.eta), (3, 400, 0.01, 0.3));
        // The task's lr and the preset's baseline, both in `rl`.
        assert_eq!(c.rl.get("lr"), Some(&json!(1e-3)));
        assert_eq!(c.rl.get("baseline"), Some(&json!("none")));
        assert_eq!(c.checkpoints, 8, "the preset comes after the task");

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "task = \"cipher\"\nsteps = 7\n[rl]\nbatch = 3\n").unwrap();
        let c = layered(None, None, Some(&f)).unwrap();
        assert_eq!(
            (c.task.as_str(), c.preset.as_str(), c.steps),
            ("cipher", "small", 7)
        );
        assert_eq!(c.rl.get("lr"), Some(&json!(1e-3)));
        assert_eq!(c.rl.get("batch"), Some(&json!(3)));
        // A flag's task wins over the file's.
        let c = layered(Some("arith"), None, Some(&f)).unwrap();
        assert_eq!((c.reward.as_str(), c.steps), ("verify:arith", 7));

        std::fs::write(&f, "stpes = 7\n").unwrap();
        let e = layered(None, None, Some(&f)).unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains("stpes"), "{e}");
        let e = layered(Some("chess"), None, None).unwrap_err().to_string();
        assert!(e.contains("chess") && e.contains("arith, cipher"), "{e}");
        let e = layered(None, Some("huge"), None).unwrap_err().to_string();
        assert!(e.contains("huge") && e.contains("small, paper"), "{e}");
    }
}
