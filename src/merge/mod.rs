//! Merge methods. Each one is a small file implementing [`Method`]: which per-tensor statistics
//! it needs, and the K×N coefficient matrix of a tensor given them (DESIGN.md §1). The engine does
//! all the I/O; a method never sees tensor data.

pub mod convert;
pub mod ema;
pub mod extract_lora;
pub mod gram;
pub mod karcher;
pub mod kernel;
pub mod lerp;
pub mod linear;
pub mod liti;
pub mod model_stock;
pub mod multislerp;
pub mod nearswap;
pub mod nuslerp;
pub mod passthrough;
pub mod recipe;
pub mod report;
pub mod sce;
pub mod slerp;
pub mod slerp_pair;
pub mod task_arithmetic;

pub use gram::Gram;

use crate::error::{Error, Result};

/// How tensors share the statistics that drive the coefficients (SLERP's angle).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Grouping {
    /// One angle per weight tensor (mergekit's convention; the default).
    #[default]
    Tensor,
    /// One angle per transformer block (`…layers.N.…`); tensors outside blocks keep their own.
    Layer,
    /// One angle over the whole model.
    Global,
}

/// The group a tensor belongs to under `grouping` (tensors of one group share coefficients).
pub fn group_key(name: &str, grouping: Grouping) -> String {
    match grouping {
        Grouping::Tensor => name.to_string(),
        Grouping::Global => "global".to_string(),
        Grouping::Layer => layer_of(name).unwrap_or_else(|| name.to_string()),
    }
}

/// `layers.N` when the name contains a `layers.<N>.` component (Llama, Mistral, Qwen2, Gemma…).
pub fn layer_of(name: &str) -> Option<String> {
    let mut search = 0;
    while let Some(pos) = name[search..].find("layers.") {
        let start = search + pos;
        let at_boundary = start == 0 || name.as_bytes()[start - 1] == b'.';
        let rest = &name[start + "layers.".len()..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if at_boundary && digits > 0 && rest.as_bytes().get(digits) == Some(&b'.') {
            return Some(format!("layers.{}", &rest[..digits]));
        }
        search = start + 1;
    }
    None
}

/// A merge method: N inputs → K outputs, per tensor out_k = Σ_n c[k][n] · in_n.
pub trait Method: Send + Sync {
    /// Short name, e.g. "slerp" (model card tag, metadata).
    fn name(&self) -> &'static str;
    /// Names of the K outputs, e.g. ["eta-0.30", "eta-1.00"]; a single output is written to the
    /// destination folder itself.
    fn outputs(&self) -> Vec<String>;
    /// Whether the coefficients depend on the Gram matrix of the task vectors
    /// δm = in_m − in_0 (m = 1..N−1).
    fn needs_gram(&self) -> bool {
        false
    }
    /// How tensors share statistics (only meaningful when `needs_gram`).
    fn grouping(&self) -> Grouping {
        Grouping::Tensor
    }
    /// The K×N coefficients for a tensor (or its group) with the given Gram matrix (None when
    /// `needs_gram` is false).
    fn coefficients(&self, gram: Option<&Gram>) -> Result<Vec<Vec<f64>>>;
    /// The coefficients of the tensor `name` (the rank-space engine asks per LoRA module): those
    /// of [`Method::coefficients`] unless the method's parameters vary by tensor, as a recipe's
    /// do (gradients over the layers, `filter:` conditionals).
    fn coefficients_of(&self, _name: &str, gram: Option<&Gram>) -> Result<Vec<Vec<f64>>> {
        self.coefficients(gram)
    }
    /// Machine-readable description of the parameters, for model cards and metadata.
    fn recipe(&self) -> serde_json::Value;
    /// Extra notes for the model card of output `k`.
    fn notes(&self, _k: usize) -> Vec<String> {
        Vec::new()
    }
    /// Checks the method against a job of `inputs` checkpoints before anything is read: the
    /// number of inputs, and coefficients that overflow f32 (the engine computes in f32) whatever
    /// the tensors hold. The default checks the rows of methods without statistics.
    fn validate(&self, inputs: usize) -> Result<()> {
        if self.needs_gram() {
            return Ok(());
        }
        check_rows(&self.coefficients(None)?, inputs)
    }
    /// The diagnostics of one Gram matrix (a tensor, a transformer block or the whole model) in
    /// the merge report: by default the task vectors' norms and pairwise angles.
    fn report_entry(&self, gram: &Gram) -> serde_json::Value {
        gram.to_json()
    }
}

/// Checks a K×N coefficient matrix: N = `inputs` columns in every row, every coefficient finite
/// once rounded to f32 (a larger one makes every output value infinite or NaN).
pub fn check_rows(rows: &[Vec<f64>], inputs: usize) -> Result<()> {
    for row in rows {
        if row.len() != inputs {
            return Err(Error::Internal(format!(
                "{} coefficients for {inputs} inputs",
                row.len()
            )));
        }
        if let Some(c) = row.iter().find(|c| !(**c as f32).is_finite()) {
            // The method's settings (weights, η) gave it.
            return Err(Error::setting(
                "coefficients",
                format!(
                    "a merge coefficient is {c:e}, beyond the f32 range (±{:e}) the merge \
                     computes in: every output value would be infinite or NaN",
                    f32::MAX
                ),
            ));
        }
    }
    Ok(())
}

/// Output name of a LITI point: two decimals ("eta-0.30"), more when η needs them ("eta-0.125").
pub fn eta_name(eta: f64) -> String {
    let short = format!("{eta:.2}");
    if short.parse::<f64>() == Ok(eta) {
        format!("eta-{short}")
    } else {
        format!("eta-{eta}")
    }
}

/// Fused LITI (DESIGN.md §1): with the merge θinit + Σ a_m δm, the point η is
/// (1−η)·θinit + η·θmerged = (1 − η·Σa)·θinit + Σ η·a_m·θm — one row per η over the N inputs.
/// No η means the merge itself (η = 1).
pub fn liti_rows(a: &[f64], etas: &[f64]) -> Vec<Vec<f64>> {
    let one = [1.0];
    let etas = if etas.is_empty() { &one[..] } else { etas };
    let sum: f64 = a.iter().sum();
    etas.iter()
        .map(|&eta| {
            let mut row = Vec::with_capacity(a.len() + 1);
            row.push(1.0 - eta * sum);
            row.extend(a.iter().map(|&am| eta * am));
            row
        })
        .collect()
}

/// Checks the fused-LITI rows of merge weights `a` (over the task vectors) at each η (or the
/// merge itself when there is none), naming the η or the weights that overflow. Errors name the
/// settings by their field (`etas`, `weights`), which the CLI shows as its flags.
pub fn check_liti(a: &[f64], etas: &[f64]) -> Result<()> {
    if etas.is_empty() {
        return check_rows(&liti_rows(a, &[]), a.len() + 1)
            .map_err(|e| Error::setting("weights", format!("{a:?}: {e}")));
    }
    for &eta in etas {
        check_rows(&liti_rows(a, &[eta]), a.len() + 1)
            .map_err(|e| Error::setting("etas", format!("{eta}: {e}")))?;
    }
    Ok(())
}

/// Output names for a list of η (just the destination when none is given).
pub fn eta_outputs(etas: &[f64]) -> Vec<String> {
    if etas.is_empty() {
        vec!["merged".to_string()]
    } else {
        etas.iter().map(|&e| eta_name(e)).collect()
    }
}

/// Validates a list of η and returns it with −0 written as 0 (so that `-0` and `0` name the same
/// output): finite, ≥ 0, distinct once formatted as output names.
pub fn check_etas(etas: &[f64]) -> Result<Vec<f64>> {
    let mut names = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(etas.len());
    for &e in etas {
        if !e.is_finite() || e < 0.0 {
            return Err(Error::setting(
                "etas",
                format!("{e}: must be a finite number ≥ 0"),
            ));
        }
        // −0 + 0 is +0 in IEEE arithmetic; every other value is unchanged.
        let e = e + 0.0;
        if !names.insert(eta_name(e)) {
            return Err(Error::setting(
                "etas",
                format!("{e} given twice (both would be written to {})", eta_name(e)),
            ));
        }
        out.push(e);
    }
    Ok(out)
}

/// The model-card note for extrapolated LITI points (η > 1).
pub fn extrapolation_note(eta: f64) -> Vec<String> {
    if eta > 1.0 {
        vec![format!(
            "**Note:** η = {eta} > 1 extrapolates beyond the merged model, away from the \
             initialization (as in the WARP paper's Fig. 10b). Expect higher KL to the base model."
        )]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_keys() {
        assert_eq!(
            layer_of("model.layers.12.mlp.up_proj.weight").as_deref(),
            Some("layers.12")
        );
        assert_eq!(layer_of("layers.0.attn.w").as_deref(), Some("layers.0"));
        assert_eq!(layer_of("model.embed_tokens.weight"), None);
        assert_eq!(layer_of("model.sublayers.3.w"), None);
        assert_eq!(layer_of("model.layers.x.w"), None);
        assert_eq!(
            group_key("lm_head.weight", Grouping::Layer),
            "lm_head.weight"
        );
    }

    #[test]
    fn liti_rows_interpolate_towards_init() {
        let rows = liti_rows(&[0.5, 0.25], &[0.0, 1.0, 0.3]);
        assert_eq!(rows[0], vec![1.0, 0.0, 0.0]);
        assert_eq!(rows[1], vec![0.25, 0.5, 0.25]);
        let r = &rows[2];
        assert!((r[0] - 0.775).abs() < 1e-15 && (r[1] - 0.15).abs() < 1e-15);
        assert!(check_etas(&[0.3, 0.301]).is_ok());
        // −0 is 0: the same output, so given with 0 it is a duplicate, alone it is written as 0.
        assert!(check_etas(&[0.0, -0.0]).is_err());
        let z = check_etas(&[-0.0]).unwrap();
        assert!(z[0] == 0.0 && z[0].is_sign_positive());
        assert_eq!(eta_name(z[0]), "eta-0.00");
        assert_eq!(eta_name(0.3), "eta-0.30");
        assert_eq!(eta_name(0.125), "eta-0.125");
        assert_eq!(eta_name(1.0), "eta-1.00");
        assert!(check_etas(&[0.3, 0.30]).is_err());
        assert!(check_etas(&[-0.1]).is_err());
    }

    #[test]
    fn rows_beyond_f32_are_refused() {
        assert!(check_rows(&liti_rows(&[0.5, 0.5], &[1e30]), 3).is_ok());
        for eta in [1e39, 1e308] {
            let e = check_rows(&liti_rows(&[0.5, 0.5], &[eta]), 3).unwrap_err();
            assert!(e.to_string().contains("beyond the f32 range"), "{e}");
        }
        assert!(matches!(
            check_rows(&[vec![1.0]], 2),
            Err(Error::Internal(_))
        ));
    }
}
