//! Where each step stands: from its markers in the run folder and from Slurm's queue.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{Record, Slurm, Step};
use crate::error::{Error, Result};

/// What Slurm says about a job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobInfo {
    /// PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, …
    pub state: String,
    /// Why it is pending or how it ended (Dependency, Priority, NonZeroExitCode, …).
    pub reason: String,
}

impl JobInfo {
    pub(super) fn active(&self) -> bool {
        !matches!(
            self.state.as_str(),
            "COMPLETED"
                | "FAILED"
                | "CANCELLED"
                | "TIMEOUT"
                | "NODE_FAIL"
                | "PREEMPTED"
                | "OUT_OF_MEMORY"
                | "BOOT_FAIL"
                | "DEADLINE"
                | "SPECIAL_EXIT"
                | "REVOKED"
        )
    }
    pub(super) fn running(&self) -> bool {
        matches!(
            self.state.as_str(),
            "RUNNING" | "COMPLETING" | "CONFIGURING" | "SIGNALING" | "STAGE_OUT"
        )
    }
    /// Pending on a dependency that can no longer be met (a predecessor failed) — where the
    /// cluster does not cancel such jobs itself.
    pub(super) fn stuck(&self) -> bool {
        self.reason == "DependencyNeverSatisfied"
    }
}

/// Where a step stands.
#[derive(Debug, Clone, PartialEq)]
pub enum StepState {
    /// Its completion marker exists.
    Done,
    /// Never submitted, nor started.
    Missing,
    /// Not complete, not submitted, but an attempt started (it resumes when run again): a
    /// step of the local launcher, or one run before the run folder went to Slurm.
    Started,
    /// Queued; Slurm's reason (Dependency, Priority, Resources, …).
    Pending(String),
    Running,
    /// Not complete, and its job is over or gone: how it ended.
    Failed(String),
}

impl std::fmt::Display for StepState {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            StepState::Done => f.write_str("done"),
            StepState::Missing => f.write_str("missing"),
            StepState::Started => f.write_str("started (not complete)"),
            StepState::Pending(r) if r.is_empty() || r == "None" => f.write_str("pending"),
            StepState::Pending(r) => write!(f, "pending ({r})"),
            StepState::Running => f.write_str("running"),
            StepState::Failed(why) => write!(f, "failed ({why})"),
        }
    }
}

/// A step's state with what `warp status` shows beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepStatus {
    pub id: String,
    pub state: StepState,
    /// The recorded job, if the step was submitted.
    pub job: Option<String>,
    /// Slurm's state of that job, when Slurm still knows it.
    pub slurm_state: Option<String>,
    /// Slurm still holds the job (queued or running) — also a failed step's job that waits
    /// forever for a failed predecessor.
    pub queued: bool,
    pub log: PathBuf,
}

/// The last `n` lines of a text file (empty when it cannot be read).
pub(super) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn started_or_missing(st: &Step) -> StepState {
    match &st.resume {
        Some(r) if r.started.exists() => StepState::Started,
        _ => StepState::Missing,
    }
}

/// Where each step stands from the run folder alone (no scheduler): done, started or missing.
pub fn folder_status(steps: &[Step]) -> Vec<StepStatus> {
    steps
        .iter()
        .map(|st| StepStatus {
            id: st.id.clone(),
            state: if st.done.exists() {
                StepState::Done
            } else {
                started_or_missing(st)
            },
            job: None,
            slurm_state: None,
            queued: false,
            log: st.log.clone(),
        })
        .collect()
}

impl Slurm {
    /// Slurm's view of these jobs; jobs it no longer knows are absent from the map.
    pub fn query(&self, jobs: &[String]) -> Result<HashMap<String, JobInfo>> {
        let mut map = HashMap::new();
        for chunk in jobs.chunks(200) {
            let args: Vec<String> = ["-h", "-r", "-t", "all", "-o", "%i|%T|%r", "-j"]
                .iter()
                .map(|s| s.to_string())
                .chain([chunk.join(",")])
                .collect();
            let out = self.command("squeue", &args)?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() {
                // squeue fails when none of the ids is known any more.
                if stderr.contains("Invalid job id") {
                    continue;
                }
                return Err(Error::io(
                    "squeue",
                    std::io::Error::other(format!("{} ({})", stderr.trim(), out.status)),
                ));
            }
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let f: Vec<&str> = line.trim().splitn(3, '|').collect();
                if let [id, state, reason] = f[..] {
                    map.insert(
                        id.to_string(),
                        JobInfo {
                            state: state.to_string(),
                            reason: reason.to_string(),
                        },
                    );
                }
            }
        }
        Ok(map)
    }

    /// How a job ended, from the exit code Slurm recorded ("3:0": code 3; "0:15": signal 15),
    /// as ", exit code 3" / ", signal 15"; empty when unknown or 0.
    fn exit_code(&self, job: &str) -> String {
        let args = ["-o", "show", "job", job].map(String::from);
        let Ok(out) = self.command("scontrol", &args) else {
            return String::new();
        };
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let code = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("ExitCode="))
            .and_then(|c| c.split_once(':'));
        match code {
            None | Some(("0", "0")) => String::new(),
            Some((c, "0")) => format!(", exit code {c}"),
            Some(("0", s)) => format!(", signal {s}"),
            Some((c, s)) => format!(", exit code {c}, signal {s}"),
        }
    }

    /// Where each step stands: done from its marker, else from its recorded job.
    pub fn status(&self, steps: &[Step]) -> Result<Vec<StepStatus>> {
        let record = self.record()?;
        self.status_of(steps, &record)
    }

    pub(super) fn status_of(&self, steps: &[Step], record: &Record) -> Result<Vec<StepStatus>> {
        let open: Vec<String> = steps
            .iter()
            .filter(|st| !st.done.exists())
            .filter_map(|st| record.steps.get(&st.id).map(|s| s.job.clone()))
            .collect();
        let jobs = self.query(&open)?;
        let mut v = Vec::new();
        for st in steps {
            let sub = record.steps.get(&st.id);
            let info = sub.and_then(|s| jobs.get(&s.job));
            let state = match (st.done.exists(), sub, info) {
                (true, _, _) => StepState::Done,
                (false, None, _) => started_or_missing(st),
                (false, Some(s), None) => StepState::Failed(format!(
                    "job {} is over and no longer known to Slurm",
                    s.job
                )),
                (false, Some(_), Some(j)) if j.active() && j.stuck() => StepState::Failed(
                    "a step it waits for failed (DependencyNeverSatisfied)".into(),
                ),
                (false, Some(_), Some(j)) if j.running() => StepState::Running,
                (false, Some(_), Some(j)) if j.active() => StepState::Pending(j.reason.clone()),
                (false, Some(s), Some(j)) => {
                    let mut why = j.state.clone();
                    if j.reason != "None" && !j.reason.is_empty() {
                        why += &format!(" ({})", j.reason);
                    }
                    if j.state == "COMPLETED" {
                        why += ", but the step's output is missing";
                    } else {
                        why += &self.exit_code(&s.job);
                    }
                    StepState::Failed(why)
                }
            };
            v.push(StepStatus {
                id: st.id.clone(),
                state,
                job: sub.map(|s| s.job.clone()),
                slurm_state: info.map(|j| j.state.clone()),
                queued: info.is_some_and(JobInfo::active),
                log: st.log.clone(),
            });
        }
        Ok(v)
    }
}
