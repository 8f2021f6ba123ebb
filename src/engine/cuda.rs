//! Stand-in for the CUDA backend in builds without the `cuda` feature: says so clearly.

use super::backend::Backend;
use crate::error::{Error, Result};

pub fn open(_device: usize) -> Result<Box<dyn Backend>> {
    Err(Error::Usage(
        "--device cuda: this build of warp has no CUDA support (rebuild with --features cuda)"
            .into(),
    ))
}
