//! The integration tests: one crate, so the library is linked once per feature set. Each former
//! test file is a module; adding one is one line here. Modules that need a cargo feature are
//! compiled with it only. Run one module with a filter, e.g. `cargo test --test it -- plot::`.

mod common;
mod hub_server;

pub mod cli;
mod coverage;
mod dtypes;
mod hostile;
mod hub_cli;
mod hub_lora;
mod hub_merge;
mod hub_parts;
mod hub_push;
mod hub_python;
mod io_errors;
mod lora;
mod merge_recipe;
mod merge_recipe_lora;
mod merge_recipe_lora_rank;
mod merge_reference;
mod plot;
mod roundtrip;
mod science;
mod slurm;
mod slurm_cluster;

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "rl")]
mod hostile_rl;
#[cfg(feature = "rl")]
mod lora_peft;
#[cfg(feature = "rl")]
mod pipeline;
#[cfg(feature = "rl")]
mod pipeline_lora;
#[cfg(feature = "rl")]
mod rl_chat;
#[cfg(feature = "rl")]
mod rl_cli;
#[cfg(feature = "rl")]
mod rl_eval;
#[cfg(feature = "rl")]
mod rl_families;
#[cfg(feature = "rl")]
mod rl_grpo;
#[cfg(feature = "rl")]
mod rl_lora;
#[cfg(feature = "rl")]
mod rl_lora_peft;
#[cfg(feature = "rl")]
mod rl_model;
#[cfg(feature = "rl")]
mod rl_precision;
#[cfg(feature = "rl")]
mod rl_reward;
#[cfg(feature = "rl")]
mod rl_scale;
#[cfg(feature = "rl")]
mod rl_topk_kl;
#[cfg(feature = "rl")]
mod rl_train;
#[cfg(feature = "rl")]
mod trl;
