//! LERP / task arithmetic: θinit + Σ λm·δm (λm = 1/M by default), with fused LITI points.

use super::{check_etas, check_liti, eta_outputs, extrapolation_note, liti_rows, Gram, Method};
use crate::error::{Error, Result};

pub struct Lerp {
    pub weights: Vec<f64>,
    pub etas: Vec<f64>,
}

impl Lerp {
    /// `m` task vectors; `weights` empty means 1/M each.
    pub fn new(m: usize, weights: Vec<f64>, etas: Vec<f64>) -> Result<Lerp> {
        let weights = if weights.is_empty() {
            vec![1.0 / m as f64; m]
        } else {
            weights
        };
        if weights.len() != m {
            return Err(Error::setting(
                "weights",
                format!(
                    "{} values for {m} models: give one per model or none",
                    weights.len()
                ),
            ));
        }
        if let Some(w) = weights.iter().find(|w| !w.is_finite()) {
            return Err(Error::setting("weights", format!("{w}: must be finite")));
        }
        let etas = check_etas(&etas)?;
        let lerp = Lerp { weights, etas };
        lerp.validate(m + 1)?;
        Ok(lerp)
    }
}

impl Method for Lerp {
    fn name(&self) -> &'static str {
        "lerp"
    }
    fn outputs(&self) -> Vec<String> {
        eta_outputs(&self.etas)
    }
    fn coefficients(&self, _: Option<&Gram>) -> Result<Vec<Vec<f64>>> {
        Ok(liti_rows(&self.weights, &self.etas))
    }
    fn recipe(&self) -> serde_json::Value {
        serde_json::json!({ "method": "lerp", "weights": self.weights, "eta": self.etas })
    }
    fn validate(&self, inputs: usize) -> Result<()> {
        if inputs != self.weights.len() + 1 {
            return Err(Error::Internal(format!(
                "LERP of {} models given {inputs} inputs",
                self.weights.len()
            )));
        }
        check_liti(&self.weights, &self.etas)
    }
    fn notes(&self, k: usize) -> Vec<String> {
        self.etas
            .get(k)
            .map(|&e| extrapolation_note(e))
            .unwrap_or_default()
    }
}
