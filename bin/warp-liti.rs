//! warp-liti: linear interpolation towards the initialization (WARP stage 3).
#[path = "common.rs"]
mod common;

use std::process::ExitCode;

use clap::Parser;
use warp::merge::liti::Liti;

/// Interpolate a merged model back towards its init: θη = (1−η)·θinit + η·θmerged (WARP, Sec.
/// 3.3). η traces the KL–reward Pareto front; η > 1 extrapolates. Several --eta are written in
/// one pass to OUT/eta-0.30/, OUT/eta-0.50/, …; a single --eta is written to OUT itself.
#[derive(Parser, Debug)]
#[command(version, name = "warp-liti")]
struct Args {
    /// The initialization θinit (its config and tokenizer files are copied).
    #[arg(long, value_name = "BASE")]
    init: String,
    /// The merged model θmerged (e.g. the output of warp-slerp).
    #[arg(long, value_name = "MODEL")]
    merged: String,
    /// LITI coefficient η (repeatable, at least one).
    #[arg(long = "eta", required = true, value_name = "ETA")]
    etas: Vec<f64>,
    #[command(flatten)]
    out: common::OutputArgs,
    #[command(flatten)]
    engine: common::EngineArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    common::main_with("warp-liti", || {
        let method = Liti::new(args.etas.clone())?;
        let inputs = vec![(args.init.clone(), "init"), (args.merged.clone(), "merged")];
        common::run_merge(&method, inputs, &args.out, &args.engine, None)
    })
}
