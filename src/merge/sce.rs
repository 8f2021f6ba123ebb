//! `sce` (base x₀, models x₁..x_M; task vectors δ_m = x_m − x₀): Select, Calculate, Erase.
//!
//! - Select (when `select_topk` ρ < 1): keep the elements with the k = ⌊ρ·z⌋ largest variances
//!   across the task vectors, var_e = (1/M) Σ_m (δ_m,e − δ̄_e)², z the number of non-zero
//!   variances (histogram selection over chunks; ties at the threshold kept in index order);
//!   the other elements of every δ_m become 0;
//! - Calculate: per model ω_m = mean_e δ_m,e² (after selection), normalised to sum 1 (equal
//!   when the sum is below 1e-6);
//! - Erase: TIES' sign election on the selected δ_m (σ = sign of Σ_m δ_m, ≥ 0 → +1); only the
//!   δ_m of sign σ count:  out = x₀ + Σ_m ω_m [sign δ_m = σ] δ_m / max(Σ_m ω_m [sign δ_m = σ], 1e-6).

// Index loops follow the formulas (several arrays indexed by the same model/element).
#![allow(clippy::needless_range_loop)]

use super::kernel::{Block, Kernel, RankWindow};
use crate::error::Result;

pub struct Sce {
    pub models: usize,
    pub topk: f64,
    pub numel: u64,
}

impl Sce {
    fn selects(&self) -> bool {
        self.topk < 1.0
    }
    fn kept(&self, b: &Block, e: usize) -> bool {
        !self.selects() || (self.topk > 0.0 && b.selected[0][e])
    }
}

impl Kernel for Sce {
    fn selections(&self) -> usize {
        usize::from(self.selects())
    }
    fn key(&self, _sel: usize, b: &Block, out: &mut [f32]) {
        // Models outer, elements inner (vectorised): each element's mean and variance still add
        // the models in order, as the per-element formula does.
        let m = self.models as f32;
        let n = b.len().min(out.len());
        let (x0, out) = (&b.xs[0][..n], &mut out[..n]);
        MEAN.with_borrow_mut(|mean| {
            mean.clear();
            mean.resize(n, 0.0);
            for x in &b.xs[1..] {
                for ((t, &v), &v0) in mean.iter_mut().zip(&x[..n]).zip(x0) {
                    *t += v - v0;
                }
            }
            for t in mean.iter_mut() {
                *t /= m;
            }
            out.fill(0.0);
            for x in &b.xs[1..] {
                for (((o, &v), &v0), &mu) in out.iter_mut().zip(&x[..n]).zip(x0).zip(mean.iter()) {
                    let d = v - v0 - mu;
                    *o += d * d;
                }
            }
            for o in out.iter_mut() {
                *o /= m;
            }
        })
    }
    fn window(&self, _sel: usize, n: u64, zeros: u64) -> RankWindow {
        let k = ((n - zeros) as f64 * self.topk.max(0.0)) as u64;
        RankWindow::top(n, k)
    }
    fn sums_len(&self) -> usize {
        self.models
    }
    fn sums(&self, b: &Block, acc: &mut [f64]) {
        for e in 0..b.len() {
            if !self.kept(b, e) {
                continue;
            }
            for m in 0..self.models {
                let d = (b.xs[m + 1][e] - b.xs[0][e]) as f64;
                acc[m] += d * d;
            }
        }
    }
    fn prepare(&self, sums: &[f64]) -> Result<Vec<f64>> {
        let n = self.numel.max(1) as f64;
        let w: Vec<f64> = sums.iter().map(|s| s / n).collect();
        let total: f64 = w.iter().sum();
        if total.abs() < 1e-6 {
            return Ok(vec![1.0 / self.models as f64; self.models]);
        }
        Ok(w.iter().map(|x| x / total).collect())
    }
    fn combine(&self, b: &Block, out: &mut [f32]) {
        let w: Vec<f32> = b.params.iter().map(|&x| x as f32).collect();
        let mut d = vec![0f32; self.models];
        for (e, o) in out.iter_mut().enumerate().take(b.len()) {
            let x0 = b.xs[0][e];
            let keep = self.kept(b, e);
            let mut s = 0f32;
            for m in 0..self.models {
                d[m] = if keep { b.xs[m + 1][e] - x0 } else { 0.0 };
                s += d[m];
            }
            let sign = if s >= 0.0 { 1.0f32 } else { -1.0 };
            let (mut num, mut den) = (0f32, 0f32);
            for m in 0..self.models {
                let sg = if d[m] > 0.0 {
                    1.0
                } else if d[m] < 0.0 {
                    -1.0
                } else {
                    0.0
                };
                if sg == sign {
                    num += d[m] * w[m];
                    den += w[m];
                }
            }
            *o = x0 + num / den.max(1e-6);
        }
    }
}

thread_local! {
    /// The key's per-thread scratch of per-element means, reused across blocks.
    static MEAN: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}
