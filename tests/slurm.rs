//! The Slurm launcher (src/slurm.rs) against a real one-node Slurm cluster started by the test
//! (tests/slurm_cluster): job arrays and afterok dependencies, failures cancelling what waits for
//! them, resubmission of what is missing or failed only, a job killed mid-run resumed by the
//! next submission, requeue (preemption) taking the resume command, cancel, sbatch refusals.
//! The steps are small shell commands that write their completion markers atomically (as the
//! warp commands do). Without root or the packages every test says "skipped: …" and passes.

mod slurm_cluster;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use slurm_cluster::{cluster, Cluster};
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
        r#"echo started > "$2"; trap 'echo TERM > "$4"; exit 143' TERM
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
