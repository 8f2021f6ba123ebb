//! `multislerp` (models x₁..x_M with weights w_m, normalised to sum 1 by default; optional base
//! x₀): barycentric interpolation on the sphere. With v_m = x_m − x₀ (or x_m), n_m = ‖v_m‖,
//! u_m = v_m / (n_m + ε), ε = 1e-8:
//!
//! μ = Σ w_m u_m / ‖Σ w_m u_m‖;  τ = Σ w_m (u_m − ⟨u_m, μ⟩ μ);  r = ‖τ‖ + ε;
//! out = x₀ + (Σ w_m n_m) · (cos r · μ + sin r / r · τ).
//!
//! Everything is a linear combination of the v_m, so the coefficients come from their Gram
//! matrix (a statistics pass, f64). When Σ w_m u_m vanishes: two models fall back to
//! w₁v₁ + w₂v₂, more are an error naming the tensor. One model is copied.

// Index loops follow the formulas (several arrays indexed by the same model/element).
#![allow(clippy::needless_range_loop)]

use super::kernel::{gram_at, gram_sums, Block, Kernel};
use crate::error::{Error, Result};

pub struct MultiSlerp {
    pub name: String,
    pub weights: Vec<f64>,
    pub normalize: bool,
    pub eps: f64,
    pub has_base: bool,
}

impl MultiSlerp {
    fn v(&self, b: &Block, m: usize, e: usize) -> f32 {
        if self.has_base {
            b.xs[m + 1][e] - b.xs[0][e]
        } else {
            b.xs[m][e]
        }
    }
}

/// Quadratic form cᵀGc of the upper-triangle Gram `g` of `n` vectors.
pub fn quad(g: &[f64], n: usize, c: &[f64], d: &[f64]) -> f64 {
    let mut s = 0.0;
    for i in 0..n {
        for j in 0..n {
            s += c[i] * d[j] * gram_at(g, n, i, j);
        }
    }
    s
}

impl Kernel for MultiSlerp {
    fn sums_len(&self) -> usize {
        let m = self.weights.len();
        m * (m + 1) / 2
    }
    fn sums(&self, b: &Block, acc: &mut [f64]) {
        gram_sums(self.weights.len(), b.len(), |m, e| self.v(b, m, e), acc);
    }
    fn prepare(&self, g: &[f64]) -> Result<Vec<f64>> {
        let m = self.weights.len();
        let total: f64 = self.weights.iter().sum();
        let w: Vec<f64> = if self.normalize {
            self.weights.iter().map(|x| x / total).collect()
        } else {
            self.weights.clone()
        };
        let norms: Vec<f64> = (0..m)
            .map(|i| gram_at(g, m, i, i).max(0.0).sqrt())
            .collect();
        // Unit vectors as coefficients over the v's: u_i = e_i / (n_i + ε).
        let unit = |i: usize| {
            let mut c = vec![0.0; m];
            c[i] = 1.0 / (norms[i] + self.eps);
            c
        };
        let mut mean = vec![0.0; m];
        for i in 0..m {
            mean[i] += w[i] / (norms[i] + self.eps);
        }
        let mn = quad(g, m, &mean, &mean).max(0.0).sqrt();
        if mn < self.eps {
            if m == 2 {
                return Ok(w);
            }
            return Err(Error::Mismatch(format!(
                "tensor '{}': multislerp: the weighted sum of the unit task vectors is zero \
                 (antipodal inputs with balancing weights); change the weights",
                self.name
            )));
        }
        for c in &mut mean {
            *c /= mn;
        }
        let mut tangent = vec![0.0; m];
        for i in 0..m {
            let u = unit(i);
            let dot = quad(g, m, &u, &mean);
            for k in 0..m {
                tangent[k] += w[i] * (u[k] - dot * mean[k]);
            }
        }
        let tn = quad(g, m, &tangent, &tangent).max(0.0).sqrt() + self.eps;
        let scale: f64 = (0..m).map(|i| norms[i] * w[i]).sum();
        Ok((0..m)
            .map(|k| scale * (mean[k] * tn.cos() + tangent[k] * tn.sin() / tn))
            .collect())
    }
    fn combine(&self, b: &Block, out: &mut [f32]) {
        let c: Vec<f32> = b.params.iter().map(|&x| x as f32).collect();
        for (e, o) in out.iter_mut().enumerate().take(b.len()) {
            let mut v = 0f32;
            for (k, &ck) in c.iter().enumerate() {
                v += ck * self.v(b, k, e);
            }
            *o = if self.has_base { b.xs[0][e] + v } else { v };
        }
    }
}
