//! warp-ema: exponential moving average over a sequence of checkpoints.
#[path = "common.rs"]
mod common;

use std::process::ExitCode;

use clap::Parser;
use warp::merge::ema::Ema;

/// EMA of checkpoints in order: ema ← CK1, then ema ← (1−μ)·ema + μ·CKi for each next one
/// (WARP's anchor update, applied offline). Computed in one pass: CKi gets μ(1−μ)^(N−i), CK1
/// gets (1−μ)^(N−1).
#[derive(Parser, Debug)]
#[command(version, name = "warp-ema")]
struct Args {
    /// Update rate μ in (0, 1]. The WARP paper uses 0.01 per RL step.
    #[arg(long, value_name = "MU")]
    mu: f64,
    /// The checkpoints, oldest first (at least two). The first one's config and tokenizer files
    /// are copied.
    #[arg(required = true, num_args = 2.., value_name = "CKPT")]
    checkpoints: Vec<String>,
    #[command(flatten)]
    out: common::OutputArgs,
    #[command(flatten)]
    engine: common::EngineArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    common::main_with("warp-ema", || {
        let method = Ema::new(args.mu, args.checkpoints.len())?;
        let inputs = args
            .checkpoints
            .iter()
            .map(|c| (c.clone(), "checkpoint"))
            .collect();
        common::run_merge(&method, inputs, &args.out, &args.engine, None)
    })
}
