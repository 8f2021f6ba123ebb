//! `warp cancel`: cancel the Slurm jobs of a `warp run` folder.

use std::path::PathBuf;

use super::Ctx;
use crate::error::{Error, Result};
use crate::pipeline::read_plan;
use crate::slurm::Slurm;

/// Cancel the Slurm jobs of a `warp run` folder.
///
/// Runs scancel on the jobs recorded in OUT/slurm.json that are still queued or running, and
/// prints each cancelled step and job on stdout.
///
/// A cancelled RL run keeps its checkpoints: `warp run OUT` submits what is missing again and
/// the run resumes.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run folder (the output of `warp run --launcher slurm`).
    dir: PathBuf,
}

pub fn run(a: &Args, _: &Ctx) -> Result<()> {
    let rec = read_plan(&a.dir)?;
    if rec.config.launcher != "slurm" {
        return Err(Error::Usage(format!(
            "{}: its steps run with the {} launcher, inside `warp run` (stop that one with Ctrl-C)",
            a.dir.display(),
            rec.config.launcher
        )));
    }
    let cancelled = Slurm::new(rec.config.slurm, &a.dir)?.cancel()?;
    if cancelled.is_empty() {
        eprintln!(
            "nothing to cancel: no job of {} is queued or running",
            a.dir.display()
        );
        return Ok(());
    }
    let text: Vec<String> = cancelled
        .iter()
        .map(|(step, job)| format!("{step:<20} job {job}"))
        .collect();
    super::common::out_line(&text.join("\n"))
}
