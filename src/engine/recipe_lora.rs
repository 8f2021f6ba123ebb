//! `warp merge RECIPE.yaml --as adapter` (issue 25): a recipe over PEFT LoRA adapters of one
//! base, written as a PEFT adapter computed in rank space ([`super::lora`]) when its merge is
//! exactly affine in the models.
//!
//! Every model is θn = base + δn (δ = 0 for the base itself, and in a module an adapter does not
//! train). A tensor whose kernel is exactly Σ cn·θn whatever the tensors hold
//! ([`crate::merge::kernel::Kernel::affine`]: `linear`, `task_arithmetic`, and the
//! task-arithmetic family at density 1 without sign election) is (Σ cn)·base + Σ cn·δn: the
//! base plus the LoRA [c1·s1·B1 | …]·[A1; …] exactly when Σ cn = 1. A recipe's parameters vary
//! by tensor (gradients over the layers, `filter:` conditionals, per-model weights), so the
//! coefficients are one row per output tensor, which the rank-space engine asks for by name
//! through [`Method::coefficients_of`].
//!
//! Anything a full checkpoint of the recipe would hold that base + adapter cannot is refused
//! with the reason ([`affine_method`]): inputs that are not adapters of one base, a non-affine
//! method, coefficients not summing to 1 (the base's weight scaled), slices that drop, add or
//! move layers, a chat template of the recipe's own.

use std::collections::{BTreeMap, BTreeSet};

use super::Input;
use crate::error::{Error, Result};
use crate::merge::recipe::program::Program;
use crate::merge::recipe::{methods, Recipe};
use crate::merge::{check_rows, Gram, Method};

/// What `warp merge` writes when the models are LoRA adapters (the other merge tools' `--as`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputForm {
    /// An adapter when the recipe has one ([`affine_method`] finds no reason against), else a
    /// full checkpoint, saying why on stderr.
    Auto,
    /// An adapter, or an error saying why there is none.
    Adapter,
    /// A full checkpoint, streamed (base + s·B·A for the adapters).
    Full,
}

/// A recipe as a rank-space merge: one coefficient row per output tensor over the opened
/// models (in the order of [`Recipe::models`]), each summing to 1.
pub struct RecipeMethod {
    name: &'static str,
    rows: BTreeMap<String, Vec<f64>>,
    recipe: serde_json::Value,
    text: String,
}

impl Method for RecipeMethod {
    fn name(&self) -> &'static str {
        self.name
    }

    fn outputs(&self) -> Vec<String> {
        vec!["merge".into()]
    }

    fn coefficients(&self, _gram: Option<&Gram>) -> Result<Vec<Vec<f64>>> {
        Err(Error::Internal(
            "a recipe's coefficients are per tensor: ask coefficients_of".into(),
        ))
    }

    fn coefficients_of(&self, name: &str, _gram: Option<&Gram>) -> Result<Vec<Vec<f64>>> {
        // Every module of the adapters is a tensor of the base, and every tensor of the base an
        // output tensor ([`affine_method`] checked both).
        let row = self
            .rows
            .get(name)
            .ok_or_else(|| Error::Internal(format!("no recipe coefficients for '{name}'")))?;
        Ok(vec![row.clone()])
    }

    fn recipe(&self) -> serde_json::Value {
        self.recipe.clone()
    }

    fn notes(&self, _k: usize) -> Vec<String> {
        vec![format!(
            "Made with `warp merge --as adapter` from this mergekit recipe:\n\n```yaml\n{}\n```",
            self.text.trim_end()
        )]
    }

    fn validate(&self, inputs: usize) -> Result<()> {
        for row in self.rows.values() {
            check_rows(std::slice::from_ref(row), inputs)?;
        }
        Ok(())
    }
}

/// Why a method's kernels are not affine in the models (for the message).
fn not_affine(method: &str) -> &'static str {
    match method {
        "ties" | "dare_ties" | "breadcrumbs_ties" | "della" => {
            "elects a sign per element, and keeps the task vectors' elements that agree with it"
        }
        "dare_linear" | "breadcrumbs" | "della_linear" => {
            "drops elements of the task vectors (density < 1), by magnitude or at random"
        }
        _ => "weighs the models by their values (angles, norms or an element-wise selection)",
    }
}

/// The recipe `r` with its program `prog` over the `opened` models as a rank-space merge, or
/// why it has no exact adapter form (one sentence).
pub fn affine_method(
    r: &Recipe,
    prog: &Program,
    opened: &[Input],
) -> std::result::Result<RecipeMethod, String> {
    if let Some(why) = super::lora::why_not_rank_space(opened) {
        return Err(why);
    }
    if r.chat_template.as_deref().is_some_and(|t| t != "auto") {
        return Err("the recipe sets a chat_template, which a PEFT adapter does not carry".into());
    }
    // Every input reads the one base's files (checked above): the output must have its tensors,
    // no fewer and no more (base + adapter is the base's architecture).
    let base: BTreeSet<&str> = opened[0]
        .ckpt
        .tensors()
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    let out: BTreeSet<&str> = prog.ops.iter().map(|o| o.name.as_str()).collect();
    if let Some(t) = base.difference(&out).next() {
        return Err(format!(
            "the output would lack the base's tensor '{t}' (the slices leave out layers)"
        ));
    }
    if let Some(t) = out.difference(&base).next() {
        return Err(format!(
            "the output would have tensor '{t}', which the base lacks (the slices add layers)"
        ));
    }
    let mut rows = BTreeMap::new();
    for op in &prog.ops {
        if let Some((m, name)) = op.inputs.iter().find(|(_, n)| *n != op.name) {
            return Err(format!(
                "tensor '{}' would be made from '{name}' of {} (the slices move layers): an \
                 adapter changes each module in place",
                op.name, opened[*m].spec
            ));
        }
        if !op.dtype.is_float() {
            // Copied from input 0, whose files are the base's.
            continue;
        }
        let c = match &op.kernel {
            None => vec![1.0],
            Some(k) => k.affine().ok_or_else(|| {
                format!(
                    "merge method '{}' is not affine in the models (at tensor '{}' it {})",
                    r.merge_method,
                    op.name,
                    not_affine(&r.merge_method)
                )
            })?,
        };
        let mut row = vec![0.0; opened.len()];
        for ((m, _), c) in op.inputs.iter().zip(c) {
            row[*m] += c;
        }
        let sum: f64 = row.iter().sum();
        let size: f64 = row.iter().map(|c| c.abs()).sum();
        // The rank-space engine's own test of a delta of the base, with the same tolerance.
        if (sum - 1.0).abs() > 1e-9 * size.max(1.0) {
            let hint = match r.merge_method.as_str() {
                "linear" => " (with normalize: false the weights must sum to 1)",
                "passthrough" => " (a scale other than 1)",
                _ => "",
            };
            return Err(format!(
                "at tensor '{}' the models' coefficients sum to {sum} (not 1), which scales the \
                 base's own weight: not the base plus a low-rank delta{hint}",
                op.name
            ));
        }
        rows.insert(op.name.clone(), row);
    }
    let name = methods::spec(&r.merge_method)
        .map(|s| s.name)
        .ok_or_else(|| format!("unknown merge method '{}'", r.merge_method))?;
    Ok(RecipeMethod {
        name,
        rows,
        recipe: r.to_json(),
        text: r.text.clone(),
    })
}

#[cfg(test)]
mod tests {
    use crate::merge::kernel::{Block, TensorCx};
    use crate::merge::recipe::methods::{kernel, spec, Resolved};
    use crate::merge::recipe::Scalar;

    fn params(kv: &[(&'static str, f64)]) -> Resolved {
        kv.iter().map(|&(k, v)| (k, Scalar::Num(v))).collect()
    }

    /// A kernel that calls itself affine reproduces its own f32 output with its coefficients (in
    /// f64), and those of the task-arithmetic family sum to 1 (base + a delta); sign election and
    /// sparsification are not affine.
    #[test]
    fn affine_coefficients_reproduce_the_kernels() {
        let n = 200;
        let xs: Vec<Vec<f32>> = (0..3)
            .map(|k| {
                (0..n)
                    .map(|i| ((i * 7 + k * 13) as f32 * 0.37).sin() * (1.0 + k as f32))
                    .collect()
            })
            .collect();
        let refs: Vec<&[f32]> = xs.iter().map(|x| &x[..]).collect();
        let b = Block {
            start: 0,
            xs: &refs,
            selected: &[],
            params: &[],
        };
        let gta = |normalize: f64, lambda: f64| {
            params(&[
                ("int8_mask", 0.0),
                ("normalize", normalize),
                ("rescale", 1.0),
                ("lambda", lambda),
            ])
        };
        let models = |density: f64| {
            vec![
                Resolved::new(),
                params(&[("weight", 0.7), ("density", density)]),
                params(&[("weight", -0.3), ("density", density)]),
            ]
        };
        let linear = |w: [f64; 3]| w.iter().map(|&w| params(&[("weight", w)])).collect();
        let cases: Vec<(&str, Resolved, Vec<Resolved>, Option<f64>)> = vec![
            (
                "linear",
                params(&[("normalize", 1.0)]),
                linear([0.5, 0.2, 0.9]),
                Some(1.0),
            ),
            (
                "linear",
                params(&[("normalize", 0.0)]),
                linear([0.5, 0.2, 0.9]),
                Some(1.6),
            ),
            ("task_arithmetic", gta(0.0, 0.8), models(1.0), Some(1.0)),
            ("task_arithmetic", gta(1.0, 1.3), models(0.2), Some(1.0)),
            ("dare_linear", gta(0.0, 1.0), models(1.0), Some(1.0)),
            ("dare_linear", gta(0.0, 1.0), models(0.5), None),
            ("ties", gta(1.0, 1.0), models(1.0), None),
        ];
        for (method, shared, per, sum) in cases {
            let s = spec(method).unwrap();
            let cx = TensorCx {
                name: "t".into(),
                numel: n as u64,
                shape: vec![n],
                seed: 3,
            };
            let has_base = method != "linear";
            let k = kernel(&s, cx, has_base, &shared, &per, "t")
                .unwrap()
                .unwrap();
            let Some(c) = k.affine() else {
                assert_eq!(sum, None, "{method}");
                continue;
            };
            let total: f64 = c.iter().sum();
            assert!((total - sum.unwrap()).abs() < 1e-12, "{method}: {c:?}");
            let mut out = vec![0f32; n];
            k.combine(&b, &mut out);
            for (j, o) in out.iter().enumerate() {
                let want: f64 = c.iter().zip(&xs).map(|(c, x)| c * x[j] as f64).sum();
                assert!(
                    (*o as f64 - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "{method} [{j}]: {o} vs {want}"
                );
            }
        }
    }
}
