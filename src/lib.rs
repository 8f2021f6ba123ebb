//! warp: WARP (Weight Averaged Rewarded Policies) at checkpoint level.
//!
//! Library first: [`cli`] is the one command tree (`warp <command>`, and the named tools such as
//! `warp-slerp` as aliases of it), a thin layer over these modules; the binaries in `bin/` are a
//! few lines each (the aliases run `warp` and link nothing of this library).
pub mod builtin;
pub mod cli;
pub mod device;
pub mod engine;
pub mod error;
pub mod hub;
pub mod interrupt;
pub mod io;
pub mod layout;
pub mod limits;
pub mod merge;
pub mod pipeline;
pub mod plot;
pub mod progress;
/// The Python extension module `warp_align._native` (feature `python`).
#[cfg(feature = "python")]
pub mod python;
pub mod report;
/// The RL tools' settings in every build; the RL code itself with the `rl` feature.
pub mod rl;
pub mod rng;
pub mod slurm;
pub mod stats;
pub mod tasks;

pub use device::Device;
pub use error::{Error, Result};
