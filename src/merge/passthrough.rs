//! `passthrough`: each output tensor is one input tensor (slices pick the layers, renumbered in
//! order: depth up-scaling), optionally times a `scale`. Without a scale the bytes are copied.

use super::kernel::{Block, Kernel};

pub struct Scale {
    pub scale: f64,
}

impl Kernel for Scale {
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
    fn combine(&self, b: &Block, out: &mut [f32]) {
        out[..b.len()].copy_from_slice(b.xs[self.input]);
    }
}
