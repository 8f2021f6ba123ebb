//! The Slurm launcher (src/slurm.rs) against a real one-node Slurm cluster started by the test
//! (tests/it/slurm_cluster.rs): job arrays and afterok dependencies, failures cancelling what waits for
//! them, resubmission of what is missing or failed only, a job killed mid-run resumed by the
//! next submission, requeue (preemption) taking the resume command, cancel, sbatch refusals.
//! The steps are small shell commands that write their completion markers atomically (as the
//! warp commands do). Without root or the packages every test says "skipped: …" and passes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::slurm_cluster::{cluster, Cluster};
use warp::progress::Reporter;
use warp::slurm::{Resume, Slurm, SlurmConfig, Step, StepKind, StepState, StepStatus};
use warp::Error;

/// Prints the launcher's messages (shown with --nocapture).
struct Log;
impl Reporter for Log {
    fn message(&self, m: &str) {
        eprintln!("  {m}");
    }
}

/// Writes its marker ($1) atomically, as every warp command does, with `$2` as content.
const FINISH: &str = r#"printf '%s\n' "$MARK" > "$1.tmp" && mv "$1.tmp" "$1""#;

fn sh(script: &str, args: &[&Path]) -> Vec<String> {
    let mut v = vec![
        "bash".to_string(),
        "-c".into(),
        script.into(),
        "step".into(),
    ];
    v.extend(args.iter().map(|p| p.display().to_string()));
    v
}

fn step(run: &Path, id: &str, after: &[&str], kind: StepKind, array: Option<&str>) -> Step {
    let slug = id.replace('/', "-");
    Step {
        id: id.into(),
        after: after.iter().map(|s| s.to_string()).collect(),
        argv: Vec::new(),
        resume: None,
        done: run.join(format!("{slug}.done")),
        log: run.join("logs").join(format!("{slug}.log")),
        kind,
        array: array.map(String::from),
    }
}

/// A step whose command runs `body` and then writes its marker with `$MARK`.
fn with(mut st: Step, body: &str, extra: &[&Path]) -> Step {
    let mut args = vec![st.done.as_path()];
    args.extend(extra);
    st.argv = sh(&format!("{body}\n{FINISH}"), &args);
    st
}

fn config() -> SlurmConfig {
    SlurmConfig {
        poll_seconds: 0.2,
        marker_grace_seconds: 2.0,
        ..SlurmConfig::default()
    }
}

fn launcher(c: &Cluster, run: &Path, cfg: SlurmConfig) -> Slurm {
    Slurm::new(cfg, run).unwrap().env("SLURM_CONF", &c.conf)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn table(st: &[StepStatus]) -> String {
    st.iter()
        .map(|s| {
            format!(
                "{:<16} {:<60} {:<8} {}\n",
                s.id,
                s.state.to_string(),
                s.job.as_deref().unwrap_or("-"),
                s.log.display()
            )
        })
        .collect()
}

/// Polls the launcher's status until `done` holds for it (panics after `secs`).
fn until(
    slurm: &Slurm,
    steps: &[Step],
    secs: u64,
    what: &str,
    done: impl Fn(&[StepStatus]) -> bool,
) -> Vec<StepStatus> {
    let t0 = Instant::now();
    loop {
        let st = slurm.status(steps).unwrap();
        if done(&st) {
            return st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "no {what} after {secs} s:\n{}",
            table(&st)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn state<'a>(st: &'a [StepStatus], id: &str) -> &'a StepState {
    &st.iter().find(|s| s.id == id).unwrap().state
}

fn wait_file(p: &Path, secs: u64) {
    let t0 = Instant::now();
    while !p.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "{} did not appear",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
// long fn: one submitted plan followed through its array and dependency states.
fn job_array_and_afterok_dependencies() {
    let Some(c) = cluster("job_array_and_afterok_dependencies") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut cfg = config();
    cfg.all.partition = Some("debug".into());
    cfg.all.time = Some("5".into());
    cfg.all.cpus = Some(1);
    cfg.all.mem = Some("64M".into());
    cfg.all.args = vec!["--comment=warp-test".into()];
    cfg.all.prelude = vec!["export WARP_PRELUDE=top".into()];
    cfg.rl.prelude = vec!["export WARP_KIND=rl".into()];
    cfg.rl.time = Some("7".into());
    // The runs take 3 s, so the merge is still waiting when it is inspected.
    let rl_body =
        r#"sleep 3; MARK="$(date +%s%N) $SLURM_ARRAY_JOB_ID $WARP_PRELUDE ${WARP_KIND:-}""#;
    let steps = vec![
        with(
            step(&run, "iter-1/run-1", &[], StepKind::Rl, Some("iter-1/rl")),
            rl_body,
            &[],
        ),
        with(
            step(&run, "iter-1/run-2", &[], StepKind::Rl, Some("iter-1/rl")),
            rl_body,
            &[],
        ),
        with(
            step(
                &run,
                "iter-1/slerp",
                &["iter-1/run-1", "iter-1/run-2"],
                StepKind::Merge,
                None,
            ),
            r#"MARK="$(date +%s%N) $WARP_PRELUDE ${WARP_KIND:-none}""#,
            &[],
        ),
        with(
            step(&run, "plot", &["iter-1/slerp"], StepKind::Plot, None),
            "MARK=plot",
            &[],
        ),
    ];
    let slurm = launcher(&c, &run, cfg);
    let t0 = Instant::now();
    let sub = slurm.submit(&steps, &Log).unwrap();
    assert_eq!(sub.submitted.len(), 4, "{sub:?}");
    let rec = slurm.record().unwrap();
    let job = |id: &str| rec.steps[id].job.clone();
    // The two runs are one job array, the merge waits for both of its tasks and is cancelled
    // if one fails, and the config's resources reached Slurm.
    let array = job("iter-1/run-1").split('_').next().unwrap().to_string();
    assert_eq!(job("iter-1/run-1"), format!("{array}_0"));
    assert_eq!(job("iter-1/run-2"), format!("{array}_1"));
    let merge = c.job(&job("iter-1/slerp"));
    assert_eq!(
        merge["Dependency"],
        format!("afterok:{array}_0(unfulfilled),afterok:{array}_1(unfulfilled)"),
        "{merge:?}"
    );
    assert_eq!(merge["KillOInInvalidDependent"], "Yes");
    assert_eq!(merge["Comment"], "warp-test");
    assert_eq!(merge["Partition"], "debug");
    assert_eq!(merge["TimeLimit"], "00:05:00");
    assert_eq!(merge["MinMemoryNode"], "64M");
    assert_eq!(merge["NumCPUs"], "1");
    let plot = c.job(&job("plot"));
    assert!(
        plot["Dependency"].starts_with(&format!("afterok:{}(", job("iter-1/slerp"))),
        "{plot:?}"
    );
    assert_eq!(c.job(&job("iter-1/run-1"))["TimeLimit"], "00:07:00");

    slurm.wait(&steps, &Log).unwrap();
    eprintln!(
        "array of 2 + afterok merge + afterok plot: submitted to done in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let fields = |id: &str| -> Vec<String> {
        read(&steps.iter().find(|s| s.id == id).unwrap().done)
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    let (r1, r2, m) = (
        fields("iter-1/run-1"),
        fields("iter-1/run-2"),
        fields("iter-1/slerp"),
    );
    assert_eq!(r1[1..], [array.as_str(), "top", "rl"]);
    assert_eq!(r2[1..], [array.as_str(), "top", "rl"]);
    // The kind's prelude is for its kind only.
    assert_eq!(m[1..], ["top", "none"]);
    let t = |v: &[String]| v[0].parse::<u128>().unwrap();
    assert!(
        t(&m) >= t(&r1).max(t(&r2)),
        "merge started before a run ended"
    );
    let log = read(&steps[0].log);
    assert!(log.contains(&format!("(array {array} task 0)")), "{log}");

    let st = slurm.status(&steps).unwrap();
    eprintln!("status:\n{}", table(&st));
    assert!(st.iter().all(|s| s.state == StepState::Done));
    // Nothing left to do: nothing is submitted again.
    let again = slurm.submit(&steps, &Log).unwrap();
    assert!(again.submitted.is_empty(), "{again:?}");
    assert_eq!(again.done.len(), 4);
    assert_eq!(slurm.record().unwrap(), rec);
}

#[test]
fn failed_step_cancels_dependants_and_resubmission_redoes_only_them() {
    let Some(c) = cluster("failed_step_cancels_dependants_and_resubmission_redoes_only_them")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let fixed = tmp.path().join("fixed");
    let steps = vec![
        with(
            step(&run, "bad", &[], StepKind::Merge, None),
            r#"[ -e "$2" ] || { echo "boom: $2 is missing" >&2; exit 3; }; MARK=ok"#,
            &[&fixed],
        ),
        with(
            step(&run, "down-1", &["bad"], StepKind::Eval, None),
            "MARK=1",
            &[],
        ),
        with(
            step(&run, "down-2", &["down-1"], StepKind::Plot, None),
            "MARK=2",
            &[],
        ),
        with(
            step(&run, "other", &[], StepKind::Merge, None),
            "MARK=o",
            &[],
        ),
    ];
    let slurm = launcher(&c, &run, config());
    slurm.submit(&steps, &Log).unwrap();
    let err = slurm.wait(&steps, &Log).unwrap_err();
    eprintln!("error: {err}");
    let Error::Step {
        id,
        status,
        log,
        tail,
    } = &err
    else {
        panic!("not a step error: {err}");
    };
    assert_eq!(id, "bad");
    assert!(
        status.contains("FAILED") && status.contains("exit code 3"),
        "{status}"
    );
    assert_eq!(log, &steps[0].log);
    assert!(tail.contains("boom"), "{tail}");
    assert!(err
        .to_string()
        .contains(&steps[0].log.display().to_string()));
    // Both dependants end cancelled without ever running.
    let st = until(&slurm, &steps, 30, "cancelled dependants", |st| {
        ["down-1", "down-2"]
            .iter()
            .all(|id| matches!(state(st, id), StepState::Failed(_)))
    });
    eprintln!("status after the failure:\n{}", table(&st));
    for s in &st[1..3] {
        assert_eq!(s.slurm_state.as_deref(), Some("CANCELLED"), "{s:?}");
    }
    for d in &steps[1..3] {
        assert!(!d.done.exists() && !d.log.exists(), "{} ran", d.id);
    }
    let other_job = slurm.record().unwrap().steps["other"].job.clone();

    // Fixed: the next submission redoes the failed step and what waits for it, nothing else.
    std::fs::write(&fixed, "").unwrap();
    let sub = slurm.submit(&steps, &Log).unwrap();
    let ids: Vec<&str> = sub.submitted.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["bad", "down-1", "down-2"]);
    slurm.wait(&steps, &Log).unwrap();
    let rec = slurm.record().unwrap();
    assert_eq!(rec.steps["bad"].submissions, 2);
    assert_eq!(rec.steps["down-2"].submissions, 2);
    assert_eq!(rec.steps["other"].submissions, 1);
    assert_eq!(rec.steps["other"].job, other_job);
    assert_eq!(read(&steps[2].done).trim(), "2");
}

/// A step that records that it started, stops at SIGTERM (saying so) and otherwise waits for
/// `go`; its resume command waits for `go` too and marks the step "resumed".
fn stoppable(run: &Path, tmp: &Path, id: &str, array: Option<&str>) -> (Step, PathBuf) {
    let slug = id.replace('/', "-");
    let started = run.join(format!("{slug}.started"));
    let (go, term) = (tmp.join("go"), tmp.join(format!("{slug}.term")));
    let mut st = with(
        step(run, id, &[], StepKind::Rl, array),
        r#"trap 'echo TERM > "$4"; exit 143' TERM; echo started > "$2"
while [ ! -e "$3" ]; do sleep 0.1; done; MARK=first"#,
        &[&started, &go, &term],
    );
    let resume = sh(
        &format!(r#"while [ ! -e "$2" ]; do sleep 0.1; done; MARK=resumed; {FINISH}"#),
        &[&st.done, &go],
    );
    st.resume = Some(Resume {
        started,
        argv: resume,
    });
    (st, term)
}

#[test]
fn queued_steps_stay_and_a_killed_job_is_resumed_by_the_next_submission() {
    let Some(c) = cluster("queued_steps_stay_and_a_killed_job_is_resumed_by_the_next_submission")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let (slow, term) = stoppable(&run, tmp.path(), "iter-1/run-1", Some("iter-1/rl"));
    let steps = vec![
        slow,
        with(
            step(
                &run,
                "iter-1/slerp",
                &["iter-1/run-1"],
                StepKind::Merge,
                None,
            ),
            "MARK=merged",
            &[],
        ),
    ];
    let slurm = launcher(&c, &run, config());
    slurm.submit(&steps, &Log).unwrap();
    until(&slurm, &steps, 60, "running step", |st| {
        *state(st, "iter-1/run-1") == StepState::Running
    });
    wait_file(&steps[0].resume.as_ref().unwrap().started, 30);
    // Queued and running steps are not submitted twice.
    let rec = slurm.record().unwrap();
    let again = slurm.submit(&steps, &Log).unwrap();
    assert!(again.submitted.is_empty(), "{again:?}");
    assert_eq!(again.queued, ["iter-1/run-1", "iter-1/slerp"]);
    assert_eq!(slurm.record().unwrap(), rec);

    // Killed from outside: the command gets Slurm's SIGTERM, and Slurm itself cancels the merge.
    let job = rec.steps["iter-1/run-1"].job.clone();
    c.run("scancel", &[&job]);
    wait_file(&term, 30);
    let st = until(&slurm, &steps, 60, "cancelled merge", |st| {
        st.iter().all(|s| matches!(s.state, StepState::Failed(_)))
    });
    eprintln!("status after scancel {job}:\n{}", table(&st));
    let merge = c.job(&rec.steps["iter-1/slerp"].job);
    assert_eq!(merge["JobState"], "CANCELLED");
    assert_eq!(merge["Reason"], "DependencyNeverSatisfied");

    // The next submission resubmits both; the run continues with its resume command.
    std::fs::write(tmp.path().join("go"), "").unwrap();
    let sub = slurm.submit(&steps, &Log).unwrap();
    assert_eq!(sub.submitted.len(), 2, "{sub:?}");
    assert_ne!(sub.submitted[0].1, job);
    slurm.wait(&steps, &Log).unwrap();
    assert_eq!(read(&steps[0].done).trim(), "resumed");
    assert!(read(&steps[0].log).contains("resuming"));
    assert_eq!(read(&steps[1].done).trim(), "merged");
}

/// Preemption with requeue runs the same batch script again: it takes the resume command.
#[test]
fn a_requeued_job_resumes() {
    let Some(c) = cluster("a_requeued_job_resumes") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let (st, term) = stoppable(&run, tmp.path(), "run-1", None);
    let steps = vec![st];
    let slurm = launcher(&c, &run, config());
    slurm.submit(&steps, &Log).unwrap();
    wait_file(&steps[0].resume.as_ref().unwrap().started, 60);
    let job = slurm.record().unwrap().steps["run-1"].job.clone();
    c.run("scontrol", &["requeue", &job]);
    wait_file(&term, 30);
    // Slurm holds a requeued job back for two minutes (BeginTime): let it start now.
    let t0 = Instant::now();
    loop {
        let j = c.job(&job);
        if j["JobState"] == "RUNNING" || j["JobState"] == "COMPLETED" {
            break;
        }
        if j["JobState"] == "PENDING" && j["Reason"] == "BeginTime" {
            c.run(
                "scontrol",
                &["update", &format!("jobid={job}"), "StartTime=now"],
            );
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{j:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::fs::write(tmp.path().join("go"), "").unwrap();
    slurm.wait(&steps, &Log).unwrap();
    assert_eq!(read(&steps[0].done).trim(), "resumed");
    let log = read(&steps[0].log);
    assert_eq!(
        log.matches("== warp: step run-1, Slurm job").count(),
        2,
        "{log}"
    );
    assert!(log.contains("resuming"), "{log}");
    assert_eq!(slurm.record().unwrap().steps["run-1"].job, job);
    assert_eq!(c.job(&job)["Restarts"], "1");
}

#[test]
fn cancel_stops_every_queued_and_running_job() {
    let Some(c) = cluster("cancel_stops_every_queued_and_running_job") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let (w, term) = stoppable(&run, tmp.path(), "w", Some("g"));
    let steps = vec![
        w,
        with(step(&run, "x", &["w"], StepKind::Plot, None), "MARK=x", &[]),
    ];
    let slurm = launcher(&c, &run, config());
    slurm.submit(&steps, &Log).unwrap();
    until(&slurm, &steps, 60, "running step", |st| {
        *state(st, "w") == StepState::Running
    });
    // Its SIGTERM handler is in place once it says it started.
    wait_file(&steps[0].resume.as_ref().unwrap().started, 30);
    let mut cancelled = slurm.cancel().unwrap();
    cancelled.sort();
    let rec = slurm.record().unwrap();
    assert_eq!(
        cancelled,
        [
            ("w".to_string(), rec.steps["w"].job.clone()),
            ("x".to_string(), rec.steps["x"].job.clone())
        ]
    );
    wait_file(&term, 30);
    let st = until(&slurm, &steps, 30, "cancelled jobs", |st| {
        st.iter().all(|s| matches!(s.state, StepState::Failed(_)))
    });
    eprintln!("status after cancel:\n{}", table(&st));
    assert!(st
        .iter()
        .all(|s| s.slurm_state.as_deref() == Some("CANCELLED")));
    // Nothing is left to cancel.
    assert!(slurm.cancel().unwrap().is_empty());
}

#[test]
fn a_refused_submission_names_the_step() {
    let Some(c) = cluster("a_refused_submission_names_the_step") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut cfg = config();
    cfg.merge.partition = Some("nope".into());
    let steps = vec![
        with(step(&run, "a", &[], StepKind::Rl, None), "MARK=a", &[]),
        with(
            step(&run, "m", &["a"], StepKind::Merge, None),
            "MARK=m",
            &[],
        ),
    ];
    let slurm = launcher(&c, &run, cfg);
    let err = slurm.submit(&steps, &Log).unwrap_err();
    let msg = err.to_string();
    eprintln!("error: {msg}");
    assert!(
        matches!(err, Error::Step { ref id, .. } if id == "m"),
        "{msg}"
    );
    assert!(
        msg.contains("not submitted") && msg.contains("Invalid partition"),
        "{msg}"
    );
    assert!(msg.contains("m.sbatch"), "{msg}");
    // The step before it was submitted and recorded, so it can be cancelled; m was not.
    let rec = slurm.record().unwrap();
    assert!(rec.steps.contains_key("a") && !rec.steps.contains_key("m"));
    slurm.cancel().unwrap();
}

/// The batch script checks its predecessors' outputs itself: Slurm's dependencies are not
/// trusted alone (a dependency on a job Slurm has forgotten counts as satisfied).
#[test]
fn a_step_whose_predecessor_output_is_missing_does_not_run() {
    let Some(c) = cluster("a_step_whose_predecessor_output_is_missing_does_not_run") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut cfg = config();
    // Held at submission, to take the predecessor's output away before it starts.
    cfg.plot.args = vec!["--hold".into()];
    let steps = vec![
        with(step(&run, "p", &[], StepKind::Merge, None), "MARK=p", &[]),
        with(step(&run, "x", &["p"], StepKind::Plot, None), "MARK=x", &[]),
    ];
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(&steps[0].done, "p\n").unwrap();
    let slurm = launcher(&c, &run, cfg);
    let sub = slurm.submit(&steps, &Log).unwrap();
    assert_eq!(sub.done, ["p"]);
    let x = c.job(&sub.submitted[0].1);
    assert_eq!(x["Dependency"], "(null)", "{x:?}");
    std::fs::remove_file(&steps[0].done).unwrap();
    c.run("scontrol", &["release", &sub.submitted[0].1]);
    let err = slurm.wait(&steps[1..], &Log).unwrap_err().to_string();
    eprintln!("error: {err}");
    assert!(
        err.contains("step x failed") && err.contains("exit code 1"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "x cannot start: {}, the output of a step it waits for, is missing",
            steps[0].done.display()
        )),
        "{err}"
    );
    assert!(!steps[1].done.exists());
}

/// `warp run --launcher slurm`, `warp status` and `warp cancel` against the real cluster, with
/// the built-in task's small settings (feature `rl`: the steps run `warp rl` and `warp eval`).
#[cfg(feature = "rl")]
mod pipeline {
    use super::*;
    use std::collections::BTreeMap;
    use std::process::{Command, Output, Stdio};

    /// One iteration of 4 RL steps (a checkpoint at each) whose reward, a `cmd:` program, takes
    /// a second per call inside the RL runs (array tasks), so that a run can be caught midway.
    fn slow(tmp: &Path, reward: &str) -> PathBuf {
        let script = tmp.join("reward.sh");
        std::fs::write(&script, format!("#!/bin/bash\n{reward}\n")).unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let cfg = tmp.join("slow.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"iterations = 1
runs = 2
steps = 4
checkpoints = 4
init_anchor_runs = false
etas = [0.5, 1.0]
reward = "cmd:{}"
rl_args = ["--batch", "4", "-n", "2"]
eval_prompts = 4
eval_samples = 1
threads = 1
launcher = "slurm"
[slurm]
poll_seconds = 0.3
marker_grace_seconds = 5
"#,
                script.display()
            ),
        )
        .unwrap();
        cfg
    }

    /// Answers every completion with 1; inside an RL run (an array task) after a second.
    const SLOW_REWARD: &str = r#"[ -n "${SLURM_ARRAY_TASK_ID:-}" ] && sleep 1
while IFS= read -r line; do echo 1; done"#;

    fn warp(c: &Cluster, cwd: &Path, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_warp"))
            .args(args)
            .current_dir(cwd)
            .env("SLURM_CONF", &c.conf)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn text(o: &[u8]) -> String {
        String::from_utf8_lossy(o).into_owned()
    }

    /// Runs warp, asserts success; returns (stdout, stderr).
    fn ok(c: &Cluster, cwd: &Path, args: &[&str]) -> (String, String) {
        let o = warp(c, cwd, args);
        let (out, err) = (text(&o.stdout), text(&o.stderr));
        assert!(o.status.success(), "warp {args:?} failed:\n{err}\n{out}");
        (out, err)
    }

    /// `warp status OUT`, shown in the test's output (for the issue's note).
    fn status(c: &Cluster, out: &Path, when: &str) -> String {
        let (table, summary) = ok(c, out, &["status", out.to_str().unwrap()]);
        eprintln!("warp status {} ({when}):\n{table}{summary}", out.display());
        table
    }

    fn row<'a>(table: &'a str, id: &str) -> &'a str {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .unwrap_or_else(|| panic!("no row {id} in\n{table}"))
    }

    /// Polls `warp status OUT` until `done` holds for its table.
    fn status_until(c: &Cluster, out: &Path, secs: u64, done: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            let (table, _) = ok(c, out, &["status", out.to_str().unwrap()]);
            if done(&table) {
                return table;
            }
            assert!(t0.elapsed() < Duration::from_secs(secs), "status:\n{table}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn job_of(out: &Path, id: &str) -> String {
        let rec: serde_json::Value = serde_json::from_str(&read(&out.join("slurm.json"))).unwrap();
        rec["steps"][id]["job"].as_str().unwrap().to_string()
    }

    /// A safetensors file as (tensor table, tensor bytes): its header without `__metadata__`,
    /// the provenance a merge records (its input folders and the hashes of their headers, which
    /// hold their own provenance), and everything after the header.
    fn tensors(bytes: &[u8]) -> (serde_json::Value, Vec<u8>) {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        header.as_object_mut().unwrap().remove("__metadata__");
        (header, bytes[8 + n..].to_vec())
    }

    /// Every checkpoint file (`*.safetensors`) under `dir`, by relative path.
    fn checkpoints(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut m = BTreeMap::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    todo.push(p);
                } else if p.extension().is_some_and(|x| x == "safetensors") {
                    let rel = p.strip_prefix(dir).unwrap().to_path_buf();
                    m.insert(rel, std::fs::read(&p).unwrap());
                }
            }
        }
        m
    }

    #[test]
    fn slurm_run_gives_the_local_runs_checkpoints_bit_for_bit() {
        let Some(c) = cluster("slurm_run_gives_the_local_runs_checkpoints_bit_for_bit") else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join("tiny.toml");
        // The `[slurm]` table only matters to the Slurm launcher.
        let tiny = crate::common::tiny_pipeline(&[], crate::common::TINY_SLURM);
        std::fs::write(&cfg, tiny).unwrap();
        let (local, slurm) = (tmp.path().join("local-run"), tmp.path().join("slurm"));
        let t0 = Instant::now();
        // The local run with a relative run folder, as people type it.
        ok(
            &c,
            tmp.path(),
            &["run", cfg.to_str().unwrap(), "-o", "local-run"],
        );
        let t_local = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let (front, err) = ok(
            &c,
            tmp.path(),
            &[
                "run",
                cfg.to_str().unwrap(),
                "-o",
                slurm.to_str().unwrap(),
                "--launcher",
                "slurm",
                "--wait",
            ],
        );
        eprintln!(
            "local launcher {t_local:.1} s, Slurm launcher {:.1} s\n{err}",
            t0.elapsed().as_secs_f64()
        );
        assert!(front.contains("liti it2"), "{front}");
        // The RL runs of an iteration went as one job array.
        let (a, b) = (
            job_of(&slurm, "iter-1/run-1"),
            job_of(&slurm, "iter-1/run-2"),
        );
        let array = a.split('_').next().unwrap();
        assert_eq!((a.clone(), b), (format!("{array}_0"), format!("{array}_1")));

        let (l, s) = (checkpoints(&local), checkpoints(&slurm));
        assert!(l.len() >= 30, "{:?}", l.keys().collect::<Vec<_>>());
        assert_eq!(
            l.keys().collect::<Vec<_>>(),
            s.keys().collect::<Vec<_>>(),
            "not the same checkpoints"
        );
        let mut same_bytes = 0;
        for (path, bytes) in &l {
            let (hl, tl) = tensors(bytes);
            let (hs, ts) = tensors(&s[path]);
            assert_eq!(hl, hs, "{}: the tensor tables differ", path.display());
            assert!(tl == ts, "{}: the tensors differ", path.display());
            same_bytes += (bytes == &s[path]) as usize;
        }
        // And the same evaluation (paths aside).
        let norm = |dir: &Path, name: &str| read(&dir.join("eval.csv")).replace(name, "OUT");
        assert_eq!(
            norm(&local, "local-run"),
            norm(&slurm, slurm.to_str().unwrap())
        );
        eprintln!(
            "{} checkpoint files: identical tensors bit for bit ({same_bytes} identical files; \
             the others differ in the merge recipe of their metadata, which names the run folder)",
            l.len()
        );
        let table = status(&c, &slurm, "after --wait");
        assert!(
            table.lines().skip(1).all(|l| l.contains(" done ")),
            "{table}"
        );
        // 12 steps and the last iteration's front toward the SFT (iter-2/front).
        assert_eq!(table.lines().count(), 1 + 13, "{table}");

        // `warp status` of the local run, from elsewhere: from the files alone. `warp cancel`
        // has nothing to do with it.
        let (table, summary) = ok(&c, Path::new("/"), &["status", local.to_str().unwrap()]);
        assert!(
            table.lines().skip(1).all(|l| l.contains(" done ")),
            "{table}"
        );
        assert!(
            summary.contains("13/13 done") && summary.contains("local launcher"),
            "{summary}"
        );
        let o = warp(&c, tmp.path(), &["cancel", "local-run"]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains("local launcher"), "{err}");
    }

    /// Issue 18's combination: the pipeline with trainer = "trl" through the Slurm launcher. The
    /// RL steps (an array of `accelerate launch … warp_trl.py`) find TRL through WARP_TRL_PYTHON,
    /// which sbatch passes on from the submitting environment (scripts/setup-trl.sh).
    #[test]
    fn trl_trainer_through_the_slurm_launcher() {
        assert!(
            std::env::var_os("WARP_TRL_PYTHON").is_some(),
            "source scripts/setup-trl.sh"
        );
        let Some(c) = cluster("trl_trainer_through_the_slurm_launcher") else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join("trl.toml");
        std::fs::write(
            &cfg,
            crate::common::tiny_pipeline(
                &[
                    ("trainer", r#""trl""#),
                    ("launcher", r#""slurm""#),
                    ("iterations", "1"),
                    ("init_anchor_runs", "false"),
                ],
                crate::common::TINY_SLURM,
            ),
        )
        .unwrap();
        let out = tmp.path().join("run");
        let t0 = Instant::now();
        let (front, err) = ok(
            &c,
            tmp.path(),
            &[
                "run",
                cfg.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "--wait",
            ],
        );
        eprintln!(
            "warp run, trainer = trl, Slurm launcher: {:.1} s\n{err}",
            t0.elapsed().as_secs_f64()
        );
        assert!(front.contains("liti it1"), "{front}");
        // The two RL runs went as one job array, and TRL trained them (EMA folders included).
        let (a, b) = (job_of(&out, "iter-1/run-1"), job_of(&out, "iter-1/run-2"));
        assert_eq!(a.split('_').next(), b.split('_').next(), "{a} {b}");
        assert_ne!(a, b);
        for run in ["iter-1/run-1", "iter-1/run-2"] {
            let v: serde_json::Value =
                serde_json::from_str(&read(&out.join(run).join("run.json"))).unwrap();
            assert_eq!(v["backend"], "trl", "{run}");
            assert!(
                out.join(run).join("final/ema/model.safetensors").is_file(),
                "{run}"
            );
        }
        let csv = read(&out.join("eval.csv"));
        let kinds: Vec<&str> = csv
            .lines()
            .skip(1)
            .map(|l| l.split(',').nth(1).unwrap())
            .collect();
        let count = |k: &str| kinds.iter().filter(|&&x| x == k).count();
        assert_eq!(
            (count("sft"), count("policy"), count("ema"), count("liti")),
            (1, 2, 2, 3),
            "{csv}"
        );
        let table = status(&c, &out, "trainer = trl");
        assert!(
            table.lines().skip(1).all(|l| l.contains(" done ")),
            "{table}"
        );
    }

    #[test]
    fn a_failing_step_cancels_what_waits_for_it_and_is_named() {
        let Some(c) = cluster("a_failing_step_cancels_what_waits_for_it_and_is_named") else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        // The reward fails in the second RL run only (array task 1).
        let cfg = slow(
            tmp.path(),
            r#"if [ "${SLURM_ARRAY_TASK_ID:-}" = 1 ]; then echo "reward: no score in task 1" >&2; exit 7; fi
while IFS= read -r line; do echo 1; done"#,
        );
        let out = tmp.path().join("run");
        let o = warp(
            &c,
            tmp.path(),
            &[
                "run",
                cfg.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "--wait",
            ],
        );
        let err = text(&o.stderr);
        eprintln!("warp run --wait:\n{err}");
        assert_eq!(o.status.code(), Some(1), "{err}");
        let log = out.join("logs/iter-1-run-2.log");
        assert!(
            err.contains("error: step iter-1/run-2 failed (Slurm job ")
                && err.contains(&format!("see {}", log.display()))
                && err.contains("no score in task 1"),
            "{err}"
        );
        assert!(
            err.contains(
                "iter-1/run-2 failed; the steps waiting for it are cancelled: \
                 iter-1/slerp, iter-1/lerp, eval, plot"
            ),
            "{err}"
        );
        let table = status_until(&c, &out, 30, |t| {
            ["iter-1/slerp", "iter-1/lerp", "eval", "plot"]
                .iter()
                .all(|id| row(t, id).contains("CANCELLED"))
        });
        status(&c, &out, "after the failure");
        assert!(
            row(&table, "iter-1/run-2").contains("failed (FAILED"),
            "{table}"
        );
        for never in ["iter-1-slerp", "eval", "plot"] {
            assert!(
                !out.join(format!("logs/{never}.log")).exists(),
                "{never} ran"
            );
        }
    }

    #[test]
    fn a_job_killed_midway_is_resubmitted_by_the_next_run_and_the_pipeline_completes() {
        let Some(c) = cluster(
            "a_job_killed_midway_is_resubmitted_by_the_next_run_and_the_pipeline_completes",
        ) else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let cfg = slow(tmp.path(), SLOW_REWARD);
        let out = tmp.path().join("run");
        let o = out.to_str().unwrap();
        let (submitted, _) = ok(&c, tmp.path(), &["run", cfg.to_str().unwrap(), "-o", o]);
        eprintln!("warp run (submit and return):\n{submitted}");
        assert!(submitted.starts_with("6 step(s) submitted"), "{submitted}");
        // Queued steps are not submitted twice.
        let (again, _) = ok(&c, tmp.path(), &["run", o]);
        assert!(
            again.starts_with("0 step(s) submitted, 6 still queued"),
            "{again}"
        );

        let run1 = out.join("iter-1/run-1");
        wait_file(&run1.join("step-000001/trainer/state.json"), 120);
        let job = job_of(&out, "iter-1/run-1");
        c.run("scancel", &[&job]);
        let table = status_until(&c, &out, 60, |t| {
            row(t, "iter-1/run-1").contains("failed") && row(t, "iter-1/slerp").contains("failed")
        });
        status(&c, &out, &format!("after scancel {job}"));
        assert!(row(&table, "iter-1/run-1").contains("CANCELLED"), "{table}");
        assert!(
            !run1.join("final").exists(),
            "the run ended before it was killed"
        );

        // The next `warp run OUT` resubmits what is missing; the run continues.
        let (front, err) = ok(&c, tmp.path(), &["run", o, "--wait"]);
        eprintln!("warp run OUT --wait:\n{err}{front}");
        assert!(err.contains("submitted iter-1/run-1 "), "{err}");
        assert!(!err.contains("submitted iter-1/run-2 "), "{err}");
        assert_ne!(job_of(&out, "iter-1/run-1"), job);
        let log = read(&out.join("logs/iter-1-run-1.log"));
        assert!(log.contains("resuming"), "{log}");
        // Continued, not restarted: one metrics line per step.
        let m = read(&run1.join("metrics.jsonl"));
        assert_eq!(m.lines().count(), 4, "{m}");
        let table = status(&c, &out, "after the resubmission");
        assert!(
            table.lines().skip(1).all(|l| l.contains(" done ")),
            "{table}"
        );
        assert!(front.contains("liti it1"), "{front}");
    }

    #[test]
    fn ctrl_c_under_wait_and_warp_cancel_cancel_the_jobs() {
        let Some(c) = cluster("ctrl_c_under_wait_and_warp_cancel_cancel_the_jobs") else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let cfg = slow(tmp.path(), SLOW_REWARD);
        let out = tmp.path().join("run");
        let o = out.to_str().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_warp"))
            .args(["run", cfg.to_str().unwrap(), "-o", o, "--wait"])
            .current_dir(tmp.path())
            .env("SLURM_CONF", &c.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_file(&out.join("iter-1/run-1/run.json"), 120);
        // SAFETY: kill(2) with the pid of our own child, not yet reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGINT);
        }
        let status_code = child.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        eprintln!("warp run --wait, Ctrl-C:\n{err}");
        assert_eq!(status_code.code(), Some(130), "{err}");
        assert!(
            err.contains("cancelled job(s)") && err.contains("interrupted by SIGINT"),
            "{err}"
        );
        let table = status_until(&c, &out, 60, |t| {
            !t.contains(" running ") && !t.contains(" pending")
        });
        assert!(row(&table, "iter-1/run-1").contains("CANCELLED"), "{table}");
        let (nothing, note) = ok(&c, tmp.path(), &["cancel", o]);
        assert!(
            nothing.is_empty() && note.contains("nothing to cancel"),
            "{note}"
        );

        // Submitted again (the folder's own settings), then cancelled with `warp cancel`.
        ok(&c, tmp.path(), &["run", o]);
        let (cancelled, _) = ok(&c, tmp.path(), &["cancel", o]);
        eprintln!("warp cancel:\n{cancelled}");
        for id in [
            "iter-1/run-1",
            "iter-1/run-2",
            "iter-1/slerp",
            "eval",
            "plot",
        ] {
            assert!(
                cancelled.lines().any(|l| l.starts_with(&format!("{id} "))),
                "{id} not cancelled:\n{cancelled}"
            );
        }
        let table = status_until(&c, &out, 60, |t| {
            !t.contains(" running ") && !t.contains(" pending")
        });
        status(&c, &out, "after warp cancel");
        assert!(row(&table, "plot").contains("CANCELLED"), "{table}");
    }
}
