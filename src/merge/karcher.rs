//! `karcher`: the weighted Karcher (Riemannian) mean of the inputs on the unit sphere, scaled
//! back by their mean norm. With n_i = ‖x_i‖, u_i = x_i / n_i, the inputs with n_i > tol, equal
//! weights α_i over those: start from μ = Σ α_i u_i / ‖·‖, then up to `max_iter` times
//!
//!   τ = Σ_{θ_i ≥ tol} α_i · θ_i / sin θ_i · (u_i − cos θ_i · μ),  θ_i = arccos⟨μ, u_i⟩;
//!   stop when ‖τ‖ < tol, else μ ← cos‖τ‖ · μ + sin‖τ‖ · τ/‖τ‖, renormalised;
//!
//! and out = (Σ_i n_i / N) · μ. μ stays in the span of the inputs, so the iteration runs on
//! coefficients with the inputs' Gram matrix (one statistics pass, f64) instead of re-reading
//! the tensor at each step.

// Index loops follow the formulas (several arrays indexed by the same model/element).
#![allow(clippy::needless_range_loop)]

use super::kernel::{combine_linear, gram_at, gram_sums, Block, Kernel};
use super::multislerp::quad;
use crate::error::Result;

pub struct Karcher {
    pub n: usize,
    pub max_iter: u64,
    pub tol: f64,
}

impl Kernel for Karcher {
    fn sums_len(&self) -> usize {
        self.n * (self.n + 1) / 2
    }
    fn sums(&self, b: &Block, acc: &mut [f64]) {
        gram_sums(self.n, b.len(), |i, e| b.xs[i][e], acc);
    }
    fn prepare(&self, g: &[f64]) -> Result<Vec<f64>> {
        let n = self.n;
        let tol = self.tol;
        let norms: Vec<f64> = (0..n)
            .map(|i| gram_at(g, n, i, i).max(0.0).sqrt())
            .collect();
        let valid: Vec<usize> = (0..n).filter(|&i| norms[i] > tol).collect();
        if valid.is_empty() {
            return Ok(vec![0.0; n]);
        }
        let alpha = 1.0 / valid.len() as f64;
        let unit = |i: usize| {
            let mut c = vec![0.0; n];
            c[i] = 1.0 / norms[i];
            c
        };
        let mut mean = vec![0.0; n];
        for &i in &valid {
            mean[i] += alpha / norms[i];
        }
        let mn = quad(g, n, &mean, &mean).max(0.0).sqrt();
        if mn < tol {
            mean = unit(valid[0]);
        } else {
            mean.iter_mut().for_each(|c| *c /= mn);
        }
        for _ in 0..self.max_iter {
            let mut tangent = vec![0.0; n];
            for &i in &valid {
                let u = unit(i);
                let dot = quad(g, n, &mean, &u).clamp(-1.0, 1.0);
                let theta = dot.acos();
                if theta < tol {
                    continue;
                }
                let f = alpha * theta / theta.sin();
                for k in 0..n {
                    tangent[k] += f * (u[k] - dot * mean[k]);
                }
            }
            let tn = quad(g, n, &tangent, &tangent).max(0.0).sqrt();
            if tn < tol {
                break;
            }
            for k in 0..n {
                mean[k] = tn.cos() * mean[k] + tn.sin() * tangent[k] / tn;
            }
            let un = quad(g, n, &mean, &mean).max(0.0).sqrt();
            if un > tol {
                mean.iter_mut().for_each(|c| *c /= un);
            }
        }
        let scale: f64 = norms.iter().map(|x| x / n as f64).sum();
        Ok(mean.iter().map(|c| c * scale).collect())
    }
    fn combine(&self, b: &Block, out: &mut [f32]) {
        combine_linear(b, b.params, out);
    }
}
