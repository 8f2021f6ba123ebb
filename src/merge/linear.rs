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
            // torch's addcmul_ on x86-64 CPUs: one fused multiply-add.
            fma_accumulate(out, x, c);
        }
        if self.normalize {
            for o in out.iter_mut() {
                *o /= sum;
            }
        }
    }
}

/// out += c·x, each element one correctly rounded fused multiply-add. Without the FMA
/// instruction enabled at compile time `mul_add` is a call to libm's `fmaf` per element; with
/// it (detected at run time) the loop is vectorised. Both round once, so the bytes agree.
fn fma_accumulate(out: &mut [f32], x: &[f32], c: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has the features the function is compiled for (checked above).
        unsafe { fma_accumulate_avx2(out, x, c) };
        return;
    }
    for (o, v) in out.iter_mut().zip(x) {
        *o = v.mul_add(c, *o);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_accumulate_avx2(out: &mut [f32], x: &[f32], c: f32) {
    for (o, v) in out.iter_mut().zip(x) {
        *o = v.mul_add(c, *o);
    }
}

#[cfg(test)]
mod tests {
    /// The vectorised path rounds as the scalar `fmaf` does: bit for bit, on values whose
    /// products and sums round differently fused and unfused.
    #[test]
    fn fma_accumulate_equals_scalar_mul_add() {
        let mut rng = crate::rng::SplitMix64::stream(7, 3);
        let x: Vec<f32> = (0..1037)
            .map(|_| (rng.next_open01() * 2.0 - 1.0) as f32 * 3.7)
            .collect();
        let init: Vec<f32> = (0..1037)
            .map(|_| (rng.next_open01() - 0.5) as f32)
            .collect();
        let c = 0.333_333_34f32;
        let mut fast = init.clone();
        super::fma_accumulate(&mut fast, &x, c);
        let slow: Vec<f32> = init.iter().zip(&x).map(|(o, v)| v.mul_add(c, *o)).collect();
        let unfused = init
            .iter()
            .zip(&x)
            .filter(|(o, v)| **v * c + **o != v.mul_add(c, **o));
        assert!(
            unfused.count() > 0,
            "the data should tell fused from unfused"
        );
        assert_eq!(
            fast.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            slow.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
}
