//! warp: WARP (Weight Averaged Rewarded Policies) at checkpoint level.
//!
//! Library first: the binaries in `bin/` are thin shells over these modules.
pub mod cancel;
pub mod engine;
pub mod error;
pub mod hub;
pub mod io;
pub mod merge;
pub mod pipeline;
pub mod plot;
pub mod progress;
#[cfg(feature = "rl")]
pub mod rl;
pub mod rng;
pub mod stats;

pub use error::{Error, Result};
