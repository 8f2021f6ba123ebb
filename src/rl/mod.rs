//! RL side of WARP (feature `rl`, libtorch through tch): the Llama-family policy model, its
//! tokenizer, batched sampling with a KV cache, scoring, the built-in task and its supervised
//! model (`warp sft`). See docs/RL.md.
//!
//! [`settings`] (the RL tools' configs) is compiled in every build, so the commands can show
//! their flags and say that this build lacks the feature; everything else needs `rl` (of
//! [`chat`], only the template choice, a setting, is in every build).
pub mod chat;
pub mod schema;
pub mod settings;

#[cfg(feature = "rl")]
pub mod chunked;
#[cfg(feature = "rl")]
pub mod cipher;
#[cfg(feature = "rl")]
pub mod config;
#[cfg(feature = "rl")]
pub mod cuda;
#[cfg(feature = "rl")]
pub mod data;
#[cfg(feature = "rl")]
pub mod eval;
#[cfg(feature = "rl")]
pub mod eval_lora;
#[cfg(feature = "rl")]
pub mod f32_checkpoint;
#[cfg(feature = "rl")]
pub mod generate;
#[cfg(feature = "rl")]
pub mod memory;
#[cfg(feature = "rl")]
pub mod model;
#[cfg(feature = "rl")]
pub mod optim;
#[cfg(feature = "rl")]
pub mod reward;
#[cfg(feature = "rl")]
pub mod reward_cmd;
#[cfg(feature = "rl")]
pub mod reward_model;
#[cfg(feature = "rl")]
pub mod rm_train;
#[cfg(feature = "rl")]
pub mod sft;
#[cfg(feature = "rl")]
pub mod textgen;
#[cfg(feature = "rl")]
pub mod tokenizer;
#[cfg(feature = "rl")]
pub mod trainer;
pub mod trl;

#[cfg(feature = "rl")]
pub use config::{Family, ModelConfig, Rope, RopeScaling};
#[cfg(feature = "rl")]
pub use generate::{
    generate, generate_batched, score, score_at, Batching, DecodeStats, GenerateOptions,
    Generation, Samples, Scores,
};
#[cfg(feature = "rl")]
pub use model::{CausalLm, Head, KvCache, ParamSpec};
pub use settings::{Anchor, Baseline, RlConfig, SaveDtype, SftConfig, TrainDtype};
#[cfg(feature = "rl")]
pub use tokenizer::Tokenizer;

/// The libtorch device for `device`: `auto` is the first GPU when libtorch sees one, else the
/// CPU; a GPU that libtorch does not see is an error.
#[cfg(feature = "rl")]
pub fn tch_device(device: crate::device::Device) -> crate::Result<tch::Device> {
    use crate::device::Device;
    match device {
        Device::Auto => {
            // libtorch's CUDA library is loaded only where a driver is (see `cuda`).
            if cuda::driver_present() {
                let _ = cuda::load_backend();
            }
            Ok(tch::Device::cuda_if_available())
        }
        Device::Cpu => Ok(tch::Device::Cpu),
        Device::Cuda(n) => {
            cuda::load_backend()
                .map_err(|e| crate::Error::compute(format!("device {device}"), e))?;
            let count = tch::Cuda::device_count();
            if (n as i64) < count {
                Ok(tch::Device::Cuda(n))
            } else {
                Err(crate::Error::compute(
                    format!("device {device}"),
                    format!("libtorch sees {count} CUDA device(s) here"),
                ))
            }
        }
    }
}
