//! `nearswap` (base x₀, one model x₁, threshold t): per element, with a = |x₀ − x₁|,
//! ω = clamp(t / max(a, 1e-6), 0, 1) and out = ω·x₁ + (1 − ω)·x₀: values that are already
//! close are swapped for the model's, distant ones stay the base's. f32.

use super::kernel::{Block, Kernel};

pub struct NearSwap {
    pub t: f64,
}

impl Kernel for NearSwap {
    fn combine(&self, b: &Block, out: &mut [f32]) {
        let t = self.t as f32;
        for ((o, &a), &x) in out.iter_mut().zip(b.xs[0].iter()).zip(b.xs[1].iter()) {
            let w = (t / (a - x).abs().max(1e-6)).clamp(0.0, 1.0);
            *o = w * x + (1.0 - w) * a;
        }
    }
}
