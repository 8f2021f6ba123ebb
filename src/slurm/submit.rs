//! Submitting the steps that are neither complete nor queued.

use std::collections::{BTreeSet, HashMap};

use super::checks::check_plan;
use super::script::{quote_all, slug, text};
use super::status::StepState;
use super::{Record, Slurm, Step, Submitted};
use crate::error::{Error, IoContext, Result};
use crate::progress::Reporter;

/// What [`Slurm::submit`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Submission {
    /// Step ids whose completion marker exists.
    pub done: Vec<String>,
    /// Step ids whose job is still queued or running (left as they are).
    pub queued: Vec<String>,
    /// Step ids submitted now, with their job ids.
    pub submitted: Vec<(String, String)>,
    /// Jobs cancelled before their steps are submitted again: they waited for a predecessor
    /// that is submitted again, or forever for one that failed.
    pub cancelled: Vec<String>,
}

/// What submit decided for a step.
#[derive(Debug, Clone, PartialEq)]
enum Decision {
    Done,
    /// Its queued or running job stays.
    Keep(String),
    /// To submit (with the job it gets once submitted).
    Submit(Option<String>),
}

impl Slurm {
    /// Submits the steps that are neither complete nor queued: the members of an array group
    /// together as one job array, each with `afterok` dependencies on the jobs of its
    /// predecessors that are not complete yet. A queued job is kept unless a step it waits for
    /// has to be submitted again (then it is cancelled and submitted again too). Returns at
    /// once; Slurm runs the jobs.
    pub fn submit(&self, steps: &[Step], reporter: &dyn Reporter) -> Result<Submission> {
        check_plan(steps)?;
        let _lock = self.lock()?;
        let mut record = self.record()?;
        let status = self.status_of(steps, &record)?;
        let mut decision: HashMap<&str, Decision> = HashMap::new();
        let mut sub = Submission::default();
        let mut stale = Vec::new();
        for (st, s) in steps.iter().zip(&status) {
            let preds_stay = st.after.iter().all(|a| {
                matches!(
                    decision.get(a.as_str()),
                    Some(Decision::Done | Decision::Keep(_))
                )
            });
            let d = match (&s.state, &s.job) {
                (StepState::Done, _) => {
                    sub.done.push(st.id.clone());
                    Decision::Done
                }
                (StepState::Pending(_) | StepState::Running, Some(job)) if preds_stay => {
                    sub.queued.push(st.id.clone());
                    Decision::Keep(job.clone())
                }
                (StepState::Pending(_) | StepState::Running, Some(job)) => {
                    stale.push(job.clone());
                    Decision::Submit(None)
                }
                // A job pending forever on a failed predecessor is cancelled, then resubmitted.
                (StepState::Failed(_), Some(job)) if s.queued => {
                    stale.push(job.clone());
                    Decision::Submit(None)
                }
                _ => Decision::Submit(None),
            };
            decision.insert(&st.id, d);
        }
        if !stale.is_empty() {
            self.scancel(&stale)?;
            reporter.message(&format!("cancelled stale job(s) {}", stale.join(", ")));
            sub.cancelled = stale;
        }
        std::fs::create_dir_all(self.slurm_dir()).at(self.slurm_dir())?;
        // Units of submission in plan order: an array group, or one step.
        let mut units: Vec<Vec<&Step>> = Vec::new();
        let mut unit_of_group: HashMap<&str, usize> = HashMap::new();
        for st in steps {
            if decision[st.id.as_str()] != Decision::Submit(None) {
                continue;
            }
            match &st.array {
                Some(g) => match unit_of_group.get(g.as_str()) {
                    Some(&u) => units[u].push(st),
                    None => {
                        unit_of_group.insert(g, units.len());
                        units.push(vec![st]);
                    }
                },
                None => units.push(vec![st]),
            }
        }
        let by_id: HashMap<&str, &Step> = steps.iter().map(|s| (s.id.as_str(), s)).collect();
        for unit in units {
            let mut deps = BTreeSet::new();
            for st in &unit {
                for a in &st.after {
                    match &decision[a.as_str()] {
                        Decision::Done => {}
                        Decision::Keep(job) | Decision::Submit(Some(job)) => {
                            deps.insert(job.clone());
                        }
                        Decision::Submit(None) => {
                            return Err(Error::Internal(format!(
                                "plan for Slurm: {} is submitted before {a}, which it waits for",
                                st.id
                            )))
                        }
                    }
                }
            }
            let jobs = self.submit_unit(&unit, &by_id, &deps, &mut record)?;
            for (st, job) in unit.iter().zip(jobs) {
                sub.submitted.push((st.id.clone(), job.clone()));
                decision.insert(&st.id, Decision::Submit(Some(job)));
            }
        }
        Ok(sub)
    }

    /// Writes the batch script of `unit`, runs sbatch, records the jobs; returns them.
    fn submit_unit(
        &self,
        unit: &[&Step],
        by_id: &HashMap<&str, &Step>,
        deps: &BTreeSet<String>,
        record: &mut Record,
    ) -> Result<Vec<String>> {
        let first = unit[0];
        let array = first.array.is_some();
        let name = slug(first.array.as_deref().unwrap_or(&first.id));
        let res = self.config.resources(first.kind);
        let dir = self.slurm_dir();
        let script = dir.join(format!("{name}.sbatch"));
        let pattern = if array { "%A_%a" } else { "%j" };
        let mut args = vec![
            "--parsable".to_string(),
            format!("--job-name=warp-{name}"),
            format!(
                "--output={}",
                text(&dir.join(format!("{name}-{pattern}.out")))?
            ),
            "--open-mode=append".into(),
            format!("--chdir={}", text(&self.workdir)?),
        ];
        if array {
            args.push(format!("--array=0-{}", unit.len() - 1));
        }
        if !deps.is_empty() {
            let list: Vec<&str> = deps.iter().map(String::as_str).collect();
            args.push(format!("--dependency=afterok:{}", list.join(":")));
            args.push("--kill-on-invalid-dep=yes".into());
        }
        args.extend(res.sbatch_args());
        args.push(text(&script)?);
        let mut sbatch = vec!["sbatch".to_string()];
        sbatch.extend(args.iter().cloned());
        let body = self.render(unit, by_id, &res.prelude, &quote_all(&sbatch)?)?;
        crate::io::write_file_atomic(&script, body.as_bytes())?;

        let ids = unit
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let out = self.command("sbatch", &args)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let job = stdout
            .lines()
            .next()
            .and_then(|l| l.split(';').next())
            .map(str::trim)
            .filter(|j| !j.is_empty() && j.bytes().all(|b| b.is_ascii_digit()));
        let job = match (out.status.success(), job) {
            (true, Some(j)) => j.to_string(),
            _ => {
                return Err(Error::Step {
                    id: ids,
                    status: format!("not submitted: sbatch {}", out.status),
                    log: script,
                    tail: format!(
                        "{}{}",
                        String::from_utf8_lossy(&out.stderr).trim(),
                        stdout.trim()
                    ),
                })
            }
        };
        let mut jobs = Vec::new();
        for (k, st) in unit.iter().enumerate() {
            let (id, out_file) = if array {
                (format!("{job}_{k}"), format!("{name}-{job}_{k}.out"))
            } else {
                (job.clone(), format!("{name}-{job}.out"))
            };
            let n = record.steps.get(&st.id).map_or(0, |s| s.submissions);
            record.steps.insert(
                st.id.clone(),
                Submitted {
                    job: id.clone(),
                    script: script.clone(),
                    slurm_output: dir.join(out_file),
                    submissions: n + 1,
                    sbatch: sbatch.clone(),
                },
            );
            jobs.push(id);
        }
        // Recorded after every sbatch: an error later on still leaves these jobs cancellable.
        self.save(record)?;
        Ok(jobs)
    }
}
