//! `model_stock` (base x₀, models x₁..x_M, M ≥ 2): with the task vectors δ_m = x_m − x₀ and
//! c̄ the mean over pairs m < k of cos(δ_m, δ_k) = ⟨δ_m, δ_k⟩ / max(‖δ_m‖‖δ_k‖, 1e-6) (each
//! clamped to [−1, 1]), the interpolation ratio is t = M·c̄ / (1 + (M−1)·c̄) (0 where the
//! denominator is below 1e-6 in magnitude), and
//!
//!   out = t · (Σ_m x_m / M) + (1 − t) · x₀.
//!
//! Cosines are over the whole tensor (`filter_wise: false`, the default; the row-wise variant
//! is refused when the recipe is read). The Gram matrix of the δ_m is one statistics pass (f64).

// Index loops follow the formulas (several arrays indexed by the same model/element).
#![allow(clippy::needless_range_loop)]

use super::kernel::{gram_at, gram_sums, Block, Kernel};
use crate::error::Result;

pub struct ModelStock {
    pub models: usize,
}

impl Kernel for ModelStock {
    fn sums_len(&self) -> usize {
        self.models * (self.models + 1) / 2
    }
    fn sums(&self, b: &Block, acc: &mut [f64]) {
        gram_sums(
            self.models,
            b.len(),
            |m, e| b.xs[m + 1][e] - b.xs[0][e],
            acc,
        );
    }
    fn prepare(&self, g: &[f64]) -> Result<Vec<f64>> {
        let m = self.models;
        let mut cos = Vec::new();
        for i in 0..m {
            for k in i + 1..m {
                let np = gram_at(g, m, i, i).max(0.0).sqrt() * gram_at(g, m, k, k).max(0.0).sqrt();
                cos.push((gram_at(g, m, i, k) / np.max(1e-6)).clamp(-1.0, 1.0));
            }
        }
        let c = cos.iter().sum::<f64>() / cos.len().max(1) as f64;
        let den = 1.0 + (m as f64 - 1.0) * c;
        let t = if den.abs() < 1e-6 {
            0.0
        } else {
            m as f64 * c / den
        };
        Ok(vec![t, m as f64])
    }
    fn combine(&self, b: &Block, out: &mut [f32]) {
        let (t, m) = (b.params[0] as f32, b.params[1] as f32);
        for (e, o) in out.iter_mut().enumerate().take(b.len()) {
            let mut s = 0f32;
            for x in &b.xs[1..] {
                s += x[e];
            }
            *o = t * (s / m) + (1.0 - t) * b.xs[0][e];
        }
    }
}
