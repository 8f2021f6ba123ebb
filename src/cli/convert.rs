//! `warp convert` (alias `warp-convert`): re-shard and/or change dtype, streaming.

use super::common::{run_merge, EngineArgs, OutputArgs};
use super::Ctx;

/// Re-shard a checkpoint and/or change its float dtype, streaming.
///
/// Copy a checkpoint to a new folder with another shard size and/or float dtype, tensor by
/// tensor and chunk by chunk (memory stays bounded whatever the model size). Tensors whose dtype
/// does not change are copied bit for bit; bf16/f16 outputs round to nearest even.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The checkpoint to convert (folder or .safetensors file).
    #[arg(value_name = "IN")]
    input: String,
    #[command(flatten)]
    out: OutputArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

pub fn run(a: &Args, _: &Ctx) -> crate::Result<()> {
    let inputs = vec![(a.input.clone(), "input")];
    run_merge(
        &crate::merge::convert::Convert,
        inputs,
        &a.out,
        &a.engine,
        None,
    )
}
