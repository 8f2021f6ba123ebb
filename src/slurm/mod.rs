//! The Slurm launcher's library side: the steps of a plan as `sbatch` jobs.
//!
//! Each step becomes a batch job running its command; the steps of one array group (the M RL
//! runs of an iteration) become ONE job array; a step waits for its predecessors with
//! `--dependency=afterok:…` and `--kill-on-invalid-dep=yes`, so when a step fails Slurm cancels
//! everything downstream of it. The job ids go to `RUN/slurm.json` (written atomically after
//! every submission); the batch scripts and Slurm's own output files to `RUN/slurm/`.
//!
//! Job state comes from `squeue`/`scontrol` (no accounting database is assumed, so `sacct` is
//! not used), but **completion is read from the run folder only**: a step is done when its
//! completion marker exists, whatever Slurm says. Slurm forgets finished jobs after `MinJobAge`,
//! and a dependency on a job it no longer knows counts as satisfied, so a submitted step only
//! ever depends on jobs that are queued or running, and every batch script checks itself that
//! the markers of its predecessors exist before it runs its command.
//!
//! Stopping: Slurm stops a job (scancel, time limit, preemption, node shutdown) by sending
//! SIGTERM to its processes, waiting `KillWait` seconds (30 by default) and sending SIGKILL. The
//! script `exec`s the command, so the command itself receives the SIGTERM. Every warp command
//! writes its output atomically (a temporary folder renamed into place), and an RL run keeps its
//! periodic checkpoints, so a stopped step leaves its folder resumable even when SIGKILL follows;
//! a requeued job (preemption with `PreemptMode=REQUEUE`) runs the same script again, which then
//! takes the step's resume command because the step's start marker exists.

mod checks;
mod config;
mod follow;
mod lock;
mod records;
mod script;
mod status;
mod submit;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

pub use config::{Resources, SlurmConfig};
pub use records::{Record, Submitted};
pub use script::shell_quote;
pub use status::{folder_status, JobInfo, StepState, StepStatus};
pub use submit::Submission;

/// What a step does; each kind has its own resources (`[slurm.rl]`, `[slurm.merge]`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    Rl,
    Merge,
    Eval,
    Plot,
}

impl StepKind {
    pub const ALL: [StepKind; 4] = [
        StepKind::Rl,
        StepKind::Merge,
        StepKind::Eval,
        StepKind::Plot,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StepKind::Rl => "rl",
            StepKind::Merge => "merge",
            StepKind::Eval => "eval",
            StepKind::Plot => "plot",
        }
    }
}

/// How to continue an attempt of a step that was stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resume {
    /// Exists once an attempt has started; the batch script then runs `argv` below instead of
    /// the step's own command.
    pub started: PathBuf,
    pub argv: Vec<String>,
}

/// One step of a plan, as the launcher needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub id: String,
    /// Ids of the steps that must be complete first (they come earlier in the plan).
    pub after: Vec<String>,
    /// The command (program first).
    pub argv: Vec<String>,
    pub resume: Option<Resume>,
    /// Exists once the step is complete (the command writes it atomically, last).
    pub done: PathBuf,
    /// The command's stdout and stderr (appended to, one header line per attempt).
    pub log: PathBuf,
    pub kind: StepKind,
    /// Steps with the same group are submitted together as one job array (they must share
    /// their kind and may not depend on each other).
    pub array: Option<String>,
}

/// Submits, follows and cancels the steps of one run folder.
#[derive(Debug, Clone)]
pub struct Slurm {
    pub config: SlurmConfig,
    /// The run folder (absolute): `slurm.json` and `slurm/` go there.
    run_dir: PathBuf,
    /// The directory the jobs start in (absolute): where this process runs, so relative paths
    /// in commands mean the same in the jobs.
    workdir: PathBuf,
    /// Added to the environment of the Slurm commands (and so, through sbatch's default
    /// `--export=ALL`, of the jobs), e.g. `SLURM_CONF` of a private cluster.
    env: Vec<(OsString, OsString)>,
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).at(p)
}

/// Refuses a path that cannot go into a batch script (a control character in it): the run
/// folder's, checked with the other settings before anything is written.
pub fn check_script_path(p: &Path) -> Result<()> {
    script::text(p).map(|_| ())
}

impl Slurm {
    /// A launcher for the run folder `run_dir`; jobs start in the current directory.
    pub fn new(config: SlurmConfig, run_dir: &Path) -> Result<Slurm> {
        config.check()?;
        let workdir = std::env::current_dir().at(".")?;
        // Both go into every batch script: refused up front (before anything is written) when
        // they cannot go there safely.
        script::text(&workdir)?;
        script::text(run_dir)?;
        Ok(Slurm {
            config,
            run_dir: absolute(run_dir)?,
            workdir,
            env: Vec::new(),
        })
    }

    /// Adds a variable to the environment of the Slurm commands and the jobs.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Slurm {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn record_path(&self) -> PathBuf {
        self.run_dir.join("slurm.json")
    }

    /// The batch scripts and Slurm's output files.
    pub fn slurm_dir(&self) -> PathBuf {
        self.run_dir.join("slurm")
    }

    pub(super) fn command(&self, program: &str, args: &[String]) -> Result<Output> {
        Command::new(program)
            .args(args)
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::io(format!("Slurm command {program}"), e))
    }
}

#[cfg(test)]
mod tests;
