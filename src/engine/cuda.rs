//! Stand-in for the CUDA backend in builds without the `cuda` feature: says so clearly.

use super::backend::Backend;
use crate::error::{Error, Result};

pub fn open(device: usize) -> Result<Box<dyn Backend>> {
    Err(Error::feature("cuda", format!("device cuda:{device}")))
}
