//! The files around the weights: config and tokenizer files copied from the base model, and the
//! model card (README.md with YAML front matter) that says how a checkpoint was made.

use std::path::Path;

use super::dtype::{DType, OutDType};
use super::writer::CheckpointWriter;
use crate::error::{IoContext, Result};

/// Files copied verbatim from the base checkpoint's folder when present.
pub const COMPANION_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
];

/// Copies the companion files found in `src_dir` into the output. Returns the names copied.
pub fn copy_companions(src_dir: &Path, w: &mut CheckpointWriter) -> Result<Vec<String>> {
    let mut copied = Vec::new();
    for name in COMPANION_FILES {
        let p = src_dir.join(name);
        if p.is_file() {
            let bytes = std::fs::read(&p).at(&p)?;
            w.add_file(name, &bytes)?;
            copied.push(name.to_string());
        }
    }
    Ok(copied)
}

/// [`copy_companions`] for an output whose float tensors were converted by `out`: the dtype the
/// config declares (`torch_dtype`, and `dtype` as transformers ≥ 4.56 writes it; also in nested
/// sub-configs) is set to the new one, so loaders that honour it (`dtype="auto"`) get what the
/// shards hold. A config.json that is not valid JSON is copied as it is.
pub fn copy_companions_as(
    src_dir: &Path,
    w: &mut CheckpointWriter,
    out: OutDType,
) -> Result<Vec<String>> {
    let OutDType::To(dtype) = out else {
        return copy_companions(src_dir, w);
    };
    let mut copied = Vec::new();
    for name in COMPANION_FILES {
        let p = src_dir.join(name);
        if !p.is_file() {
            continue;
        }
        let mut bytes = std::fs::read(&p).at(&p)?;
        if *name == "config.json" {
            if let Some(fixed) = config_with_dtype(&bytes, dtype) {
                bytes = fixed;
            }
        }
        w.add_file(name, &bytes)?;
        copied.push(name.to_string());
    }
    Ok(copied)
}

/// torch's name of a float dtype, as configs spell it.
pub(crate) fn torch_name(d: DType) -> Option<&'static str> {
    match d {
        DType::BF16 => Some("bfloat16"),
        DType::F16 => Some("float16"),
        DType::F32 => Some("float32"),
        DType::F64 => Some("float64"),
        _ => None,
    }
}

/// The config with its float dtype fields set to `d`; None when nothing changes (or it does not
/// parse).
pub(crate) fn config_with_dtype(bytes: &[u8], d: DType) -> Option<Vec<u8>> {
    fn visit(v: &mut serde_json::Value, to: &str, changed: &mut bool) {
        let serde_json::Value::Object(map) = v else {
            return;
        };
        for (k, val) in map.iter_mut() {
            let is_float_name = |s: &str| {
                matches!(
                    s,
                    "bfloat16" | "float16" | "float32" | "float64" | "half" | "float" | "double"
                )
            };
            match val {
                serde_json::Value::String(s)
                    if (k == "torch_dtype" || k == "dtype") && is_float_name(s) && s != to =>
                {
                    *s = to.to_string();
                    *changed = true;
                }
                serde_json::Value::Object(_) => visit(val, to, changed),
                _ => {}
            }
        }
    }
    let to = torch_name(d)?;
    let mut v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let mut changed = false;
    visit(&mut v, to, &mut changed);
    if !changed {
        return None;
    }
    // transformers writes configs indented by 2 with a final newline.
    let mut out = serde_json::to_vec_pretty(&v).ok()?;
    out.push(b'\n');
    Some(out)
}

/// A hub id `org/name` (what `base_model` in a model card must be), as opposed to a local path.
pub fn looks_like_hub_id(s: &str) -> bool {
    let s = s.split('@').next().unwrap_or(s);
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2
        && !Path::new(s).exists()
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// A model card: YAML front matter (base_model, tags, the recipe) and a short body.
pub struct ModelCard<'a> {
    pub title: &'a str,
    /// The base (init) model as the user named it.
    pub base_model: &'a str,
    /// e.g. "slerp", "liti", "ema".
    pub method: &'a str,
    /// The machine-readable recipe (also stored in the safetensors `__metadata__`).
    pub recipe: &'a serde_json::Value,
    /// Extra Markdown paragraphs (notes, caveats).
    pub notes: Vec<String>,
}

impl ModelCard<'_> {
    pub fn render(&self) -> String {
        let mut s = String::from("---\n");
        if looks_like_hub_id(self.base_model) {
            s += &format!(
                "base_model: {}\n",
                yaml_str(self.base_model.split('@').next().unwrap_or(""))
            );
        }
        s += "library_name: transformers\n";
        s += &format!("tags:\n- warp\n- merge\n- {}\n", yaml_str(self.method));
        // JSON is valid YAML: the recipe goes in as one flow mapping, exact and machine-readable.
        s += &format!("warp_recipe: {}\n", self.recipe);
        s += "---\n\n";
        s += &format!("# {}\n\n", self.title);
        s += &format!(
            "Made with warp {} (`{}`), a tool for WARP (Weight Averaged \
             Rewarded Policies) merges, from base model `{}`.\n\n",
            env!("CARGO_PKG_VERSION"),
            self.method,
            self.base_model
        );
        s += "## Recipe\n\n```json\n";
        s += &serde_json::to_string_pretty(self.recipe).unwrap_or_default();
        s += "\n```\n";
        for n in &self.notes {
            s += "\n";
            s += n;
            s += "\n";
        }
        s
    }
}

/// A YAML scalar that is safe whatever the string holds (JSON strings are YAML strings).
fn yaml_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_versus_paths() {
        assert!(looks_like_hub_id("google/gemma-7b"));
        assert!(looks_like_hub_id("org/name@main"));
        assert!(!looks_like_hub_id("./local"));
        assert!(!looks_like_hub_id("/abs/path/x"));
        assert!(!looks_like_hub_id("a/b/c"));
    }

    #[test]
    fn config_dtype_follows_the_conversion() {
        let cfg = br#"{"model_type":"llama","torch_dtype":"bfloat16","text_config":{"dtype":"bfloat16","x":1},"hidden_size":8}"#;
        let out = config_with_dtype(cfg, DType::F32).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["torch_dtype"], "float32");
        assert_eq!(v["text_config"]["dtype"], "float32");
        assert_eq!(v["hidden_size"], 8);
        // Key order is kept.
        let text = String::from_utf8(out).unwrap();
        assert!(text.find("model_type") < text.find("hidden_size"));
        // Nothing to change, or not JSON: None (copied as is).
        assert!(config_with_dtype(br#"{"torch_dtype":"float32"}"#, DType::F32).is_none());
        assert!(config_with_dtype(b"{oops", DType::F32).is_none());
        assert!(config_with_dtype(br#"{"dtype":"int8"}"#, DType::F32).is_none());
    }

    #[test]
    fn card_front_matter_is_yaml_with_recipe() {
        let recipe = serde_json::json!({"method": "slerp", "eta": 0.3});
        let card = ModelCard {
            title: "t",
            base_model: "google/gemma-7b",
            method: "slerp",
            recipe: &recipe,
            notes: vec![],
        }
        .render();
        assert!(card.starts_with("---\nbase_model: \"google/gemma-7b\"\n"));
        assert!(card.contains("warp_recipe: {\"method\":\"slerp\",\"eta\":0.3}\n"));
    }
}
