//! mergekit's configuration language (as of mergekit 0.1.5), read strictly: `models` (each with
//! `parameters`) or `slices` of `sources` with `layer_range`, `base_model`, `merge_method`,
//! global `parameters`, `dtype`, `out_dtype`, `tokenizer_source`, `chat_template`. Parameter
//! values are scalars, gradients (lists interpolated over the layers of a slice) or filtered
//! conditionals (`{filter: self_attn, value: …}`, first match wins). Every key, method and
//! parameter is checked before any checkpoint is opened: an unknown one is an error naming it.
//!
//! [`methods`] knows each method's parameters; [`program`] turns a recipe and the inputs'
//! headers into one operation per output tensor.

pub mod methods;
pub mod params;
pub mod program;

use serde_yaml_ng::Value;

use crate::error::{Error, Result};
use crate::io::{DType, OutDType};
pub use params::{Scalar, Setting};

/// Parameters as written (`name → setting`), in recipe order.
pub type Params = Vec<(String, Setting)>;

/// One input of a slice (or one of `models`: then without a layer range).
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub model: String,
    pub layer_range: Option<(usize, usize)>,
    pub params: Params,
    /// Where it is in the recipe, for messages (`models[1]`, `slices[0].sources[1]`).
    pub at: String,
}

/// One output slice.
#[derive(Debug, Clone, PartialEq)]
pub struct Slice {
    pub sources: Vec<Source>,
    pub base_model: Option<String>,
    pub params: Params,
    pub at: String,
}

/// Where the output's tokenizer comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenizerSource {
    Base,
    Model(String),
}

/// A parsed recipe.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    /// `models:` (true) or `slices:`.
    pub models_form: bool,
    pub slices: Vec<Slice>,
    pub merge_method: String,
    pub base_model: Option<String>,
    pub params: Params,
    pub dtype: Option<DType>,
    pub out_dtype: Option<DType>,
    pub tokenizer_source: Option<TokenizerSource>,
    pub chat_template: Option<String>,
    /// The recipe's text, for the model card.
    pub text: String,
}

const TOP_KEYS: &[&str] = &[
    "models",
    "slices",
    "base_model",
    "merge_method",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "chat_template",
];

fn bad(at: &str, msg: impl std::fmt::Display) -> Error {
    Error::setting(at, msg.to_string())
}

fn key_str<'a>(k: &'a Value, at: &str) -> Result<&'a str> {
    k.as_str()
        .ok_or_else(|| bad(at, format!("keys must be strings, got {k:?}")))
}

/// The mapping at `at`, its keys checked against `known`.
fn mapping<'a>(v: &'a Value, at: &str, known: &[&str]) -> Result<Vec<(&'a str, &'a Value)>> {
    let m = v
        .as_mapping()
        .ok_or_else(|| bad(at, "expected a mapping (key: value lines)"))?;
    let mut out = Vec::with_capacity(m.len());
    for (k, val) in m {
        let k = key_str(k, at)?;
        if !known.contains(&k) {
            let sep = if at.is_empty() { "" } else { "." };
            return Err(bad(
                &format!("{at}{sep}{k}"),
                format!("unknown key (known here: {})", known.join(", ")),
            ));
        }
        out.push((k, val));
    }
    Ok(out)
}

fn string(v: &Value, at: &str) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        _ => Err(bad(at, "expected a string")),
    }
}

/// A model reference: a path or hub id (`org/name`, `org/name@revision`), a PEFT adapter folder
/// (read on the base its config names), or mergekit's `BASE+ADAPTER` (the base with that LoRA
/// adapter applied: [`split_lora`]). Mapping forms are refused.
fn model_ref(v: &Value, at: &str) -> Result<String> {
    let s = string(v, at)?;
    if s.trim().is_empty() {
        return Err(bad(at, "empty model reference"));
    }
    if s.contains('+') && split_lora(&s).is_none() {
        return Err(bad(
            at,
            format!("'{s}': a LoRA reference is BASE+ADAPTER, both non-empty"),
        ));
    }
    Ok(s)
}

/// mergekit's LoRA reference `BASE+ADAPTER` (split at the first '+', as mergekit does): the
/// base model and the PEFT adapter to apply to it. None: not such a reference.
pub fn split_lora(spec: &str) -> Option<(&str, &str)> {
    let (base, adapter) = spec.split_once('+')?;
    (!base.trim().is_empty() && !adapter.trim().is_empty()).then_some((base, adapter))
}

fn dtype(v: &Value, at: &str) -> Result<DType> {
    let s = string(v, at)?;
    match s.parse::<OutDType>() {
        Ok(OutDType::To(d)) => Ok(d),
        _ => Err(bad(
            at,
            format!("'{s}': expected bfloat16, float16, float32 or float64"),
        )),
    }
}

fn params(v: &Value, at: &str) -> Result<Params> {
    if v.is_null() {
        return Ok(Vec::new());
    }
    let m = v
        .as_mapping()
        .ok_or_else(|| bad(at, "expected a mapping of parameter: value"))?;
    let mut out = Vec::with_capacity(m.len());
    for (k, val) in m {
        let k = key_str(k, at)?;
        out.push((k.to_string(), params::setting(val, &format!("{at}.{k}"))?));
    }
    Ok(out)
}

fn layer_range(v: &Value, at: &str) -> Result<(usize, usize)> {
    let seq = v
        .as_sequence()
        .filter(|s| s.len() == 2)
        .ok_or_else(|| bad(at, "expected [start, end]"))?;
    let n = |x: &Value| {
        x.as_u64()
            .map(|x| x as usize)
            .ok_or_else(|| bad(at, "layer indices must be whole numbers ≥ 0"))
    };
    let (a, b) = (n(&seq[0])?, n(&seq[1])?);
    if a >= b {
        return Err(bad(
            at,
            format!("[{a}, {b}] is empty (start must be below end)"),
        ));
    }
    Ok((a, b))
}

fn source(v: &Value, at: &str, with_range: bool) -> Result<Source> {
    let known: &[&str] = if with_range {
        &["model", "layer_range", "parameters"]
    } else {
        &["model", "parameters"]
    };
    let mut s = Source {
        model: String::new(),
        layer_range: None,
        params: Vec::new(),
        at: at.to_string(),
    };
    for (k, val) in mapping(v, at, known)? {
        let kat = format!("{at}.{k}");
        match k {
            "model" => s.model = model_ref(val, &kat)?,
            "layer_range" => s.layer_range = Some(layer_range(val, &kat)?),
            "parameters" => s.params = params(val, &kat)?,
            _ => unreachable!("checked by mapping()"),
        }
    }
    if s.model.is_empty() {
        return Err(bad(&format!("{at}.model"), "missing"));
    }
    if with_range && s.layer_range.is_none() {
        return Err(bad(&format!("{at}.layer_range"), "missing"));
    }
    Ok(s)
}

fn seq<'a>(v: &'a Value, at: &str) -> Result<&'a Vec<Value>> {
    v.as_sequence()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad(at, "expected a non-empty list"))
}

/// The `slices` list.
fn parse_slices(list: &Value) -> Result<Vec<Slice>> {
    let mut out = Vec::new();
    for (i, v) in seq(list, "slices")?.iter().enumerate() {
        let at = format!("slices[{i}]");
        let mut sl = Slice {
            sources: Vec::new(),
            base_model: None,
            params: Vec::new(),
            at: at.clone(),
        };
        for (k, val) in mapping(v, &at, &["sources", "base_model", "parameters"])? {
            let kat = format!("{at}.{k}");
            match k {
                "sources" => {
                    for (j, sv) in seq(val, &kat)?.iter().enumerate() {
                        sl.sources.push(source(sv, &format!("{kat}[{j}]"), true)?);
                    }
                }
                "base_model" => sl.base_model = Some(model_ref(val, &kat)?),
                "parameters" => sl.params = params(val, &kat)?,
                _ => unreachable!("checked by mapping()"),
            }
        }
        if sl.sources.is_empty() {
            return Err(bad(&format!("{at}.sources"), "missing"));
        }
        let lens: Vec<usize> = sl
            .sources
            .iter()
            .filter_map(|s| s.layer_range.map(|(a, b)| b - a))
            .collect();
        if lens.iter().any(|&l| l != lens[0]) {
            return Err(bad(
                &format!("{at}.sources"),
                format!("every source of a slice must span as many layers (got {lens:?})"),
            ));
        }
        out.push(sl);
    }
    Ok(out)
}

impl Recipe {
    /// Parses and checks a recipe (keys, method, parameters); `file` names it in messages.
    pub fn parse(text: &str, file: &str) -> Result<Recipe> {
        Self::parse_inner(text).map_err(|e| match e {
            Error::Setting { field, msg } => Error::setting(format!("{file}: {field}"), msg),
            e => e,
        })
    }

    fn parse_inner(text: &str) -> Result<Recipe> {
        let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| {
            bad(
                "YAML",
                e.to_string().lines().next().unwrap_or("not valid YAML"),
            )
        })?;
        let mut r = Recipe {
            models_form: false,
            slices: Vec::new(),
            merge_method: String::new(),
            base_model: None,
            params: Vec::new(),
            dtype: None,
            out_dtype: None,
            tokenizer_source: None,
            chat_template: None,
            text: text.to_string(),
        };
        let (mut models, mut slices) = (None, None);
        for (k, v) in mapping(&doc, "", TOP_KEYS)? {
            match k {
                "models" => models = Some(v),
                "slices" => slices = Some(v),
                "base_model" => r.base_model = Some(model_ref(v, k)?),
                "merge_method" => r.merge_method = string(v, k)?,
                "parameters" => r.params = params(v, k)?,
                "dtype" => r.dtype = Some(dtype(v, k)?),
                "out_dtype" => r.out_dtype = Some(dtype(v, k)?),
                "tokenizer_source" => {
                    let s = string(v, k)?;
                    r.tokenizer_source = Some(match s.as_str() {
                        "base" => TokenizerSource::Base,
                        "union" => {
                            return Err(bad(
                                k,
                                "'union' (a vocabulary merged from every model) is not \
                                 supported: use 'base' or a model",
                            ))
                        }
                        _ => TokenizerSource::Model(model_ref(v, k)?),
                    })
                }
                "chat_template" => {
                    let t = string(v, k)?;
                    if t != "auto" && !t.contains("{{") && !t.contains("{%") {
                        return Err(bad(
                            k,
                            format!(
                                "'{t}': built-in template names are not supported; give the \
                                 Jinja template itself, or 'auto' (the tokenizer's own)"
                            ),
                        ));
                    }
                    r.chat_template = Some(t);
                }
                _ => unreachable!("checked by mapping()"),
            }
        }
        if r.merge_method.is_empty() {
            return Err(bad("merge_method", "missing"));
        }
        match (models, slices) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(bad(
                    "models/slices",
                    "give exactly one of 'models' or 'slices'",
                ))
            }
            (Some(m), None) => {
                r.models_form = true;
                let sources = seq(m, "models")?
                    .iter()
                    .enumerate()
                    .map(|(i, v)| source(v, &format!("models[{i}]"), false))
                    .collect::<Result<Vec<_>>>()?;
                r.slices.push(Slice {
                    sources,
                    base_model: None,
                    params: Vec::new(),
                    at: "models".into(),
                });
            }
            (None, Some(s)) => r.slices = parse_slices(s)?,
        }
        methods::check(&r)?;
        Ok(r)
    }

    /// The base model of slice `i` (its own, else the recipe's).
    pub fn base_of(&self, i: usize) -> Option<&str> {
        self.slices[i]
            .base_model
            .as_deref()
            .or(self.base_model.as_deref())
    }

    /// Every model the recipe names, each once, in order of first mention (base first).
    pub fn models(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut add = |m: &str| {
            if !out.iter().any(|x| x == m) {
                out.push(m.to_string());
            }
        };
        if let Some(b) = &self.base_model {
            add(b);
        }
        for s in &self.slices {
            if let Some(b) = &s.base_model {
                add(b);
            }
            for src in &s.sources {
                add(&src.model);
            }
        }
        if let Some(TokenizerSource::Model(m)) = &self.tokenizer_source {
            add(m);
        }
        out
    }

    /// The recipe as JSON for the model card and the safetensors metadata.
    pub fn to_json(&self) -> serde_json::Value {
        let doc: serde_json::Value =
            serde_yaml_ng::from_str(&self.text).unwrap_or(serde_json::Value::Null);
        serde_json::json!({ "method": self.merge_method, "mergekit_recipe": doc })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Recipe::parse(text, "r.yaml").unwrap_err().to_string()
    }

    #[test]
    fn parses_models_and_slices() {
        let r = Recipe::parse(
            "models:\n  - model: a\n    parameters: {weight: 0.5, density: [0.2, 0.8]}\n  - model: b\n    parameters:\n      weight:\n        - filter: self_attn\n          value: 0.1\n        - value: 1\nmerge_method: ties\nbase_model: c\nparameters: {normalize: true}\ndtype: float32\nout_dtype: bfloat16\ntokenizer_source: base\n",
            "r.yaml",
        )
        .unwrap();
        assert!(r.models_form);
        assert_eq!(r.slices[0].sources.len(), 2);
        assert_eq!(r.models(), vec!["c", "a", "b"]);
        assert_eq!(r.dtype, Some(DType::F32));
        assert_eq!(r.out_dtype, Some(DType::BF16));
        let r = Recipe::parse(
            "slices:\n  - sources:\n      - model: a\n        layer_range: [0, 3]\n  - sources:\n      - model: a\n        layer_range: [1, 4]\nmerge_method: passthrough\n",
            "r.yaml",
        )
        .unwrap();
        assert_eq!(r.slices[1].sources[0].layer_range, Some((1, 4)));
    }

    #[test]
    fn unknown_things_are_named() {
        let e = err("models: [{model: a}]\nmerge_method: linear\nfoo: 1\n");
        assert!(e.starts_with("r.yaml: foo: unknown key"), "{e}");
        let e = err("models: [{model: a, parameters: {weight: 1}}]\nmerge_method: lineer\n");
        assert!(
            e.contains("merge_method: unknown merge method 'lineer'"),
            "{e}"
        );
        let e = err("models: [{model: a, parameters: {wieght: 1}}]\nmerge_method: linear\n");
        assert!(
            e.contains("models[0].parameters.wieght: unknown parameter"),
            "{e}"
        );
        let e = err("models: [{model: a, paramters: {}}]\nmerge_method: linear\n");
        assert!(e.contains("models[0].paramters: unknown key"), "{e}");
        let e = err("models: [{model: a}, {model: b}]\nmerge_method: ties\n");
        assert!(e.contains("base_model"), "{e}");
        let e = err("models: [{model: a}]\nmerge_method: linear\ntokenizer_source: union\n");
        assert!(e.contains("tokenizer_source: 'union'"), "{e}");
        let e = err("slices:\n  - sources:\n      - {model: a, layer_range: [0, 2]}\n      - {model: b, layer_range: [0, 3]}\nmerge_method: linear\n");
        assert!(e.contains("slices[0].sources: every source"), "{e}");
    }
}
