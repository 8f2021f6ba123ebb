//! Where the steps of a plan run. [`Local`] runs them as child processes of this one.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::Step;
use crate::error::{Error, IoContext, Result};
use crate::progress::Reporter;

/// Runs a set of independent steps to completion.
pub trait Launcher {
    fn run(&self, steps: &[&Step], reporter: &dyn Reporter) -> Result<()>;
}

/// Runs steps as child processes of this one, up to `jobs` at a time.
///
/// Each child runs in a process group of its own, so a Ctrl-C at the terminal reaches this
/// process only; on cancellation (or when a step fails) it sends the running children SIGTERM,
/// which they handle like Ctrl-C (an RL run stops at its last checkpoint, a merge removes its
/// temporary folder), and waits for them. The children are tracked
/// ([`crate::interrupt::track_child`]), so if this process is forced to end at once (a second
/// signal) they still get their SIGTERM.
pub struct Local {
    pub jobs: usize,
}

/// Whether an earlier attempt of `st` started and can be continued.
fn resumable(st: &Step) -> bool {
    st.resume_argv.is_some() && st.started.as_ref().is_some_and(|p| p.exists())
}

fn spawn(st: &Step) -> Result<Child> {
    let argv = match &st.resume_argv {
        Some(r) if resumable(st) => r,
        _ => &st.argv,
    };
    let Some((program, args)) = argv.split_first() else {
        return Err(Error::Internal(format!("step {} has no command", st.id)));
    };
    if let Some(dir) = st.log.parent() {
        std::fs::create_dir_all(dir).at(dir)?;
    }
    let log = std::fs::File::create(&st.log).at(&st.log)?;
    let err = log.try_clone().at(&st.log)?;
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| Error::Step {
            id: st.id.clone(),
            status: format!("cannot start {program}: {e}"),
            log: st.log.clone(),
            tail: String::new(),
        })
}

/// The last lines of a log, for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// Asks the children to stop (SIGTERM) and waits for them.
fn stop_all(running: Vec<(&Step, Child)>) {
    for (_, child) in &running {
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) on the pid of a child we have not reaped yet (so not reused).
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        // Asked once: a forced stop of this process must not send a second signal, which
        // would end the child at once instead of at its next check.
        crate::interrupt::untrack_child(child.id());
    }
    for (_, mut child) in running {
        let _ = child.wait();
    }
}

impl Launcher for Local {
    fn run(&self, steps: &[&Step], reporter: &dyn Reporter) -> Result<()> {
        let mut queue: Vec<&Step> = steps.to_vec();
        queue.reverse();
        let mut running: Vec<(&Step, Child)> = Vec::new();
        let mut failure: Option<Error> = None;
        while failure.is_none() && (!queue.is_empty() || !running.is_empty()) {
            while running.len() < self.jobs.max(1) && crate::interrupt::check().is_ok() {
                let Some(st) = queue.pop() else { break };
                let verb = if resumable(st) { "resume" } else { "start " };
                reporter.message(&format!("{verb} {}  (log: {})", st.id, st.log.display()));
                match spawn(st) {
                    Ok(child) => {
                        crate::interrupt::track_child(child.id());
                        running.push((st, child));
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if let Err(e) = crate::interrupt::check() {
                failure.get_or_insert(e);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            let mut k = 0;
            while k < running.len() && failure.is_none() {
                let (st, child) = &mut running[k];
                match child.try_wait().at(&st.log) {
                    Err(e) => failure = Some(e),
                    Ok(None) => k += 1,
                    Ok(Some(status)) => {
                        crate::interrupt::untrack_child(child.id());
                        let st = *st;
                        running.swap_remove(k);
                        if status.success() && st.done.exists() {
                            reporter.message(&format!("done  {}", st.id));
                        } else {
                            failure = Some(Error::Step {
                                id: st.id.clone(),
                                status: status.to_string(),
                                log: st.log.clone(),
                                tail: log_tail(&st.log),
                            });
                        }
                    }
                }
            }
        }
        // On failure or cancellation the others are stopped; their last checkpoints stay
        // resumable and their temporary folders are removed.
        if !running.is_empty() {
            let ids: Vec<&str> = running.iter().map(|(st, _)| st.id.as_str()).collect();
            reporter.message(&format!("stopping {}", ids.join(", ")));
        }
        stop_all(running);
        failure.map_or(Ok(()), Err)
    }
}
