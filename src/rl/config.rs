//! `config.json` of a supported decoder family, read strictly, with transformers' defaults for
//! absent fields: a field we do not implement is an error that names it, never silently ignored.
//!
//! Families (`model_type`): llama (also Llama 3.x RoPE), mistral (sliding window), qwen2, qwen3,
//! gemma, gemma2, gemma3_text, phi3. What each one changes in the decoder is in [`Family`]'s
//! methods and the fields of [`ModelConfig`]; docs/RL.md has the table.

mod fields;
mod rope;

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use fields::{FieldResult, Fields};
pub use rope::{Rope, RopeScaling};

/// A decoder family, by `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma,
    Gemma2,
    Gemma3Text,
    Phi3,
}

impl Family {
    pub const ALL: [Family; 8] = [
        Family::Llama,
        Family::Mistral,
        Family::Qwen2,
        Family::Qwen3,
        Family::Gemma,
        Family::Gemma2,
        Family::Gemma3Text,
        Family::Phi3,
    ];

    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Gemma => "gemma",
            Family::Gemma2 => "gemma2",
            Family::Gemma3Text => "gemma3_text",
            Family::Phi3 => "phi3",
        }
    }

    pub fn from_model_type(s: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.model_type() == s)
    }

    /// The transformers class of the causal LM.
    pub fn causal_lm_class(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
            Family::Gemma => "GemmaForCausalLM",
            Family::Gemma2 => "Gemma2ForCausalLM",
            Family::Gemma3Text => "Gemma3ForCausalLM",
            Family::Phi3 => "Phi3ForCausalLM",
        }
    }

    /// The transformers class of the sequence classifier (a reward model: the same decoder,
    /// a `score` head instead of `lm_head`).
    pub fn sequence_classification_class(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForSequenceClassification",
            Family::Mistral => "MistralForSequenceClassification",
            Family::Qwen2 => "Qwen2ForSequenceClassification",
            Family::Qwen3 => "Qwen3ForSequenceClassification",
            Family::Gemma => "GemmaForSequenceClassification",
            Family::Gemma2 => "Gemma2ForSequenceClassification",
            Family::Gemma3Text => "Gemma3TextForSequenceClassification",
            Family::Phi3 => "Phi3ForSequenceClassification",
        }
    }

    /// Gemma style: RMSNorm as x·(1 + w) in f32, embeddings × √hidden, GeGLU.
    pub fn gemma_style(self) -> bool {
        matches!(self, Family::Gemma | Family::Gemma2 | Family::Gemma3Text)
    }

    /// Four norms per layer (input, post-attention, pre- and post-feed-forward).
    pub fn sandwich_norms(self) -> bool {
        matches!(self, Family::Gemma2 | Family::Gemma3Text)
    }

    /// Per-head RMSNorm of queries and keys before RoPE.
    pub fn qk_norm(self) -> bool {
        matches!(self, Family::Qwen3 | Family::Gemma3Text)
    }

    /// `qkv_proj` and `gate_up_proj` fused in one tensor each, as Phi-3 stores them.
    pub fn fused_projections(self) -> bool {
        self == Family::Phi3
    }

    fn default_rope_theta(self) -> f64 {
        10_000.0
    }

    /// transformers' class defaults for fields a config may omit.
    fn defaults(self) -> Defaults {
        let (kv, head_dim, tie, eps, window) = match self {
            Family::Llama => (KvDefault::Heads, None, false, 1e-6, None),
            Family::Mistral => (KvDefault::Fixed(8), None, false, 1e-6, Some(4096)),
            Family::Qwen2 => (KvDefault::Fixed(32), None, false, 1e-6, Some(4096)),
            Family::Qwen3 => (KvDefault::Fixed(32), Some(128), false, 1e-6, Some(4096)),
            Family::Gemma => (KvDefault::Fixed(16), Some(256), true, 1e-6, None),
            Family::Gemma2 => (KvDefault::Fixed(4), Some(256), true, 1e-6, Some(4096)),
            Family::Gemma3Text => (KvDefault::Fixed(4), Some(256), true, 1e-6, Some(4096)),
            Family::Phi3 => (KvDefault::Heads, None, false, 1e-5, None),
        };
        Defaults {
            num_key_value_heads: kv,
            head_dim,
            tie_word_embeddings: tie,
            rms_norm_eps: eps,
            sliding_window: window,
        }
    }
}

enum KvDefault {
    /// As many as attention heads.
    Heads,
    Fixed(usize),
}

struct Defaults {
    /// When the field is absent (null always means "as many as attention heads").
    num_key_value_heads: KvDefault,
    /// `None`: hidden_size / num_attention_heads.
    head_dim: Option<usize>,
    tie_word_embeddings: bool,
    rms_norm_eps: f64,
    sliding_window: Option<usize>,
}

/// The MLP's activation (`hidden_act` / `hidden_activation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU (`silu`).
    Silu,
    /// GeGLU with the tanh approximation (`gelu_pytorch_tanh`; Gemma's legacy `gelu`).
    GeluTanh,
    /// GeGLU with the exact GELU (`gelu` in Gemma 2/3).
    Gelu,
}

/// What a layer's attention sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerType {
    /// Every earlier position.
    Full,
    /// The last `sliding_window` positions (itself included), when the config has a window.
    Sliding,
}

/// The architecture facts the model needs, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub family: Family,
    /// `model_type` as written.
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    /// RoPE of the full-attention layers (of every layer unless `local_rope` is set).
    pub rope: Rope,
    /// Gemma 3: RoPE of the sliding-window layers (its own base).
    pub local_rope: Option<Rope>,
    /// Leading dimensions of each head that RoPE rotates (`head_dim` unless Phi-3's
    /// `partial_rotary_factor` < 1).
    pub rotary_dim: usize,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on the q/k/v projections (Qwen2; `attention_bias` where the family has it).
    pub qkv_bias: bool,
    /// Bias on the output projection (`attention_bias` of Llama, Qwen3, Gemma*).
    pub o_bias: bool,
    /// Biases on gate/up/down (Llama `mlp_bias`).
    pub mlp_bias: bool,
    pub activation: Activation,
    /// Multiplier of the attention scores: `head_dim^-½`, or `query_pre_attn_scalar^-½`
    /// (Gemma 2/3).
    pub attention_scale: f64,
    /// Gemma 2: scores → tanh(scores / c) · c before the mask.
    pub attn_logit_softcapping: Option<f64>,
    /// Gemma 2/3: logits → tanh(logits / c) · c.
    pub final_logit_softcapping: Option<f64>,
    /// The window of [`LayerType::Sliding`] layers (`None`: they attend to everything).
    pub sliding_window: Option<usize>,
    /// One entry per layer.
    pub layer_types: Vec<LayerType>,
    pub bos_token_id: Option<i64>,
    pub eos_token_ids: Vec<i64>,
    pub pad_token_id: Option<i64>,
    /// `torch_dtype` / `dtype` as written ("float32", "bfloat16", …), if any.
    pub torch_dtype: Option<String>,
}

/// Sizes of the decoder.
struct Dims {
    vocab: usize,
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    max_positions: usize,
}

impl ModelConfig {
    /// Reads `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<ModelConfig> {
        let path = dir.join("config.json");
        // A FIFO or device is refused, not waited on; a real config.json is a few KB.
        let text = crate::io::read_text(&path, 16 << 20)?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(&path, format!("not valid JSON: {e}")))?;
        ModelConfig::from_json(&v).map_err(|msg| Error::format(&path, msg))
    }

    /// Validates a parsed `config.json`; the message names the offending field.
    pub fn from_json(v: &Value) -> std::result::Result<ModelConfig, String> {
        let f = Fields::new(
            v.as_object()
                .ok_or_else(|| "config is not a JSON object".to_string())?,
        );
        let family = family(&f)?;
        check_architectures(&f, family)?;
        check_unsupported(&f, family)?;
        let d = family.defaults();
        let dims = dims(&f, &d)?;
        let rope = rope::parse(
            &f,
            &rope::RopeContext {
                family,
                head_dim: dims.head_dim,
                max_position_embeddings: dims.max_positions,
            },
        )?;
        let (sliding_window, layer_types) = attention_layout(&f, family, &d, dims.layers)?;
        let (qkv_bias, o_bias, mlp_bias) = biases(&f, family)?;
        let (attn_cap, final_cap) = softcaps(&f, family)?;
        Ok(ModelConfig {
            family,
            model_type: family.model_type().to_string(),
            vocab_size: dims.vocab,
            hidden_size: dims.hidden,
            intermediate_size: dims.intermediate,
            num_hidden_layers: dims.layers,
            num_attention_heads: dims.heads,
            num_key_value_heads: dims.kv_heads,
            head_dim: dims.head_dim,
            rms_norm_eps: f.f64_opt("rms_norm_eps")?.unwrap_or(d.rms_norm_eps),
            rope: rope.global,
            local_rope: rope.local,
            rotary_dim: rope.rotary_dim,
            max_position_embeddings: dims.max_positions,
            tie_word_embeddings: f.bool_or("tie_word_embeddings", d.tie_word_embeddings)?,
            qkv_bias,
            o_bias,
            mlp_bias,
            activation: activation(&f, family)?,
            attention_scale: attention_scale(&f, family, dims.head_dim)?,
            attn_logit_softcapping: attn_cap,
            final_logit_softcapping: final_cap,
            sliding_window,
            layer_types,
            bos_token_id: f.token_id("bos_token_id")?,
            eos_token_ids: f.token_ids("eos_token_id")?,
            pad_token_id: f.token_id("pad_token_id")?,
            torch_dtype: match f.str_opt("torch_dtype")? {
                Some(s) => Some(s.to_string()),
                None => f.str_opt("dtype")?.map(str::to_string),
            },
        })
    }

    /// The sliding window of layer `layer`, if it has one.
    pub fn window(&self, layer: usize) -> Option<usize> {
        match self.layer_types.get(layer) {
            Some(LayerType::Sliding) => self.sliding_window,
            _ => None,
        }
    }

    /// Phi-3 with LongRoPE: transformers' generation drops the KV cache when the (padded)
    /// sequence first reaches this many cached positions plus the new token, and recomputes it
    /// with the long factors (`Phi3ForCausalLM.prepare_inputs_for_generation`); our
    /// generation does the same, so greedy outputs agree.
    pub fn cache_recompute_at(&self) -> Option<usize> {
        match (&self.family, &self.rope.scaling) {
            (
                Family::Phi3,
                RopeScaling::LongRope {
                    original_max_position_embeddings,
                    ..
                },
            ) => Some(*original_max_position_embeddings),
            _ => None,
        }
    }

    /// The rotary embedding of layer `layer`.
    pub fn rope_of(&self, layer: usize) -> &Rope {
        match (&self.local_rope, self.layer_types.get(layer)) {
            (Some(local), Some(LayerType::Sliding)) => local,
            _ => &self.rope,
        }
    }
}

fn family(f: &Fields) -> FieldResult<Family> {
    let t = f
        .str_opt("model_type")?
        .ok_or("field 'model_type' missing or not a string")?;
    Family::from_model_type(t).ok_or_else(|| {
        let hint = if t == "gemma3" {
            " (a multimodal Gemma 3; its text model, model_type gemma3_text, is)"
        } else {
            ""
        };
        format!(
            "field 'model_type': '{t}' is not supported{hint} (supported: {})",
            Family::ALL.map(Family::model_type).join(", ")
        )
    })
}

/// Each listed architecture must be the family's causal LM or sequence classifier.
fn check_architectures(f: &Fields, family: Family) -> FieldResult<()> {
    let Some(archs) = f.str_list("architectures")? else {
        return Ok(());
    };
    let ok = [
        family.causal_lm_class(),
        family.sequence_classification_class(),
    ];
    match archs.into_iter().find(|a| !ok.contains(a)) {
        None => Ok(()),
        Some(a) => Err(format!(
            "field 'architectures': '{a}' is not supported for model_type '{}' (supported: {})",
            family.model_type(),
            ok.join(", ")
        )),
    }
}

/// Fields of other families (or options of this one) that change the computation and that we
/// do not implement for `family`.
fn check_unsupported(f: &Fields, family: Family) -> FieldResult<()> {
    let gemma23 = matches!(family, Family::Gemma2 | Family::Gemma3Text);
    let foreign: &[(&str, bool)] = &[
        ("attn_logit_softcapping", !gemma23),
        ("final_logit_softcapping", !gemma23),
        ("query_pre_attn_scalar", !gemma23),
        (
            "layer_types",
            matches!(
                family,
                Family::Llama | Family::Mistral | Family::Gemma | Family::Phi3
            ),
        ),
        (
            "sliding_window",
            matches!(family, Family::Llama | Family::Gemma),
        ),
        ("no_rope_layers", true),
    ];
    for (name, refused) in foreign {
        if *refused && f.raw(name).is_some() {
            return Err(format!(
                "field '{name}' is not supported for {}",
                family.model_type()
            ));
        }
    }
    if f.bool_or("use_bidirectional_attention", false)? {
        return Err(
            "field 'use_bidirectional_attention': bidirectional attention is not \
                    supported (only causal)"
                .into(),
        );
    }
    if let Some(tp) = f.raw("pretraining_tp").and_then(Value::as_u64) {
        if tp != 1 {
            return Err(format!(
                "field 'pretraining_tp': {tp} is not supported (only 1)"
            ));
        }
    }
    Ok(())
}

fn dims(f: &Fields, d: &Defaults) -> FieldResult<Dims> {
    let hidden = f.usize_req("hidden_size")?;
    let heads = f.usize_req("num_attention_heads")?;
    let kv_heads = if f.is_null("num_key_value_heads") {
        heads
    } else {
        match (f.usize_opt("num_key_value_heads")?, &d.num_key_value_heads) {
            (Some(n), _) => n,
            (None, KvDefault::Heads) => heads,
            (None, KvDefault::Fixed(n)) => *n,
        }
    };
    if heads % kv_heads != 0 {
        return Err(format!(
            "field 'num_key_value_heads': {kv_heads} does not divide num_attention_heads {heads}"
        ));
    }
    let head_dim = match (f.usize_opt("head_dim")?, d.head_dim) {
        (Some(n), _) => n,
        (None, Some(n)) if !f.is_null("head_dim") => n,
        (None, _) => {
            if hidden % heads != 0 {
                return Err(format!(
                    "field 'hidden_size': {hidden} is not a multiple of num_attention_heads \
                     {heads} (and no head_dim given)"
                ));
            }
            hidden / heads
        }
    };
    if head_dim % 2 != 0 {
        return Err(format!(
            "field 'head_dim': {head_dim} is odd (RoPE needs pairs)"
        ));
    }
    let d = Dims {
        vocab: f.usize_req("vocab_size")?,
        hidden,
        intermediate: f.usize_req("intermediate_size")?,
        layers: f.usize_req("num_hidden_layers")?,
        heads,
        kv_heads,
        head_dim,
        max_positions: f.usize_req("max_position_embeddings")?,
    };
    // config.json comes with downloaded models: sizes past these limits (far above any real
    // model) are refused before anything is sized by them. The tensors present bound them
    // further ([`ModelConfig::check_tensors`]).
    for (key, v, max) in [
        ("num_hidden_layers", d.layers, MAX_LAYERS),
        ("vocab_size", d.vocab, MAX_VOCAB),
        ("hidden_size", d.hidden, MAX_WIDTH),
        ("intermediate_size", d.intermediate, MAX_WIDTH),
        ("num_attention_heads", d.heads, MAX_HEADS),
        ("num_key_value_heads", d.kv_heads, MAX_HEADS),
        ("head_dim", d.head_dim, MAX_WIDTH),
        (
            "num_attention_heads × head_dim",
            d.heads.saturating_mul(d.head_dim),
            MAX_WIDTH,
        ),
        ("max_position_embeddings", d.max_positions, MAX_POSITIONS),
    ] {
        if v > max {
            return Err(format!(
                "field '{key}': {v} is more than the limit of {max} (no model that size can be \
                 loaded here)"
            ));
        }
    }
    Ok(d)
}

/// Limits of config.json's sizes (see [`dims`]).
pub const MAX_LAYERS: usize = 4096;
pub const MAX_VOCAB: usize = 1 << 24;
pub const MAX_WIDTH: usize = 1 << 20;
pub const MAX_HEADS: usize = 1 << 14;
pub const MAX_POSITIONS: usize = 1 << 30;

fn activation(f: &Fields, family: Family) -> FieldResult<Activation> {
    // Gemma 2/3 read `hidden_activation`; the others `hidden_act`.
    let (field, default) = match family {
        Family::Gemma2 | Family::Gemma3Text => ("hidden_activation", "gelu_pytorch_tanh"),
        Family::Gemma => ("hidden_act", "gelu_pytorch_tanh"),
        _ => ("hidden_act", "silu"),
    };
    let act = f.str_opt(field)?.unwrap_or(default);
    let parsed = match (family.gemma_style(), act) {
        (false, "silu") => Some(Activation::Silu),
        (true, "gelu_pytorch_tanh") => Some(Activation::GeluTanh),
        // transformers rewrites Gemma 1's legacy "gelu" to the tanh approximation.
        (true, "gelu") if family == Family::Gemma => Some(Activation::GeluTanh),
        (true, "gelu") => Some(Activation::Gelu),
        _ => None,
    };
    parsed.ok_or_else(|| {
        let supported = if family.gemma_style() {
            "gelu_pytorch_tanh, gelu"
        } else {
            "silu"
        };
        format!(
            "field '{field}': '{act}' is not supported for {} (supported: {supported})",
            family.model_type()
        )
    })
}

/// Which layers slide, and the window: Mistral and Phi-3 slide everywhere when
/// `sliding_window` is set; Qwen2/3 only with `use_sliding_window`, on the layers from
/// `max_window_layers` on (or as `layer_types` says); Gemma 2 alternates (`layer_types`, else
/// even layers slide); Gemma 3 follows `layer_types` or `sliding_window_pattern` (every n-th
/// layer global).
fn attention_layout(
    f: &Fields,
    family: Family,
    d: &Defaults,
    layers: usize,
) -> FieldResult<(Option<usize>, Vec<LayerType>)> {
    let mut window = if f.is_null("sliding_window") {
        None
    } else {
        match f.usize_opt("sliding_window")? {
            Some(w) => Some(w),
            None => d.sliding_window,
        }
    };
    let derived: Vec<LayerType> = match family {
        Family::Llama | Family::Gemma => vec![LayerType::Full; layers],
        Family::Mistral | Family::Phi3 => vec![LayerType::Sliding; layers],
        Family::Qwen2 | Family::Qwen3 => {
            if !f.bool_or("use_sliding_window", false)? {
                window = None;
            }
            let from = f.count_opt("max_window_layers")?.unwrap_or(28);
            (0..layers)
                .map(|i| match window.is_some() && i >= from {
                    true => LayerType::Sliding,
                    false => LayerType::Full,
                })
                .collect()
        }
        Family::Gemma2 => pattern(layers, 2),
        Family::Gemma3Text => {
            let every = f.usize_opt("sliding_window_pattern")?.unwrap_or(6);
            pattern(layers, every)
        }
    };
    let types = match f.str_list("layer_types")? {
        None => derived,
        Some(list) => layer_types(&list, layers)?,
    };
    Ok((window, types))
}

/// Layer i is global when (i + 1) is a multiple of `every`, else sliding.
fn pattern(layers: usize, every: usize) -> Vec<LayerType> {
    (0..layers)
        .map(|i| match (i + 1) % every {
            0 => LayerType::Full,
            _ => LayerType::Sliding,
        })
        .collect()
}

fn layer_types(list: &[&str], layers: usize) -> FieldResult<Vec<LayerType>> {
    if list.len() != layers {
        return Err(format!(
            "field 'layer_types' has {} entries for num_hidden_layers {layers}",
            list.len()
        ));
    }
    list.iter()
        .map(|t| match *t {
            "full_attention" => Ok(LayerType::Full),
            "sliding_attention" => Ok(LayerType::Sliding),
            other => Err(format!(
                "field 'layer_types': '{other}' is not supported (supported: full_attention, \
                 sliding_attention)"
            )),
        })
        .collect()
}

/// (q/k/v bias, o bias, MLP bias). transformers hard-codes them for Mistral (none), Qwen2 (q/k/v)
/// and Phi-3 (none), and ignores `attention_bias` there; so do we.
fn biases(f: &Fields, family: Family) -> FieldResult<(bool, bool, bool)> {
    let attention_bias = f.bool_or("attention_bias", false)?;
    Ok(match family {
        Family::Qwen2 => (true, false, false),
        Family::Mistral | Family::Phi3 => (false, false, false),
        Family::Llama => (
            attention_bias,
            attention_bias,
            f.bool_or("mlp_bias", false)?,
        ),
        _ => (attention_bias, attention_bias, false),
    })
}

fn attention_scale(f: &Fields, family: Family, head_dim: usize) -> FieldResult<f64> {
    let scalar = match family {
        Family::Gemma2 | Family::Gemma3Text => f.f64_opt("query_pre_attn_scalar")?.unwrap_or(256.0),
        _ => head_dim as f64,
    };
    Ok(scalar.powf(-0.5))
}

/// (attention-logit cap, final-logit cap): Gemma 2 defaults to (50, 30), Gemma 3 to none; null
/// switches one off.
fn softcaps(f: &Fields, family: Family) -> FieldResult<(Option<f64>, Option<f64>)> {
    let (attn, fin) = match family {
        Family::Gemma2 => (Some(50.0), Some(30.0)),
        _ => (None, None),
    };
    let read = |name: &str, default: Option<f64>| -> FieldResult<Option<f64>> {
        if f.is_null(name) {
            return Ok(None);
        }
        Ok(f.f64_opt(name)?.or(default))
    };
    Ok((
        read("attn_logit_softcapping", attn)?,
        read("final_logit_softcapping", fin)?,
    ))
}

#[cfg(test)]
mod tests;
