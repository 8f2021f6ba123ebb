//! warp-lerp: linear interpolation of task vectors (task arithmetic), with fused LITI exports.
#[path = "common.rs"]
mod common;

use std::process::ExitCode;

use clap::Parser;
use warp::merge::lerp::Lerp;

/// Merge models fine-tuned from the same init by a weighted sum of their task vectors:
/// θinit + Σ λm·(θm − θinit), λm = 1/M by default (the WARP paper's LERP baseline). With --eta,
/// also interpolate towards the init; several --eta are written in one pass.
#[derive(Parser, Debug)]
#[command(version, name = "warp-lerp")]
struct Args {
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
    out: common::OutputArgs,
    #[command(flatten)]
    engine: common::EngineArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    common::main_with("warp-lerp", || {
        let method = Lerp::new(args.models.len(), args.weights.clone(), args.etas.clone())?;
        let mut inputs = vec![(args.init.clone(), "init")];
        inputs.extend(args.models.iter().map(|m| (m.clone(), "model")));
        common::run_merge(&method, inputs, &args.out, &args.engine, None)
    })
}
