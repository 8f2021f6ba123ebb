//! `config.json` of a Llama-family decoder (Llama, Mistral without sliding window, Qwen2), read
//! strictly: a field we do not implement is an error that names it, never silently ignored.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, IoContext, Result};

/// How the rotary embedding's positions are scaled (`rope_scaling`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (`{"rope_type": "linear", "factor": f}`).
    Linear(f64),
}

/// The architecture facts the model needs, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// `model_type`: "llama", "mistral" or "qwen2".
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v projections (Qwen2, or Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama with `attention_bias`).
    pub o_bias: bool,
    /// Biases on gate/up/down (Llama `mlp_bias`).
    pub mlp_bias: bool,
    pub bos_token_id: Option<i64>,
    pub eos_token_ids: Vec<i64>,
    pub pad_token_id: Option<i64>,
    /// `torch_dtype` / `dtype` as written ("float32", "bfloat16", …), if any.
    pub torch_dtype: Option<String>,
}

/// `architectures` we read, with their `model_type`. The sequence-classification ones are the
/// same decoder with a `score` head instead of `lm_head` (reward models, `super::reward_model`).
const ARCHITECTURES: &[(&str, &str)] = &[
    ("LlamaForCausalLM", "llama"),
    ("MistralForCausalLM", "mistral"),
    ("Qwen2ForCausalLM", "qwen2"),
    ("LlamaForSequenceClassification", "llama"),
    ("MistralForSequenceClassification", "mistral"),
    ("Qwen2ForSequenceClassification", "qwen2"),
];

impl LlamaConfig {
    /// Reads `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<LlamaConfig> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).at(&path)?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(&path, format!("not valid JSON: {e}")))?;
        LlamaConfig::from_json(&v).map_err(|msg| Error::format(&path, msg))
    }

    /// Validates a parsed `config.json`; the message names the offending field.
    pub fn from_json(v: &Value) -> std::result::Result<LlamaConfig, String> {
        let m = v
            .as_object()
            .ok_or_else(|| "config is not a JSON object".to_string())?;
        let model_type = m
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or("field 'model_type' missing or not a string")?
            .to_string();
        if !ARCHITECTURES.iter().any(|(_, t)| *t == model_type) {
            return Err(format!(
                "field 'model_type': '{model_type}' is not supported (supported: llama, mistral, qwen2)"
            ));
        }
        if let Some(archs) = m.get("architectures").filter(|a| !a.is_null()) {
            let archs = archs
                .as_array()
                .ok_or("field 'architectures' is not a list")?;
            for a in archs {
                let a = a
                    .as_str()
                    .ok_or("field 'architectures' holds a non-string")?;
                if !ARCHITECTURES.iter().any(|(n, _)| *n == a) {
                    return Err(format!(
                        "field 'architectures': '{a}' is not supported (supported: {})",
                        ARCHITECTURES
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
        }
        let usize_field = |name: &str| -> std::result::Result<usize, String> {
            m.get(name)
                .and_then(Value::as_u64)
                .filter(|&x| x > 0)
                .map(|x| x as usize)
                .ok_or_else(|| format!("field '{name}' missing or not a positive integer"))
        };
        let vocab_size = usize_field("vocab_size")?;
        let hidden_size = usize_field("hidden_size")?;
        let intermediate_size = usize_field("intermediate_size")?;
        let num_hidden_layers = usize_field("num_hidden_layers")?;
        let num_attention_heads = usize_field("num_attention_heads")?;
        let num_key_value_heads = match m.get("num_key_value_heads") {
            None | Some(Value::Null) => num_attention_heads,
            Some(_) => usize_field("num_key_value_heads")?,
        };
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(format!(
                "field 'num_key_value_heads': {num_key_value_heads} does not divide \
                 num_attention_heads {num_attention_heads}"
            ));
        }
        let head_dim = match m.get("head_dim") {
            None | Some(Value::Null) => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(format!(
                        "field 'hidden_size': {hidden_size} is not a multiple of \
                         num_attention_heads {num_attention_heads} (and no head_dim given)"
                    ));
                }
                hidden_size / num_attention_heads
            }
            Some(_) => usize_field("head_dim")?,
        };
        if head_dim % 2 != 0 {
            return Err(format!(
                "field 'head_dim': {head_dim} is odd (RoPE needs pairs)"
            ));
        }
        let max_position_embeddings = usize_field("max_position_embeddings")?;
        let f64_field = |name: &str, default: f64| -> std::result::Result<f64, String> {
            match m.get(name) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x
                    .as_f64()
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .ok_or_else(|| format!("field '{name}' is not a positive number")),
            }
        };
        let bool_field = |name: &str, default: bool| -> std::result::Result<bool, String> {
            match m.get(name) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x
                    .as_bool()
                    .ok_or_else(|| format!("field '{name}' is not a boolean")),
            }
        };
        let rms_norm_eps = f64_field("rms_norm_eps", 1e-6)?;
        // transformers >= 5 writes `rope_parameters` ({rope_type, rope_theta, factor});
        // older versions `rope_theta` + `rope_scaling`.
        let (rope_theta, rope_scaling) = match m.get("rope_parameters").filter(|x| !x.is_null()) {
            Some(p) => {
                let p = p
                    .as_object()
                    .ok_or("field 'rope_parameters' is not an object")?;
                let theta = match p.get("rope_theta") {
                    Some(t) => t
                        .as_f64()
                        .filter(|t| *t > 0.0)
                        .ok_or("field 'rope_parameters.rope_theta' is not a positive number")?,
                    None => f64_field("rope_theta", 10000.0)?,
                };
                (theta, rope_scaling(p, "rope_parameters")?)
            }
            None => {
                let theta = f64_field("rope_theta", 10000.0)?;
                let scaling = match m.get("rope_scaling") {
                    None | Some(Value::Null) => RopeScaling::None,
                    Some(s) => rope_scaling(
                        s.as_object()
                            .ok_or("field 'rope_scaling' is not an object")?,
                        "rope_scaling",
                    )?,
                };
                (theta, scaling)
            }
        };
        let act = m
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("silu");
        if act != "silu" {
            return Err(format!(
                "field 'hidden_act': '{act}' is not supported (only 'silu', SwiGLU)"
            ));
        }
        if let Some(tp) = m.get("pretraining_tp").and_then(Value::as_u64) {
            if tp != 1 {
                return Err(format!(
                    "field 'pretraining_tp': {tp} is not supported (only 1)"
                ));
            }
        }
        // Sliding-window attention is not implemented: accept only configs that switch it off.
        let sliding = m.get("sliding_window").filter(|x| !x.is_null());
        let use_sliding = bool_field("use_sliding_window", model_type == "mistral")?;
        if sliding.is_some() && use_sliding {
            return Err(
                "field 'sliding_window': sliding-window attention is not supported".to_string(),
            );
        }
        for name in [
            "attn_logit_softcapping",
            "final_logit_softcapping",
            "query_pre_attn_scalar",
            "layer_types",
            "no_rope_layers",
        ] {
            if m.get(name).is_some_and(|x| !x.is_null()) && model_type == "llama" {
                return Err(format!("field '{name}' is not supported"));
            }
        }
        if let Some(f) = m.get("partial_rotary_factor").and_then(Value::as_f64) {
            if f != 1.0 {
                return Err(format!(
                    "field 'partial_rotary_factor': {f} is not supported (only 1.0)"
                ));
            }
        }
        let attention_bias = bool_field("attention_bias", false)?;
        let (qkv_bias, o_bias) = match model_type.as_str() {
            "qwen2" => (true, false),
            "mistral" => (false, false),
            _ => (attention_bias, attention_bias),
        };
        let mlp_bias = bool_field("mlp_bias", false)?;
        let tie_word_embeddings = bool_field("tie_word_embeddings", false)?;
        let id = |name: &str| m.get(name).and_then(Value::as_i64);
        let eos_token_ids = token_ids(m, "eos_token_id")?;
        let torch_dtype = m
            .get("torch_dtype")
            .or_else(|| m.get("dtype"))
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(LlamaConfig {
            model_type,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings,
            qkv_bias,
            o_bias,
            mlp_bias,
            bos_token_id: id("bos_token_id"),
            eos_token_ids,
            pad_token_id: id("pad_token_id"),
            torch_dtype,
        })
    }
}

/// An id or a list of ids (`eos_token_id` may be either).
pub(crate) fn token_ids(
    m: &Map<String, Value>,
    name: &str,
) -> std::result::Result<Vec<i64>, String> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_i64()
                    .ok_or_else(|| format!("field '{name}' holds a non-integer"))
            })
            .collect(),
        Some(x) => x
            .as_i64()
            .map(|i| vec![i])
            .ok_or_else(|| format!("field '{name}' is not an integer or a list of integers")),
    }
}

fn rope_scaling(s: &Map<String, Value>, field: &str) -> std::result::Result<RopeScaling, String> {
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => {
            let f = s
                .get("factor")
                .and_then(Value::as_f64)
                .filter(|f| f.is_finite() && *f > 0.0)
                .ok_or_else(|| {
                    format!("field '{field}.factor' missing or not a positive number")
                })?;
            Ok(RopeScaling::Linear(f))
        }
        other => Err(format!(
            "field '{field}': rope type '{other}' is not supported (supported: default, linear)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": 48, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "eos_token_id": 2, "bos_token_id": 1
        })
    }

    #[test]
    fn parses_and_defaults() {
        let c = LlamaConfig::from_json(&base()).unwrap();
        assert_eq!(c.head_dim, 8);
        assert_eq!(c.eos_token_ids, vec![2]);
        assert!(!c.tie_word_embeddings);
        assert_eq!(c.rope_scaling, RopeScaling::None);
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&str, Value, &str)] = &[
            ("model_type", "gemma".into(), "model_type"),
            ("hidden_act", "gelu".into(), "hidden_act"),
            (
                "rope_scaling",
                serde_json::json!({"rope_type": "yarn", "factor": 2.0}),
                "rope_scaling",
            ),
            ("num_key_value_heads", 3.into(), "num_key_value_heads"),
            (
                "architectures",
                serde_json::json!(["GemmaForCausalLM"]),
                "architectures",
            ),
            ("pretraining_tp", 2.into(), "pretraining_tp"),
        ];
        for (field, value, named) in cases {
            let mut v = base();
            v[*field] = value.clone();
            let e = LlamaConfig::from_json(&v).unwrap_err();
            assert!(e.contains(named), "{field}: {e}");
        }
        let mut v = base();
        v["rope_scaling"] = serde_json::json!({"type": "linear", "factor": 4.0});
        assert_eq!(
            LlamaConfig::from_json(&v).unwrap().rope_scaling,
            RopeScaling::Linear(4.0)
        );
    }
}
