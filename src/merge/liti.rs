//! LITI: θη = (1−η)·θinit + η·θmerged for one or several η (η > 1 extrapolates).
//! Inputs are [init, merged].

use super::{check_etas, check_liti, eta_outputs, extrapolation_note, liti_rows, Gram, Method};
use crate::error::{Error, Result};

pub struct Liti {
    pub etas: Vec<f64>,
}

impl Liti {
    pub fn new(etas: Vec<f64>) -> Result<Liti> {
        if etas.is_empty() {
            return Err(Error::setting("etas", "LITI needs at least one value"));
        }
        let liti = Liti {
            etas: check_etas(&etas)?,
        };
        liti.validate(2)?;
        Ok(liti)
    }
}

impl Method for Liti {
    fn name(&self) -> &'static str {
        "liti"
    }
    fn outputs(&self) -> Vec<String> {
        eta_outputs(&self.etas)
    }
    fn coefficients(&self, _: Option<&Gram>) -> Result<Vec<Vec<f64>>> {
        Ok(liti_rows(&[1.0], &self.etas))
    }
    fn recipe(&self) -> serde_json::Value {
        serde_json::json!({ "method": "liti", "eta": self.etas })
    }
    fn notes(&self, k: usize) -> Vec<String> {
        extrapolation_note(self.etas[k])
    }
    fn validate(&self, inputs: usize) -> Result<()> {
        if inputs != 2 {
            return Err(Error::Internal(format!("LITI given {inputs} inputs")));
        }
        check_liti(&[1.0], &self.etas)
    }
}
