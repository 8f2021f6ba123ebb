//! The identity "merge": one input, one output. `warp-convert` uses it to re-shard and/or change
//! dtype through the same streaming engine (tensors whose dtype is kept are copied bit for bit).

use super::{Gram, Method};
use crate::error::Result;

pub struct Convert;

impl Method for Convert {
    fn name(&self) -> &'static str {
        "convert"
    }
    fn outputs(&self) -> Vec<String> {
        vec!["converted".into()]
    }
    fn coefficients(&self, _: Option<&Gram>) -> Result<Vec<Vec<f64>>> {
        Ok(vec![vec![1.0]])
    }
    fn recipe(&self) -> serde_json::Value {
        serde_json::json!({ "method": "convert" })
    }
}
