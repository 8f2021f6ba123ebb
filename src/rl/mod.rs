//! RL side of WARP (feature `rl`, libtorch through tch): the Llama-family policy model, its
//! tokenizer, batched sampling with a KV cache, scoring, the built-in task and its supervised
//! model (`warp-sft`). See docs/RL.md.
pub mod cipher;
pub mod config;
pub mod data;
pub mod eval;
pub mod generate;
pub mod model;
pub mod optim;
pub mod reward;
pub mod reward_cmd;
pub mod reward_model;
pub mod rm_train;
pub mod rng;
pub mod sft;
pub mod task;
pub mod tokenizer;
pub mod trainer;

pub use config::{LlamaConfig, RopeScaling};
pub use generate::{generate, score, score_at, GenerateOptions, Generation, Scores};
pub use model::{KvCache, LlamaModel};
pub use tokenizer::Tokenizer;
