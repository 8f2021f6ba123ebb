//! `warp lerp` (alias `warp-lerp`): linear interpolation of task vectors (task arithmetic),
//! with fused LITI exports.

use super::common::{EngineArgs, OutputArgs};
use super::lora_merge::{run_merge_as, AsArgs};
use super::Ctx;
use crate::merge::lerp::Lerp;

/// LERP (task arithmetic) of task vectors from one init, with fused LITI exports.
///
/// Merge models fine-tuned from the same init by a weighted sum of their task vectors:
/// θinit + Σ λm·(θm − θinit), λm = 1/M by default (the WARP paper's LERP baseline). With --eta,
/// also interpolate towards the init; several --eta are written in one pass.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The fine-tuned models (one or more), all from the same init.
    #[arg(required = true, value_name = "MODEL")]
    models: Vec<String>,
    /// The shared initialization θinit.
    #[arg(long, value_name = "BASE")]
    init: String,
    /// Weight λm of each model's task vector, in the order of the models (default 1/M each).
    #[arg(long = "weight", value_name = "LAMBDA")]
    weights: Vec<f64>,
    /// LITI coefficient η (repeatable): (1−η)·θinit + η·θlerp.
    #[arg(long = "eta", value_name = "ETA")]
    etas: Vec<f64>,
    #[command(flatten)]
    as_kind: AsArgs,
    #[command(flatten)]
    out: OutputArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

pub fn run(a: &Args, _: &Ctx) -> crate::Result<()> {
    let method = Lerp::new(a.models.len(), a.weights.clone(), a.etas.clone())?;
    let mut inputs = vec![(a.init.clone(), "init")];
    inputs.extend(a.models.iter().map(|m| (m.clone(), "model")));
    run_merge_as(&method, inputs, a.as_kind.kind, &a.out, &a.engine, None)
}
