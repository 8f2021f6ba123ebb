//! `slerp` of a recipe (mergekit's; WARP's SLERP of task vectors is [`super::slerp`]): between
//! the base a = x₀ and one model b = x₁ themselves (not task vectors), per tensor, with
//! interpolation factor t. With the whole-tensor norms ‖a‖, ‖b‖ (each taken as 1 when ≤ 1e-8)
//! and cos Ω = ⟨a, b⟩ / (‖a‖·‖b‖) clamped to [−1, 1]:
//!
//!   out = sin((1−t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b,   or (1−t)·a + t·b when |cos Ω| > 0.9995.
//!
//! The norms and the dot product are sums in f64 over the tensor (a statistics pass); the
//! combination is f32.

use super::kernel::{combine_linear, gram_at, gram_sums, Block, Kernel};
use crate::error::Result;

pub struct PairSlerp {
    pub t: f64,
}

/// The SLERP coefficients of (a, b) at t from ‖a‖², ‖b‖² and ⟨a, b⟩.
pub fn slerp_coefficients(t: f64, aa: f64, bb: f64, ab: f64) -> (f64, f64) {
    let na = if aa.sqrt() > 1e-8 { aa.sqrt() } else { 1.0 };
    let nb = if bb.sqrt() > 1e-8 { bb.sqrt() } else { 1.0 };
    let dot = (ab / (na * nb)).clamp(-1.0, 1.0);
    if dot.abs() > 0.9995 {
        return (1.0 - t, t);
    }
    let theta = dot.acos();
    let s = theta.sin();
    (((1.0 - t) * theta).sin() / s, (t * theta).sin() / s)
}

impl Kernel for PairSlerp {
    fn sums_len(&self) -> usize {
        3
    }
    fn sums(&self, b: &Block, acc: &mut [f64]) {
        gram_sums(2, b.len(), |i, e| b.xs[i][e], acc);
    }
    fn prepare(&self, g: &[f64]) -> Result<Vec<f64>> {
        let (ca, cb) = slerp_coefficients(
            self.t,
            gram_at(g, 2, 0, 0),
            gram_at(g, 2, 1, 1),
            gram_at(g, 2, 0, 1),
        );
        Ok(vec![ca, cb])
    }
    fn combine(&self, b: &Block, out: &mut [f32]) {
        combine_linear(b, b.params, out);
    }
}
