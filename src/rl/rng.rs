//! The seeded generator of the RL code lives in [`crate::rng`] (the statistics use it too, without
//! the `rl` feature); this path stays for the RL modules that name it.
pub use crate::rng::SplitMix64;
