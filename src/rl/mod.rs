//! RL side of WARP (feature `rl`, libtorch through tch): the Llama-family policy model, its
//! tokenizer, batched sampling with a KV cache, and scoring. The trainer comes next (see
//! docs/RL.md).
pub mod config;
pub mod generate;
pub mod model;
pub mod tokenizer;

pub use config::{LlamaConfig, RopeScaling};
pub use generate::{generate, score, GenerateOptions, Generation, Scores};
pub use model::{KvCache, LlamaModel};
pub use tokenizer::Tokenizer;
