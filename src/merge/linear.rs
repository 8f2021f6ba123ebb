//! `linear` (model soup): out = Σ_n w_n·x_n, divided by Σ_n w_n when `normalize` (the default).
//! f32, inputs in recipe order (the base too, when it is one of the models). A zero weight sum
//! with normalize is refused when the recipe is resolved.

use super::kernel::{Block, Kernel};

pub struct Linear {
    pub weights: Vec<f64>,
    pub normalize: bool,
}

impl Kernel for Linear {
    fn affine(&self) -> Option<Vec<f64>> {
        // Σw ≠ 0 with normalize is checked when the recipe is resolved.
        let sum: f64 = self.weights.iter().sum();
        let d = if self.normalize { sum } else { 1.0 };
        Some(self.weights.iter().map(|w| w / d).collect())
    }

    fn combine(&self, b: &Block, out: &mut [f32]) {
        let w: Vec<f32> = self.weights.iter().map(|&w| w as f32).collect();
        let mut sum = 0f32;
        for &x in &w {
            sum += x;
        }
        out[..b.len()].fill(0.0);
        for (x, &c) in b.xs.iter().zip(&w) {
            for (o, v) in out.iter_mut().zip(x.iter()) {
                // torch's addcmul_ on x86-64 CPUs: one fused multiply-add.
                *o = v.mul_add(c, *o);
            }
        }
        if self.normalize {
            for o in out.iter_mut() {
                *o /= sum;
            }
        }
    }
}
