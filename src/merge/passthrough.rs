//! `passthrough`: each output tensor is one input tensor (slices pick the layers, renumbered in
//! order: depth up-scaling), optionally times a `scale`. Without a scale the bytes are copied.

use super::kernel::{Block, Kernel};

pub struct Scale {
    pub scale: f64,
}

impl Kernel for Scale {
    fn affine(&self) -> Option<Vec<f64>> {
        Some(vec![self.scale])
    }

    fn combine(&self, b: &Block, out: &mut [f32]) {
        let s = self.scale as f32;
        for (o, v) in out.iter_mut().zip(b.xs[0].iter()) {
            *o = v * s;
        }
    }
}

/// The output is input `input` (e.g. multi-SLERP of one model besides a base).
pub struct Pick {
    pub input: usize,
}

impl Kernel for Pick {
    fn affine(&self) -> Option<Vec<f64>> {
        // Only the inputs up to the picked one matter for the coefficient row's length: the
        // caller pads it with zeros.
        let mut c = vec![0.0; self.input + 1];
        c[self.input] = 1.0;
        Some(c)
    }

    fn combine(&self, b: &Block, out: &mut [f32]) {
        out[..b.len()].copy_from_slice(b.xs[self.input]);
    }
}
