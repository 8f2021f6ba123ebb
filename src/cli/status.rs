//! `warp status`: where each step of a `warp run` folder stands.

use std::path::{Path, PathBuf};

use super::Ctx;
use crate::error::{IoContext, Result};
use crate::pipeline::{read_plan, slurm_steps};
use crate::slurm::{folder_status, Slurm, StepState};

/// Where each step of a `warp run` folder stands, with its Slurm job and its log.
///
/// Each step is done, running, pending (and why), failed (and how) or missing.
///
/// Completion is read from the run folder (a step is done when its output exists); for a run
/// with the Slurm launcher, the state of the jobs recorded in OUT/slurm.json comes from squeue
/// and scontrol. Prints a table on stdout; a summary on stderr.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run folder (the output of `warp run`).
    dir: PathBuf,
}

/// The folder the run's relative paths are relative to: where `warp run` ran, when `dir` is
/// the run folder `output` named from there, else the current directory.
fn base(dir: &Path, output: &Path) -> Result<PathBuf> {
    if output.is_absolute() {
        return Ok(PathBuf::new());
    }
    let dir = std::path::absolute(dir).at(dir)?;
    let n = output.components().count();
    match dir.ancestors().nth(n) {
        Some(b) if dir.ends_with(output) => Ok(b.to_path_buf()),
        _ => Ok(PathBuf::new()),
    }
}

pub fn run(a: &Args, _: &Ctx) -> Result<()> {
    let rec = read_plan(&a.dir)?;
    let base = base(&a.dir, &rec.config.output)?;
    let mut steps = slurm_steps(&rec.steps);
    for st in &mut steps {
        st.done = base.join(&st.done);
        st.log = base.join(&st.log);
        if let Some(r) = &mut st.resume {
            r.started = base.join(&r.started);
        }
    }
    let status = if rec.config.launcher == "slurm" {
        Slurm::new(rec.config.slurm.clone(), &a.dir)?.status(&steps)?
    } else {
        folder_status(&steps)
    };
    let width = status.iter().map(|s| s.id.len()).max().unwrap_or(4).max(4);
    let state_width = status
        .iter()
        .map(|s| s.state.to_string().chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut text = format!(
        "{:<width$}  {:<state_width$}  {:<10}  log\n",
        "step", "state", "job"
    );
    for s in &status {
        text += &format!(
            "{:<width$}  {:<state_width$}  {:<10}  {}\n",
            s.id,
            s.state.to_string(),
            s.job.as_deref().unwrap_or("-"),
            s.log.display()
        );
    }
    let count = |f: fn(&StepState) -> bool| status.iter().filter(|s| f(&s.state)).count();
    let done = count(|s| *s == StepState::Done);
    let failed = count(|s| matches!(s, StepState::Failed(_)));
    let active = count(|s| matches!(s, StepState::Pending(_) | StepState::Running));
    super::common::out_line(text.trim_end())?;
    eprintln!(
        "{done}/{} done, {active} queued or running, {failed} failed ({} launcher)",
        status.len(),
        rec.config.launcher
    );
    Ok(())
}
