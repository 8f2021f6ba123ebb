//! warp: WARP (Weight Averaged Rewarded Policies) at checkpoint level.
//!
//! Library first: the binaries in `bin/` are thin shells over these modules.
pub mod error;
pub mod hub;
pub mod io;
pub mod progress;

pub use error::{Error, Result};
