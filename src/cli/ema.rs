//! `warp ema` (alias `warp-ema`): exponential moving average over a sequence of checkpoints.

use super::common::{EngineArgs, OutputArgs};
use super::lora_merge::{run_merge_as, AsArgs};
use super::Ctx;
use crate::merge::ema::Ema;

/// Exponential moving average over a sequence of checkpoints.
///
/// EMA of checkpoints in order: ema ← CK1, then ema ← (1−μ)·ema + μ·CKi for each next one
/// (WARP's anchor update, applied offline). Computed in one pass: CKi gets μ(1−μ)^(N−i), CK1
/// gets (1−μ)^(N−1).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Update rate μ in (0, 1]. The WARP paper uses 0.01 per RL step.
    #[arg(long, value_name = "MU")]
    mu: f64,
    /// The checkpoints, oldest first (at least two). The first one's config and tokenizer files
    /// are copied.
    #[arg(required = true, num_args = 2.., value_name = "CKPT")]
    checkpoints: Vec<String>,
    #[command(flatten)]
    as_kind: AsArgs,
    #[command(flatten)]
    out: OutputArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

pub fn run(a: &Args, _: &Ctx) -> crate::Result<()> {
    let method = Ema::new(a.mu, a.checkpoints.len())?;
    let inputs = a
        .checkpoints
        .iter()
        .map(|c| (c.clone(), "checkpoint"))
        .collect();
    run_merge_as(&method, inputs, a.as_kind.kind, &a.out, &a.engine, None)
}
