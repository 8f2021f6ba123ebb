//! warp-convert: re-shard and/or change dtype, streaming.
#[path = "common.rs"]
mod common;

use std::process::ExitCode;

use clap::Parser;

/// Copy a checkpoint to a new folder with another shard size and/or float dtype, tensor by
/// tensor and chunk by chunk (memory stays bounded whatever the model size). Tensors whose dtype
/// does not change are copied bit for bit; bf16/f16 outputs round to nearest even.
#[derive(Parser, Debug)]
#[command(version, name = "warp-convert")]
struct Args {
    /// The checkpoint to convert (folder or .safetensors file).
    #[arg(value_name = "IN")]
    input: String,
    #[command(flatten)]
    out: common::OutputArgs,
    #[command(flatten)]
    engine: common::EngineArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    common::main_with("warp-convert", || {
        let inputs = vec![(args.input.clone(), "input")];
        common::run_merge(
            &warp::merge::convert::Convert,
            inputs,
            &args.out,
            &args.engine,
            None,
        )
    })
}
