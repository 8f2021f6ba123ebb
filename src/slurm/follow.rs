//! Following the jobs to the end, and cancelling them.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::status::{tail, StepState, StepStatus};
use super::{JobInfo, Slurm, Step};
use crate::error::{Error, Result};
use crate::progress::Reporter;

impl Slurm {
    /// scancel of these jobs. A job that ended meanwhile is not an error.
    pub(super) fn scancel(&self, jobs: &[String]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let out = self.command("scancel", jobs)?;
        if out.status.success() {
            return Ok(());
        }
        let left: Vec<String> = self
            .query(jobs)?
            .into_iter()
            .filter(|(_, j)| j.active() && j.state != "COMPLETING")
            .map(|(id, _)| id)
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(Error::io(
                "scancel",
                std::io::Error::other(format!(
                    "jobs {} still queued: {}",
                    left.join(", "),
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
            ))
        }
    }

    /// Cancels the recorded jobs that are still queued or running; returns (step, job) pairs
    /// in the order they were submitted.
    pub fn cancel(&self) -> Result<Vec<(String, String)>> {
        let record = self.record()?;
        let all: Vec<String> = record.steps.values().map(|s| s.job.clone()).collect();
        let jobs = self.query(&all)?;
        let mut active: Vec<(String, String)> = record
            .steps
            .iter()
            .filter(|(_, s)| jobs.get(&s.job).is_some_and(JobInfo::active))
            .map(|(id, s)| (id.clone(), s.job.clone()))
            .collect();
        // Job ids count up: "12_1" is array 12, task 1.
        let order = |job: &str| -> (u64, u64) {
            let (a, t) = job.split_once('_').unwrap_or((job, "0"));
            (a.parse().unwrap_or(u64::MAX), t.parse().unwrap_or(0))
        };
        active.sort_by_key(|(_, job)| order(job));
        let ids: Vec<String> = active.iter().map(|(_, j)| j.clone()).collect();
        self.scancel(&ids)?;
        Ok(active)
    }

    /// Follows the jobs until every step is complete, with a progress bar of the steps done
    /// and a line when a step starts running or completes. A step that fails: the jobs of the
    /// steps that (transitively) wait for it are cancelled and the error names the step, how
    /// its job ended and its log. On cancellation ([`crate::interrupt`]: Ctrl-C, SIGTERM, SIGHUP)
    /// every recorded job still queued or running is cancelled.
    pub fn wait(&self, steps: &[Step], reporter: &dyn Reporter) -> Result<()> {
        reporter.start_steps("steps", steps.len() as u64);
        let r = self.follow(steps, reporter);
        reporter.finish();
        r
    }

    fn follow(&self, steps: &[Step], reporter: &dyn Reporter) -> Result<()> {
        let poll = crate::limits::seconds("slurm.poll_seconds", self.config.poll_seconds, false)?
            .max(Duration::from_millis(50));
        let grace = crate::limits::seconds(
            "slurm.marker_grace_seconds",
            self.config.marker_grace_seconds,
            false,
        )?;
        let mut shown: HashMap<String, &str> = HashMap::new();
        let mut unconfirmed: HashMap<String, Instant> = HashMap::new();
        let mut first = true;
        loop {
            if crate::interrupt::check().is_err() {
                let cancelled = self.cancel()?;
                let jobs: Vec<&str> = cancelled.iter().map(|(_, j)| j.as_str()).collect();
                if !jobs.is_empty() {
                    reporter.message(&format!("cancelled job(s) {}", jobs.join(", ")));
                }
                return Err(Error::Interrupted);
            }
            let status = self.status(steps)?;
            let (mut done, mut running, mut queued) = (0, 0, 0);
            let mut failed = None;
            for s in &status {
                let label = match &s.state {
                    StepState::Done => "done",
                    StepState::Running => "running",
                    StepState::Pending(_) => "queued",
                    StepState::Failed(_) | StepState::Missing | StepState::Started => {
                        // A job that ended well gets time for its marker to show up here.
                        let since = *unconfirmed.entry(s.id.clone()).or_insert_with(Instant::now);
                        if s.slurm_state.as_deref() != Some("COMPLETED") || since.elapsed() >= grace
                        {
                            failed.get_or_insert(s);
                        }
                        continue;
                    }
                };
                let job = s.job.as_deref().unwrap_or("-");
                match label {
                    "done" => done += 1,
                    "running" => running += 1,
                    _ => queued += 1,
                }
                if shown.insert(s.id.clone(), label) == Some(label) {
                    continue;
                }
                match label {
                    "done" => {
                        reporter.advance(1);
                        if !first {
                            reporter.message(&format!("done    {}", s.id));
                        }
                    }
                    "running" => reporter.message(&format!(
                        "running {}  (job {job}; log: {})",
                        s.id,
                        s.log.display()
                    )),
                    _ => {}
                }
            }
            first = false;
            if let Some(f) = failed {
                let cancelled = self.cancel_dependants(steps, &status, &f.id)?;
                if !cancelled.is_empty() {
                    reporter.message(&format!(
                        "{} failed; the steps waiting for it are cancelled: {}",
                        f.id,
                        cancelled.join(", ")
                    ));
                }
                return Err(self.failure(f));
            }
            reporter.status(&format!("{running} running, {queued} queued"));
            if done == status.len() {
                return Ok(());
            }
            let until = Instant::now() + poll;
            while Instant::now() < until && crate::interrupt::check().is_ok() {
                std::thread::sleep(Duration::from_millis(50).min(poll));
            }
        }
    }

    /// Cancels the queued jobs of the steps that wait, directly or not, for `failed`; returns
    /// those steps (that are not complete), whether this cancelled them or Slurm already had.
    fn cancel_dependants(
        &self,
        steps: &[Step],
        status: &[StepStatus],
        failed: &str,
    ) -> Result<Vec<String>> {
        let mut down: BTreeSet<&str> = BTreeSet::from([failed]);
        for st in steps {
            if st.after.iter().any(|a| down.contains(a.as_str())) {
                down.insert(&st.id);
            }
        }
        let waiting: Vec<&StepStatus> = status
            .iter()
            .filter(|s| s.id != failed && down.contains(s.id.as_str()))
            .filter(|s| s.state != StepState::Done)
            .collect();
        let jobs: Vec<String> = waiting
            .iter()
            .filter(|s| s.queued)
            .filter_map(|s| s.job.clone())
            .collect();
        self.scancel(&jobs)?;
        Ok(waiting.iter().map(|s| s.id.clone()).collect())
    }

    /// The error for a failed step: how it ended, its log and the last lines of the log (and of
    /// Slurm's own output, which says why Slurm stopped a job).
    fn failure(&self, s: &StepStatus) -> Error {
        let status = match (&s.state, &s.job) {
            (StepState::Failed(why), Some(job)) => format!("Slurm job {job}: {why}"),
            (StepState::Missing | StepState::Started, _) => "never submitted".into(),
            (state, _) => state.to_string(),
        };
        let mut tail_text = tail(&s.log, 5);
        if let Some(sub) = self.record().ok().and_then(|r| r.steps.get(&s.id).cloned()) {
            let slurm = tail(&sub.slurm_output, 3);
            if !slurm.trim().is_empty() {
                tail_text += &format!("\n[{}]\n{slurm}", sub.slurm_output.display());
            }
        }
        Error::Step {
            id: s.id.clone(),
            status,
            log: s.log.clone(),
            tail: tail_text,
        }
    }
}
