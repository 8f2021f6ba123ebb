//! From a recipe and its models' headers to one operation per output tensor: which input
//! tensors, in which order (the base first for methods with one), the kernel with its
//! parameters resolved for that tensor. Layers are renumbered in slice order (depth
//! up-scaling); tensors outside the layers come from the first slice's sources (embeddings) or
//! the last's (final norm, LM head), as in mergekit.

use std::collections::{BTreeSet, HashMap};

use super::methods::{self, BasePolicy, Dflt, Kind, Resolved, Spec};
use super::{Params, Recipe, Scalar, TokenizerSource};
use crate::error::{Error, Result};
use crate::io::{Checkpoint, DType};
use crate::merge::kernel::{Kernel, TensorCx};

/// One output tensor.
pub struct TensorOp {
    pub name: String,
    pub shape: Vec<usize>,
    /// (model index, tensor name) per kernel input; the output copies input 0 when there is no
    /// kernel.
    pub inputs: Vec<(usize, String)>,
    pub kernel: Option<Box<dyn Kernel>>,
    /// Dtype of the first input (floats are written in the recipe's dtype, else this one).
    pub dtype: DType,
}

pub struct Program {
    pub ops: Vec<TensorOp>,
    /// The model whose config.json (and generation config) the output gets.
    pub config_model: usize,
    pub tokenizer_model: usize,
    /// Per output layer: (model, its layer) it comes from (config's per-layer lists).
    pub layers: Vec<(usize, usize)>,
}

/// The `layers.N` index of a tensor name.
pub fn layer_index(name: &str) -> Option<usize> {
    crate::merge::layer_of(name).and_then(|l| l["layers.".len()..].parse().ok())
}

/// `name` with its `layers.N.` component renumbered to `to`.
pub fn with_layer(name: &str, to: usize) -> String {
    let Some(l) = crate::merge::layer_of(name) else {
        return name.to_string();
    };
    let pat = format!("{l}.");
    let mut search = 0;
    while let Some(pos) = name[search..].find(&pat) {
        let start = search + pos;
        if start == 0 || name.as_bytes()[start - 1] == b'.' {
            return format!(
                "{}layers.{to}.{}",
                &name[..start],
                &name[start + pat.len()..]
            );
        }
        search = start + 1;
    }
    name.to_string()
}

/// Number of transformer layers of a checkpoint (highest `layers.N` + 1).
pub fn layer_count(ck: &Checkpoint) -> usize {
    ck.tensors()
        .iter()
        .filter_map(|t| layer_index(&t.name))
        .map(|i| i + 1)
        .max()
        .unwrap_or(0)
}

fn bad(at: &str, msg: impl std::fmt::Display) -> Error {
    Error::setting(at, msg.to_string())
}

/// One input of a slice: model, first layer, its own parameters, where it is in the recipe.
struct SliceInput<'a> {
    model: usize,
    first: usize,
    params: Option<&'a Params>,
    at: String,
}

fn lookup(settings: &[Option<&Params>], name: &str, tensor: &str, t: f64) -> Option<Scalar> {
    settings.iter().flatten().find_map(|ps| {
        ps.iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, s)| s.eval(tensor, t))
    })
}

fn resolve(
    params: &[methods::Param],
    settings: &[Option<&Params>],
    tensor: &str,
    t: f64,
    at: &str,
    required: bool,
) -> Result<Resolved> {
    let mut out = HashMap::new();
    for p in params {
        let v = match lookup(settings, p.name, tensor, t) {
            Some(v) => v,
            None => match p.default {
                Dflt::Num(x) => Scalar::Num(x),
                Dflt::Bool(b) => Scalar::Bool(b),
                Dflt::Absent => continue,
                Dflt::Required if !required => continue,
                Dflt::Required => {
                    return Err(bad(
                        at,
                        format!("parameter '{}' is required for tensor '{tensor}'", p.name),
                    ))
                }
            },
        };
        // YAML strings such as "1e-3" are numbers to a numeric parameter.
        let v = match (p.kind, v) {
            (Kind::Num | Kind::Int, Scalar::Str(s)) => match s.trim().parse::<f64>() {
                Ok(x) => Scalar::Num(x),
                Err(_) => {
                    return Err(bad(
                        &format!("{at}.{}", p.name),
                        format!("'{s}' is not a number"),
                    ))
                }
            },
            (_, v) => v,
        };
        out.insert(p.name, v);
    }
    Ok(out)
}

/// Builds the program. `models` are the opened checkpoints in the order of
/// [`Recipe::models`]; `seed` drives the random methods.
pub fn build(r: &Recipe, models: &[(String, &Checkpoint)], seed: u64) -> Result<Program> {
    let spec = methods::spec(&r.merge_method)
        .ok_or_else(|| Error::Internal(format!("unchecked method {}", r.merge_method)))?;
    let idx = |m: &str| -> Result<usize> {
        models
            .iter()
            .position(|(s, _)| s == m)
            .ok_or_else(|| Error::Internal(format!("model {m} not opened")))
    };
    let layers: Vec<usize> = models.iter().map(|(_, c)| layer_count(c)).collect();
    // The inputs of each slice, in kernel order.
    let slices = slice_inputs(r, &spec, models, &layers)?;

    let mut ops = Vec::new();
    let mut out_layers = Vec::new();
    let op =
        |si: usize, ins: &[SliceInput], has_base: bool, names: &[String], out: String, t: f64| {
            tensor_op(r, &spec, si, ins, has_base, names, out, t, models, seed)
        };
    // Tensors outside the layers: embeddings from the first slice, the rest from the last.
    let first_ck = models[slices[0].0[0].model].1;
    let last = slices.len() - 1;
    let outside: Vec<&str> = first_ck
        .tensors()
        .iter()
        .filter(|t| layer_index(&t.name).is_none())
        .map(|t| t.name.as_str())
        .collect();
    for name in outside.iter().filter(|n| n.contains("embed")) {
        let (ins, _, hb) = &slices[0];
        let names = vec![name.to_string(); ins.len()];
        ops.push(op(0, ins, *hb, &names, name.to_string(), 0.0)?);
    }
    let mut out_layer = 0;
    for (si, (ins, len, hb)) in slices.iter().enumerate() {
        for k in 0..*len {
            let t = if *len > 1 {
                k as f64 / (*len - 1) as f64
            } else {
                1.0
            };
            let lead = models[ins[0].model].1;
            let src_layer = ins[0].first + k;
            for ti in lead.tensors() {
                if layer_index(&ti.name) != Some(src_layer) {
                    continue;
                }
                let names: Vec<String> = ins
                    .iter()
                    .map(|x| with_layer(&ti.name, x.first + k))
                    .collect();
                ops.push(op(
                    si,
                    ins,
                    *hb,
                    &names,
                    with_layer(&ti.name, out_layer),
                    t,
                )?);
            }
            out_layers.push((ins[0].model, src_layer));
            out_layer += 1;
        }
    }
    for name in outside.iter().filter(|n| !n.contains("embed")) {
        let (ins, _, hb) = &slices[last];
        let names = vec![name.to_string(); ins.len()];
        ops.push(op(last, ins, *hb, &names, name.to_string(), 0.0)?);
    }
    let mut seen = BTreeSet::new();
    if let Some(o) = ops.iter().find(|o| !seen.insert(o.name.clone())) {
        return Err(bad(
            "slices",
            format!("tensor '{}' would be written twice", o.name),
        ));
    }
    let config_model = match &r.base_model {
        Some(b) => idx(b)?,
        None => slices[0].0[0].model,
    };
    let tokenizer_model = match &r.tokenizer_source {
        None => config_model,
        Some(TokenizerSource::Base) => match &r.base_model {
            Some(b) => idx(b)?,
            None => {
                return Err(bad(
                    "tokenizer_source",
                    "'base' but the recipe has no base_model",
                ))
            }
        },
        Some(TokenizerSource::Model(m)) => idx(m)?,
    };
    Ok(Program {
        ops,
        config_model,
        tokenizer_model,
        layers: out_layers,
    })
}

/// Per slice: its inputs in kernel order (the base first for methods with one), its number of
/// layers, and whether input 0 is the base.
fn slice_inputs<'a>(
    r: &'a Recipe,
    spec: &Spec,
    models: &[(String, &Checkpoint)],
    layers: &[usize],
) -> Result<Vec<(Vec<SliceInput<'a>>, usize, bool)>> {
    let idx = |m: &str| -> Result<usize> {
        models
            .iter()
            .position(|(s, _)| s == m)
            .ok_or_else(|| Error::Internal(format!("model {m} not opened")))
    };
    let mut slices: Vec<(Vec<SliceInput>, usize, bool)> = Vec::new();
    for (i, s) in r.slices.iter().enumerate() {
        let base = r.base_of(i);
        let mut ins: Vec<SliceInput> = Vec::new();
        for src in &s.sources {
            let m = idx(&src.model)?;
            let (a, b) = src.layer_range.unwrap_or((0, layers[m]));
            if b > layers[m] {
                return Err(bad(
                    &format!("{}.layer_range", src.at),
                    format!(
                        "[{a}, {b}] goes past the end of {} ({} layers)",
                        src.model, layers[m]
                    ),
                ));
            }
            ins.push(SliceInput {
                model: m,
                first: a,
                params: Some(&src.params),
                at: src.at.clone(),
            });
        }
        let len = s.sources[0]
            .layer_range
            .map_or(layers[ins[0].model], |(a, b)| b - a);
        if r.models_form && ins.iter().any(|x| layers[x.model] != len) {
            let counts: Vec<String> = ins
                .iter()
                .map(|x| format!("{} has {}", models[x.model].0, layers[x.model]))
                .collect();
            return Err(bad(
                "models",
                format!("the models differ in depth: {}", counts.join(", ")),
            ));
        }
        let mut has_base = false;
        if let Some(b) = base {
            let bm = idx(b)?;
            let pos = ins.iter().position(|x| x.model == bm);
            match (spec.base, pos) {
                (BasePolicy::Input, None) if r.models_form => ins.push(SliceInput {
                    model: bm,
                    first: 0,
                    params: None,
                    at: "base_model".into(),
                }),
                (BasePolicy::Input, _) => {}
                (_, Some(p)) => {
                    let x = ins.remove(p);
                    ins.insert(0, x);
                    has_base = true;
                }
                (_, None) if r.models_form => {
                    if layers[bm] != len {
                        return Err(bad(
                            "base_model",
                            format!("{b} has {} layers, the models {len}", layers[bm]),
                        ));
                    }
                    ins.insert(
                        0,
                        SliceInput {
                            model: bm,
                            first: 0,
                            params: None,
                            at: "base_model".into(),
                        },
                    );
                    has_base = true;
                }
                (_, None) => {
                    return Err(bad(
                        &s.at,
                        format!("the base model {b} must be one of the slice's sources"),
                    ))
                }
            }
        }
        slices.push((ins, len, has_base));
    }

    Ok(slices)
}

#[allow(clippy::too_many_arguments)]
fn tensor_op(
    r: &Recipe,
    spec: &Spec,
    si: usize,
    ins: &[SliceInput],
    has_base: bool,
    names: &[String],
    out: String,
    t: f64,
    models: &[(String, &Checkpoint)],
    seed: u64,
) -> Result<TensorOp> {
    let slice = &r.slices[si];
    let mut infos = Vec::with_capacity(ins.len());
    for (x, name) in ins.iter().zip(names) {
        let (spec_name, ck) = &models[x.model];
        let ti = ck.get(name).ok_or_else(|| {
            bad(
                &x.at,
                format!("tensor '{name}' is missing from {spec_name} (needed for output '{out}')"),
            )
        })?;
        if let Some(first) = infos.first() {
            let first: &&crate::io::TensorInfo = first;
            if ti.shape != first.shape {
                return Err(bad(
                    &x.at,
                    format!(
                        "tensor '{name}' of {spec_name} has shape {:?}, but {:?} in {} (shapes must match)",
                        ti.shape, first.shape, models[ins[0].model].0
                    ),
                ));
            }
        }
        infos.push(ti);
    }
    let first = infos[0];
    let inputs: Vec<(usize, String)> = ins
        .iter()
        .map(|x| x.model)
        .zip(names.iter().cloned())
        .collect();
    if !first.dtype.is_float() || infos.iter().any(|t| !t.dtype.is_float()) {
        return Ok(TensorOp {
            name: out,
            shape: first.shape.clone(),
            inputs,
            kernel: None,
            dtype: first.dtype,
        });
    }
    let shared = resolve(
        &spec.shared,
        &[Some(&slice.params), Some(&r.params)],
        &out,
        t,
        "parameters",
        true,
    )?;
    let mut per = Vec::with_capacity(ins.len());
    for (j, (x, name)) in ins.iter().zip(names).enumerate() {
        let is_base = has_base && j == 0;
        let settings = [x.params, Some(&slice.params), Some(&r.params)];
        let required = !is_base || spec.per_input_on_base;
        let at = format!("{}.parameters", x.at);
        per.push(resolve(&spec.per_input, &settings, name, t, &at, required)?);
    }
    let cx = TensorCx {
        name: out.clone(),
        numel: first.numel(),
        shape: first.shape.clone(),
        seed,
    };
    let kernel = methods::kernel(
        spec,
        cx,
        has_base,
        &shared,
        &per,
        &format!("tensor '{out}'"),
    )?;
    Ok(TensorOp {
        name: out,
        shape: first.shape.clone(),
        inputs,
        kernel,
        dtype: first.dtype,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_renumbered() {
        assert_eq!(
            with_layer("model.layers.3.mlp.up_proj.weight", 7),
            "model.layers.7.mlp.up_proj.weight"
        );
        assert_eq!(with_layer("model.norm.weight", 2), "model.norm.weight");
        assert_eq!(
            layer_index("model.layers.12.self_attn.q_proj.weight"),
            Some(12)
        );
    }
}
