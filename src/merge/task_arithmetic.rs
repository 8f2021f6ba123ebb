//! The task-arithmetic family of recipe methods (mergekit's "generalized task arithmetic"):
//! `task_arithmetic`, `ties`, `dare_linear`, `dare_ties`, `breadcrumbs`, `breadcrumbs_ties`,
//! `della`, `della_linear`.
//! With a base x₀ and models x_m (m = 1..M), per element:
//!
//! - task vectors δ_m = x_m − x₀, each sparsified by a mask μ_m ∈ {0, 1} (below) and, with
//!   `rescale`, scaled by s_m = ‖δ_m‖₁ / ‖μ_m·δ_m‖₁ (1 when either norm is below 1e-7);
//! - weighted: d_m = w_m · s_m · μ_m · δ_m;
//! - with sign consensus (`ties`, `dare_ties`, `breadcrumbs_ties`): the elected sign is
//!   σ = +1 if Σ_m d_m ≥ 0 else −1, and only the d_m of sign σ count (a zero never does):
//!   D = Σ_{sign d_m = σ} d_m, W = Σ_{sign d_m = σ} w_m (W = 0 → 1);
//!   without: D = Σ_m d_m, W = Σ_m w_m (|W| < 1e-8 → 1);
//! - out = x₀ + λ · (`normalize` ? D / W : D).
//!
//! The masks, for a density ρ_m (≥ 1: no mask):
//! - magnitude (`ties`): the k = max(1, ⌊ρ·n⌋) largest |δ_m| of the tensor's n elements (ρ ≤ 0:
//!   none). Found by histogram selection over chunks; elements of equal magnitude at the
//!   threshold are kept in index order (mergekit keeps whichever its sort puts first);
//! - random (`dare_*`): each element kept with probability ρ, independently, by a counter-based
//!   hash of (seed, tensor, model, element index);
//! - magnitude outliers (`breadcrumbs*`, γ_m): in ascending order of |δ_m|, the ranks
//!   [n − ⌊ρn⌋ − ⌊γn⌋, n − ⌊γn⌋) (the lower bound at least 0): the largest ⌊γn⌋ and the
//!   smallest are dropped;
//! - magnitude-ranked random (`della*`, ε_m): within each row (the whole tensor for 1-D ones),
//!   with r the rank of |δ_m| among the row's c elements (0 = smallest; equal magnitudes in
//!   index order), each element kept with probability ρ − ε + 2ε·r/(c − 1), independently, by
//!   the same counter-based hash as DARE (ρ ± ε must lie in (0, 1)).
//!
//! Defaults (mergekit 0.1.5): normalize is on for `ties` and `della`, rescale on for `dare_*`
//! and `della*`, λ = 1, ρ = 1, γ = 0.01, ε = 0.15. Arithmetic is f32 in mergekit's order of
//! operations.

// Index loops follow the formulas (several arrays indexed by the same model/element).
#![allow(clippy::needless_range_loop)]

use super::kernel::{
    draws, keep_mask, keep_threshold, rank_order, Block, Kernel, RadixScratch, RankWindow, TensorCx,
};
use crate::error::Result;

/// How task vectors are sparsified before they are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sparsify {
    None,
    Magnitude,
    Random,
    Outliers,
    /// DELLA: random with a probability that grows with the magnitude's rank in its row.
    MagPrune,
}

/// One tensor's task-arithmetic merge. Input 0 is the base.
pub struct TaskArithmetic {
    pub cx: TensorCx,
    pub sparsify: Sparsify,
    pub consensus: bool,
    /// Per model (inputs 1..N): weight, density, γ.
    pub weights: Vec<f64>,
    pub densities: Vec<f64>,
    pub gammas: Vec<f64>,
    pub normalize: bool,
    pub rescale: bool,
    pub lambda: f64,
    /// Per model: its random stream (DARE, DELLA).
    streams: Vec<u64>,
    /// DELLA: per model ε, the row length c, and per masked model the keep threshold of each
    /// rank (the same for every row: computed once per tensor).
    epsilons: Vec<f64>,
    cols: usize,
    rank_thresholds: Vec<Vec<u64>>,
}

impl TaskArithmetic {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cx: TensorCx,
        sparsify: Sparsify,
        consensus: bool,
        weights: Vec<f64>,
        densities: Vec<f64>,
        gammas: Vec<f64>,
        normalize: bool,
        rescale: bool,
        lambda: f64,
    ) -> TaskArithmetic {
        let streams = (0..weights.len()).map(|m| cx.stream(m + 1)).collect();
        TaskArithmetic {
            cx,
            sparsify,
            consensus,
            weights,
            densities,
            gammas,
            normalize,
            rescale,
            lambda,
            streams,
            epsilons: Vec::new(),
            cols: 1,
            rank_thresholds: Vec::new(),
        }
    }

    /// DELLA's ε per model and the length of the rows its ranks are taken in.
    pub fn with_ranks(mut self, epsilons: Vec<f64>, cols: usize) -> TaskArithmetic {
        self.epsilons = epsilons;
        // Row ranks pack the index in 32 bits; a longer row is ranked as rows of 2^32 − 1.
        self.cols = cols.clamp(1, u32::MAX as usize);
        let c = self.cols;
        self.rank_thresholds = (0..self.models())
            .map(|m| {
                if self.sparsify != Sparsify::MagPrune || !self.masked(m) {
                    return Vec::new();
                }
                let (rho, eps) = (self.densities[m], self.epsilons[m]);
                (0..c)
                    .map(|r| {
                        let rn = if c > 1 {
                            r as f64 / (c - 1) as f64
                        } else {
                            0.0
                        };
                        keep_threshold((rho - eps) + rn * 2.0 * eps)
                    })
                    .collect()
            })
            .collect();
        self
    }

    /// DELLA's masks of one block (whole rows): per model, empty when it is not masked.
    fn ranked_masks(&self, b: &Block) -> Vec<Vec<bool>> {
        let c = self.cols;
        let (mut mags, mut order, mut u) = (Vec::with_capacity(c), Vec::new(), vec![0u64; c]);
        let mut scratch = RadixScratch::default();
        (0..self.models())
            .map(|m| {
                if !self.masked(m) {
                    return Vec::new();
                }
                let mut keep = vec![false; b.len()];
                let thr = &self.rank_thresholds[m];
                for row in 0..b.len() / c {
                    let lo = row * c;
                    // Magnitudes are ≥ 0 (sign bit clear, NaN above ∞): their bit patterns
                    // order as `total_cmp` does; equal ones rank in index order (stable).
                    mags.clear();
                    mags.extend(
                        (0..c).map(|j| (b.xs[m + 1][lo + j] - b.xs[0][lo + j]).abs().to_bits()),
                    );
                    rank_order(&mags, &mut order, &mut scratch);
                    draws(self.streams[m], b.start + lo as u64, &mut u);
                    for (&j, &t) in order.iter().zip(thr) {
                        let j = j as usize;
                        keep[lo + j] = u[j] < t;
                    }
                }
                keep
            })
            .collect()
    }

    /// The per-block masks of the methods that need a whole row at once (DELLA), else none.
    fn block_masks(&self, b: &Block) -> Vec<Vec<bool>> {
        if self.sparsify == Sparsify::MagPrune {
            self.ranked_masks(b)
        } else {
            Vec::new()
        }
    }

    fn models(&self) -> usize {
        self.weights.len()
    }

    /// Whether model m's task vector is masked at all (density < 1 with a sparsifier).
    fn masked(&self, m: usize) -> bool {
        self.sparsify != Sparsify::None && self.densities[m] < 1.0
    }

    fn selects(&self) -> bool {
        matches!(self.sparsify, Sparsify::Magnitude | Sparsify::Outliers)
    }

    /// μ_m of the block's elements (`ranked`: DELLA's masks of the block; `scratch` holds
    /// DARE's draws), or `None` when every element is kept. Computed once per block and model
    /// in a loop of its own, so the sums' and combine's loops do not dispatch per element.
    fn mask<'a>(
        &self,
        b: &'a Block,
        ranked: &'a [Vec<bool>],
        m: usize,
        scratch: &'a mut Vec<bool>,
    ) -> Option<&'a [bool]> {
        if !self.masked(m) {
            return None;
        }
        match self.sparsify {
            Sparsify::None => None,
            Sparsify::MagPrune => Some(&ranked[m][..b.len()]),
            Sparsify::Random => {
                let (st, t, start) = (self.streams[m], keep_threshold(self.densities[m]), b.start);
                scratch.clear();
                scratch.resize(b.len(), false);
                keep_mask(st, start, t, scratch);
                Some(&scratch[..])
            }
            Sparsify::Magnitude | Sparsify::Outliers => Some(&b.selected[m][..b.len()]),
        }
    }

    /// Whether the rescaling sums are needed.
    fn rescales(&self) -> bool {
        self.rescale && (0..self.models()).any(|m| self.masked(m))
    }
}

impl Kernel for TaskArithmetic {
    fn block_len(&self) -> usize {
        if self.sparsify == Sparsify::MagPrune {
            // Whole rows, about BLOCK elements.
            self.cols * (super::kernel::BLOCK / self.cols).max(1)
        } else {
            super::kernel::BLOCK
        }
    }

    fn selections(&self) -> usize {
        if self.selects() {
            self.models()
        } else {
            0
        }
    }

    fn key(&self, sel: usize, b: &Block, out: &mut [f32]) {
        for ((o, x), x0) in out.iter_mut().zip(b.xs[sel + 1].iter()).zip(b.xs[0].iter()) {
            *o = (x - x0).abs();
        }
    }

    fn window(&self, sel: usize, n: u64, _zeros: u64) -> RankWindow {
        let rho = self.densities[sel];
        if rho >= 1.0 {
            return RankWindow::all(n);
        }
        match self.sparsify {
            Sparsify::Magnitude => {
                if rho <= 0.0 || n == 0 {
                    RankWindow { lo: n, hi: n }
                } else {
                    RankWindow::top(n, ((rho * n as f64) as u64).max(1))
                }
            }
            _ => {
                let target = (rho.max(0.0) * n as f64) as u64;
                let top = (self.gammas[sel].max(0.0) * n as f64) as u64;
                let bot = n.saturating_sub(target + top);
                RankWindow {
                    lo: bot,
                    hi: (bot + target).min(n),
                }
            }
        }
    }

    fn sums_len(&self) -> usize {
        if self.rescales() {
            2 * self.models()
        } else {
            0
        }
    }

    fn sums(&self, b: &Block, acc: &mut [f64]) {
        let ranked = self.block_masks(b);
        let (n, x0) = (b.len(), b.xs[0]);
        for m in 0..self.models() {
            let xm = &b.xs[m + 1][..n];
            // Sequential f64 sums in element order (the fixed fold order). Adding +0 for a
            // dropped element leaves `after` (≥ +0) unchanged: the same bits as skipping it.
            let (mut before, mut after) = (0f64, 0f64);
            let mut scratch = Vec::new();
            match self.mask(b, &ranked, m, &mut scratch) {
                None => {
                    for j in 0..n {
                        let d = (xm[j] - x0[j]).abs() as f64;
                        before += d;
                        after += d;
                    }
                }
                Some(keep) => {
                    for j in 0..n {
                        let d = (xm[j] - x0[j]).abs() as f64;
                        before += d;
                        after += if keep[j] { d } else { 0.0 };
                    }
                }
            }
            acc[2 * m] += before;
            acc[2 * m + 1] += after;
        }
    }

    fn prepare(&self, sums: &[f64]) -> Result<Vec<f64>> {
        // Per model: the rescaling factor s_m (as mergekit: the ratio of the f32 norms).
        Ok((0..self.models())
            .map(|m| {
                if sums.is_empty() || !self.masked(m) {
                    return 1.0;
                }
                let (before, after) = (sums[2 * m] as f32, sums[2 * m + 1] as f32);
                if before < 1e-7 || after < 1e-7 {
                    1.0
                } else {
                    (before / after) as f64
                }
            })
            .collect())
    }

    /// Without sign consensus and with every task vector kept whole (density ≥ 1, or no
    /// sparsifier: `task_arithmetic`, and `dare_linear`, `breadcrumbs`, `della_linear` at
    /// density 1), out = x₀ + λ·Σ w_m (x_m − x₀) / W: the coefficients λ·w_m/W on the models
    /// and 1 − Σ of them on the base.
    fn affine(&self) -> Option<Vec<f64>> {
        if self.consensus || (0..self.models()).any(|m| self.masked(m)) {
            return None;
        }
        // W as `combine` has it: the f32 sum, 1 when nearly 0 (or without normalize).
        let mut t = 0f32;
        for &w in &self.weights {
            t += w as f32;
        }
        let div = if !self.normalize || t.abs() < 1e-8 {
            1.0
        } else {
            self.weights.iter().sum::<f64>()
        };
        let models: Vec<f64> = self.weights.iter().map(|w| self.lambda * w / div).collect();
        let mut c = vec![1.0 - models.iter().sum::<f64>()];
        c.extend(models);
        Some(c)
    }

    fn combine(&self, b: &Block, out: &mut [f32]) {
        let (mm, n) = (self.models(), b.len());
        let w: Vec<f32> = self.weights.iter().map(|&w| w as f32).collect();
        let lambda = self.lambda as f32;
        let wsum = {
            let mut t = 0f32;
            for &x in &w {
                t += x;
            }
            if t.abs() < 1e-8 {
                1.0
            } else {
                t
            }
        };
        let ranked = self.block_masks(b);
        let x0 = &b.xs[0][..n];
        // d_m for the whole block, model by model (tight loops), then the per-element
        // consensus over the models: the same f32 operations in the same order per element.
        let mut scratch = Vec::new();
        D.with_borrow_mut(|d| {
            d.clear();
            d.resize((mm + 3) * n, 0.0);
            for m in 0..mm {
                let dm = &mut d[m * n..(m + 1) * n];
                let xm = &b.xs[m + 1][..n];
                let wm = w[m];
                if !self.masked(m) {
                    for j in 0..n {
                        dm[j] = (xm[j] - x0[j]) * wm;
                    }
                    continue;
                }
                let scaled = self.rescales();
                let sm = b.params.get(m).map_or(1.0, |&v| v as f32);
                let keep = self.mask(b, &ranked, m, &mut scratch).unwrap_or(&[]);
                for j in 0..n {
                    let v = xm[j] - x0[j];
                    let mut v = if keep[j] { v } else { v * 0.0 };
                    if scaled {
                        v *= sm;
                    }
                    dm[j] = v * wm;
                }
            }
            // The per-element reductions over the models, vectorised over the elements (models
            // outer, elements inner): each element's accumulators still add the models in order.
            let (d, acc) = d.split_at_mut(mm * n);
            let (mixed, rest) = acc.split_at_mut(n);
            let (sw, div) = rest.split_at_mut(n);
            mixed.fill(0.0);
            if self.consensus {
                // σ = +1 when Σ d_m ≥ 0 (NaN: −1); d_m counts when its sign is σ (0 never).
                sw.fill(0.0);
                for m in 0..mm {
                    for (t, &v) in sw.iter_mut().zip(&d[m * n..(m + 1) * n]) {
                        *t += v;
                    }
                }
                div.fill(0.0);
                for m in 0..mm {
                    let wm = w[m];
                    let dm = &d[m * n..(m + 1) * n];
                    for j in 0..n {
                        let (v, pos) = (dm[j], sw[j] >= 0.0);
                        let mask = if (pos && v > 0.0) || (!pos && v < 0.0) {
                            1.0f32
                        } else {
                            0.0
                        };
                        mixed[j] += v * mask;
                        div[j] += wm * mask;
                    }
                }
                for t in div.iter_mut() {
                    if *t == 0.0 {
                        *t = 1.0;
                    }
                }
            } else {
                for m in 0..mm {
                    for (t, &v) in mixed.iter_mut().zip(&d[m * n..(m + 1) * n]) {
                        *t += v;
                    }
                }
                div.fill(wsum);
            }
            for j in 0..n {
                let mut v = if self.normalize {
                    mixed[j] / div[j]
                } else {
                    mixed[j]
                };
                if lambda != 1.0 {
                    v *= lambda;
                }
                out[j] = x0[j] + v;
            }
        })
    }
}

thread_local! {
    /// The combine's per-thread d_m scratch (one block of every model), reused across blocks.
    static D: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}
