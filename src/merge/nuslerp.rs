//! `nuslerp` (two models x₁, x₂ with weights w₁, w₂, optional base x₀): t = w₂ / (w₁ + w₂)
//! (0.5 when |w₁ + w₂| < 1e-6); v₁, v₂ are the task vectors x_m − x₀ (the models themselves
//! without a base), flattened over the whole tensor. With cos Ω = ⟨v₁, v₂⟩ / (‖v₁‖‖v₂‖) (norms
//! at least 1e-7), clamped:
//!
//!   v = (sin((1−t)Ω)·v₁ + sin(tΩ)·v₂) / sin Ω,   or (1−t)·v₁ + t·v₂ when 1 − cos²Ω ≤ 1e-16,
//!
//! and out = x₀ + v (v without a base). Only the flattened form (`nuslerp_flatten: true`, the
//! default) is implemented; row-wise variants are refused when the recipe is read.

use super::kernel::{gram_at, gram_sums, Block, Kernel};
use crate::error::Result;

pub struct NuSlerp {
    pub t: f64,
    pub has_base: bool,
}

impl NuSlerp {
    fn v(&self, b: &Block, m: usize, e: usize) -> f32 {
        if self.has_base {
            b.xs[m + 1][e] - b.xs[0][e]
        } else {
            b.xs[m][e]
        }
    }
}

impl Kernel for NuSlerp {
    fn sums_len(&self) -> usize {
        3
    }
    fn sums(&self, b: &Block, acc: &mut [f64]) {
        gram_sums(2, b.len(), |m, e| self.v(b, m, e), acc);
    }
    fn prepare(&self, g: &[f64]) -> Result<Vec<f64>> {
        let t = self.t;
        let n1 = gram_at(g, 2, 0, 0).sqrt().max(1e-7);
        let n2 = gram_at(g, 2, 1, 1).sqrt().max(1e-7);
        let cos = (gram_at(g, 2, 0, 1) / (n1 * n2)).clamp(-1.0, 1.0);
        if 1.0 - cos * cos <= 1e-16 {
            return Ok(vec![1.0 - t, t]);
        }
        let th = cos.acos();
        Ok(vec![
            ((1.0 - t) * th).sin() / th.sin(),
            (t * th).sin() / th.sin(),
        ])
    }
    fn combine(&self, b: &Block, out: &mut [f32]) {
        let (c1, c2) = (b.params[0] as f32, b.params[1] as f32);
        for (e, o) in out.iter_mut().enumerate().take(b.len()) {
            let v = c1 * self.v(b, 0, e) + c2 * self.v(b, 1, e);
            *o = if self.has_base { b.xs[0][e] + v } else { v };
        }
    }
}
