//! `warp liti` (alias `warp-liti`): linear interpolation towards the initialization (WARP
//! stage 3).

use super::common::{EngineArgs, OutputArgs};
use super::lora_merge::{run_merge_as, AsArgs};
use super::Ctx;
use crate::merge::liti::Liti;

/// LITI: interpolate a merged model back towards its init, at one or several η.
///
/// Interpolate a merged model back towards its init: θη = (1−η)·θinit + η·θmerged (WARP, Sec.
/// 3.3). η traces the KL–reward Pareto front; η > 1 extrapolates. Several --eta are written in
/// one pass to OUT/eta-0.30/, OUT/eta-0.50/, …; a single --eta is written to OUT itself.
#[derive(clap::Args, Debug)]
pub struct Args {
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
    as_kind: AsArgs,
    #[command(flatten)]
    out: OutputArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

pub fn run(a: &Args, _: &Ctx) -> crate::Result<()> {
    let method = Liti::new(a.etas.clone())?;
    let inputs = vec![(a.init.clone(), "init"), (a.merged.clone(), "merged")];
    run_merge_as(&method, inputs, a.as_kind.kind, &a.out, &a.engine, None)
}
