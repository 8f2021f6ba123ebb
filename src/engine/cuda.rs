//! Stand-in for the CUDA backend in builds without the `cuda` feature: says so clearly.

use super::backend::Backend;
use crate::error::{Error, Result};

pub fn open(device: usize) -> Result<Box<dyn Backend>> {
    Err(Error::backend(
        format!("cuda:{device}"),
        "this build of warp has no CUDA support (rebuild with --features cuda)",
    ))
}
