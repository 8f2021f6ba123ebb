//! `warp slerp` (alias `warp-slerp`): SLERP of task vectors (WARP stage 2), with fused LITI
//! exports (stage 3).

use std::path::PathBuf;

use super::common::{EngineArgs, OutputArgs};
use super::lora_merge::{run_merge_as, AsArgs};
use super::Ctx;
use crate::merge::{slerp::Slerp, Grouping};

/// SLERP of M ≥ 2 task vectors from one init, with fused LITI exports (WARP stages 2 and 3).
///
/// Merge M ≥ 2 policies fine-tuned from the same init by spherical interpolation of their task
/// vectors δm = θm − θinit (WARP, Sec. 3.2; M > 2 merged iteratively with λ = 1/m, App. B.3), and
/// optionally interpolate towards the init (LITI): with several --eta, ONE read of the inputs
/// writes OUT/eta-0.30/, OUT/eta-1.00/, …
///
/// Checkpoints are HF folders (model.safetensors or an index + shards), .safetensors files, or
/// hub ids org/name[@revision] (downloaded into the HF cache).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The fine-tuned models (two or more), all from the same init.
    #[arg(required = true, num_args = 2.., value_name = "MODEL")]
    models: Vec<String>,
    /// The shared initialization θinit the task vectors are taken from. Its config and tokenizer
    /// files are copied to the outputs.
    #[arg(long, value_name = "BASE")]
    init: String,
    /// LITI coefficient η: output (1−η)·θinit + η·θslerp. Repeat for several outputs (fused into
    /// one pass). η > 1 extrapolates. Default: the SLERP merge itself (η = 1), written to -o.
    #[arg(long = "eta", value_name = "ETA")]
    etas: Vec<f64>,
    /// Granularity of the angle Ω: tensor (one per weight tensor), layer (one per transformer
    /// block `…layers.N.…`), global (one over the whole model; reads the inputs twice).
    #[arg(long, value_enum, default_value_t = Angle::Tensor)]
    angle: Angle,
    /// Fall back to LERP when |cos Ω| exceeds this (near-(anti)parallel task vectors, where the
    /// SLERP formula is ill-conditioned); also when a task vector is zero.
    #[arg(long, default_value_t = crate::merge::slerp::DEFAULT_THRESHOLD, value_name = "COS")]
    lerp_threshold: f64,
    /// Write per-tensor and per-block task-vector norms and angles (JSON) to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    #[command(flatten)]
    as_kind: AsArgs,
    #[command(flatten)]
    out: OutputArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

/// `--angle`: the command-line face of [`Grouping`] (the library's enum knows no clap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Angle {
    /// One angle per weight tensor (mergekit's convention; the default).
    Tensor,
    /// One angle per transformer block (`…layers.N.…`); tensors outside blocks keep their own.
    Layer,
    /// One angle over the whole model.
    Global,
}

impl From<Angle> for Grouping {
    fn from(a: Angle) -> Grouping {
        match a {
            Angle::Tensor => Grouping::Tensor,
            Angle::Layer => Grouping::Layer,
            Angle::Global => Grouping::Global,
        }
    }
}

pub fn run(a: &Args, _: &Ctx) -> crate::Result<()> {
    let method = Slerp::new(
        a.models.len(),
        a.etas.clone(),
        a.angle.into(),
        a.lerp_threshold,
    )?;
    let mut inputs = vec![(a.init.clone(), "init")];
    inputs.extend(a.models.iter().map(|m| (m.clone(), "model")));
    run_merge_as(
        &method,
        inputs,
        a.as_kind.kind,
        &a.out,
        &a.engine,
        a.report.as_deref(),
    )
}
