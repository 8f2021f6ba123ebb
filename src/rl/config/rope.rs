//! The rotary embedding's parameters, read as transformers 5 reads them: `rope_scaling` (the
//! older spelling) or `rope_parameters` (`rope_type` or `type`, `rope_theta` inside or at the top
//! level), per layer type for Gemma 3 (`full_attention` / `sliding_attention`, or the older
//! `rope_theta` + `rope_local_base_freq` + `rope_scaling`).

use super::fields::{FieldResult, Fields};
use super::Family;

/// How the rotary embedding's frequencies are scaled.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// `rope_type` "default".
    None,
    /// Positions divided by `factor` (`"linear"`).
    Linear(f64),
    /// Llama 3.x (`"llama3"`): low frequencies divided by `factor`, high ones kept, a smooth
    /// ramp between the wavelengths `original_max_position_embeddings / low_freq_factor` and
    /// `… / high_freq_factor`.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// Phi-3's LongRoPE (`"longrope"`, also spelled `"su"` / `"yarn"` in Phi-3 configs): per-pair
    /// divisors of the frequencies, `short_factor` while a forward pass's positions stay within
    /// `original_max_position_embeddings`, `long_factor` beyond; cos/sin multiplied by
    /// `attention_factor`.
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        attention_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// One rotary embedding: base and scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub theta: f64,
    pub scaling: RopeScaling,
}

/// The rotary parameters of a config.
pub(super) struct RopeConfig {
    /// Full-attention layers (all layers unless `local` is set).
    pub global: Rope,
    /// Gemma 3's sliding-window layers.
    pub local: Option<Rope>,
    /// Leading dimensions of each head that are rotated (`head_dim · partial_rotary_factor`).
    pub rotary_dim: usize,
}

/// What the rope readers need from the rest of the config.
pub(super) struct RopeContext {
    pub family: Family,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
}

const SUPPORTED: &str = "default, linear, llama3, longrope";

pub(super) fn parse(f: &Fields, cx: &RopeContext) -> FieldResult<RopeConfig> {
    if cx.family == Family::Gemma3Text {
        return parse_gemma3(f, cx);
    }
    // transformers: `rope_scaling`, when given, wins over `rope_parameters`.
    let dict = match f.object("rope_scaling")? {
        Some(d) => Some(d),
        None => f.object("rope_parameters")?,
    };
    let rotary_dim = rotary_dim(f, dict.as_ref(), cx)?;
    let theta = theta(
        f,
        dict.as_ref(),
        "rope_theta",
        cx.family.default_rope_theta(),
    )?;
    let scaling = match &dict {
        None => RopeScaling::None,
        Some(d) => scaling(f, d, cx, rotary_dim)?,
    };
    Ok(RopeConfig {
        global: Rope { theta, scaling },
        local: None,
        rotary_dim,
    })
}

/// Gemma 3: a rope per layer type.
fn parse_gemma3(f: &Fields, cx: &RopeContext) -> FieldResult<RopeConfig> {
    let rotary_dim = cx.head_dim;
    if f.raw("partial_rotary_factor").is_some() {
        return Err("field 'partial_rotary_factor' is not supported for gemma3_text".into());
    }
    if let Some(p) = f.object("rope_parameters")? {
        let full = p.object("full_attention")?;
        let sliding = p.object("sliding_attention")?;
        let (Some(full), Some(sliding)) = (full, sliding) else {
            return Err("field 'rope_parameters' must hold 'full_attention' and \
                        'sliding_attention' objects for gemma3_text"
                .into());
        };
        let global = nested_rope(f, &full, "rope_theta", 1_000_000.0, cx, rotary_dim)?;
        let local = nested_rope(
            f,
            &sliding,
            "rope_local_base_freq",
            10_000.0,
            cx,
            rotary_dim,
        )?;
        return Ok(RopeConfig {
            global,
            local: Some(local),
            rotary_dim,
        });
    }
    // The older spelling: `rope_scaling` applies to the global (full-attention) layers only.
    let global = Rope {
        theta: f.f64_opt("rope_theta")?.unwrap_or(1_000_000.0),
        scaling: match f.object("rope_scaling")? {
            None => RopeScaling::None,
            Some(d) => scaling(f, &d, cx, rotary_dim)?,
        },
    };
    let local = Rope {
        theta: f.f64_opt("rope_local_base_freq")?.unwrap_or(10_000.0),
        scaling: RopeScaling::None,
    };
    Ok(RopeConfig {
        global,
        local: Some(local),
        rotary_dim,
    })
}

fn nested_rope(
    top: &Fields,
    d: &Fields,
    top_theta: &str,
    default_theta: f64,
    cx: &RopeContext,
    rotary_dim: usize,
) -> FieldResult<Rope> {
    Ok(Rope {
        theta: theta(top, Some(d), top_theta, default_theta)?,
        scaling: scaling(top, d, cx, rotary_dim)?,
    })
}

/// `rope_theta` inside the rope dict, else the top-level field `top_name`, else the default.
fn theta(top: &Fields, dict: Option<&Fields>, top_name: &str, default: f64) -> FieldResult<f64> {
    if let Some(t) = dict.map(|d| d.f64_opt("rope_theta")).transpose()?.flatten() {
        return Ok(t);
    }
    Ok(top.f64_opt(top_name)?.unwrap_or(default))
}

/// `head_dim · partial_rotary_factor` (truncated, as transformers' `int()`); only Phi-3 rotates
/// part of a head.
fn rotary_dim(top: &Fields, dict: Option<&Fields>, cx: &RopeContext) -> FieldResult<usize> {
    let inner = dict
        .map(|d| d.f64_opt("partial_rotary_factor"))
        .transpose()?
        .flatten();
    let factor = match inner {
        Some(x) => x,
        None => top.f64_opt("partial_rotary_factor")?.unwrap_or(1.0),
    };
    if factor == 1.0 {
        return Ok(cx.head_dim);
    }
    if cx.family != Family::Phi3 {
        return Err(format!(
            "field 'partial_rotary_factor': {factor} is not supported for {} (only 1.0)",
            cx.family.model_type()
        ));
    }
    if factor > 1.0 {
        return Err(format!(
            "field 'partial_rotary_factor': {factor} is above 1"
        ));
    }
    let dim = (cx.head_dim as f64 * factor) as usize;
    if dim == 0 || dim % 2 != 0 {
        return Err(format!(
            "field 'partial_rotary_factor': {factor} × head_dim {} gives {dim} rotated \
             dimensions, not a positive even number",
            cx.head_dim
        ));
    }
    Ok(dim)
}

fn scaling(
    top: &Fields,
    d: &Fields,
    cx: &RopeContext,
    rotary_dim: usize,
) -> FieldResult<RopeScaling> {
    let kind = match d.str_opt("rope_type")? {
        Some(k) => k,
        None => d.str_opt("type")?.unwrap_or("default"),
    };
    // Phi-3 configs call LongRoPE "su" (and "yarn"); transformers maps both to longrope and
    // accepts nothing else for Phi-3.
    let kind = match (cx.family, kind) {
        (Family::Phi3, "su" | "yarn") => "longrope",
        (Family::Phi3, k) if k != "default" && k != "longrope" => {
            return Err(format!(
                "field '{}': rope type '{k}' is not supported for phi3 (supported: default, \
                 longrope, su)",
                d.name("rope_type")
            ))
        }
        (_, k) => k,
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear(d.f64_req("factor")?)),
        "llama3" => llama3(top, d, cx),
        "longrope" => longrope(top, d, cx, rotary_dim),
        other => Err(format!(
            "field '{}': rope type '{other}' is not supported (supported: {SUPPORTED})",
            d.name("rope_type")
        )),
    }
}

/// The pre-training context length of llama3/longrope scaling: Phi-3's top-level field (default
/// 4096, it is a field of Phi3Config) wins, else a top-level field if the config has one, else
/// the rope dict's, else `max_position_embeddings` — transformers' `standardize_rope_params`.
fn original_max(top: &Fields, d: &Fields, cx: &RopeContext) -> FieldResult<usize> {
    if cx.family == Family::Phi3 {
        return Ok(top
            .usize_opt("original_max_position_embeddings")?
            .unwrap_or(4096));
    }
    if let Some(n) = top.usize_opt("original_max_position_embeddings")? {
        return Ok(n);
    }
    Ok(d.usize_opt("original_max_position_embeddings")?
        .unwrap_or(cx.max_position_embeddings))
}

fn llama3(top: &Fields, d: &Fields, cx: &RopeContext) -> FieldResult<RopeScaling> {
    let low = d.f64_req("low_freq_factor")?;
    let high = d.f64_req("high_freq_factor")?;
    if high <= low {
        return Err(format!(
            "field '{}': {high} is not above low_freq_factor {low}",
            d.name("high_freq_factor")
        ));
    }
    Ok(RopeScaling::Llama3 {
        factor: d.f64_req("factor")?,
        low_freq_factor: low,
        high_freq_factor: high,
        original_max_position_embeddings: original_max(top, d, cx)? as f64,
    })
}

fn longrope(
    top: &Fields,
    d: &Fields,
    cx: &RopeContext,
    rotary_dim: usize,
) -> FieldResult<RopeScaling> {
    let short_factor = d.f64_list("short_factor")?;
    let long_factor = d.f64_list("long_factor")?;
    for (name, list) in [
        ("short_factor", &short_factor),
        ("long_factor", &long_factor),
    ] {
        if list.len() != rotary_dim / 2 {
            return Err(format!(
                "field '{}' has {} entries, expected {} (half the rotated dimensions)",
                d.name(name),
                list.len(),
                rotary_dim / 2
            ));
        }
    }
    let orig = original_max(top, d, cx)?;
    // transformers: without `factor`, the ratio of the context lengths; without
    // `attention_factor`, sqrt(1 + ln(factor) / ln(original)) (1 when factor ≤ 1).
    let factor = match d.f64_opt("factor")? {
        Some(f) => f,
        None => cx.max_position_embeddings as f64 / orig as f64,
    };
    let attention_factor = match d.f64_opt("attention_factor")? {
        Some(a) => a,
        None if factor <= 1.0 => 1.0,
        None => (1.0 + factor.ln() / (orig as f64).ln()).sqrt(),
    };
    Ok(RopeScaling::LongRope {
        short_factor,
        long_factor,
        attention_factor,
        original_max_position_embeddings: orig,
    })
}
