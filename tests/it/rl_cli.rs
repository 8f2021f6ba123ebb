//! The RL commands through the one command tree (feature `rl`): `warp-rl`/`warp-sft` identical
//! to `warp rl`/`warp sft`, argument checks before any work, a config file, and the signal
//! policy where it matters most: SIGTERM stops `warp rl` at a step boundary with its run
//! resumable, and Ctrl-C (SIGINT) stops `warp run`, which stops its children and leaves a run
//! that a second `warp run` completes.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::{same_both_ways, wait};
use crate::common::{bin, entries, ok, run};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn rl_aliases_behave_exactly_like_the_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    for (name, args, code) in [
        ("rl", vec!["--help"], 0),
        ("rl", vec!["-o", "run", "--steps", "0"], 2),
        ("rl", vec!["-o", "run", "--mu", "2"], 2),
        ("rl", vec!["--resume", "run", "--beta", "0.5"], 2),
        ("rl", vec!["-o", "run", "--reward", "nope:x"], 2),
        ("rl", vec!["-o", "run", "--threads", "100000"], 2),
        ("rl", vec!["--resume", "missing-run"], 1),
        ("sft", vec!["--help"], 0),
        ("sft", vec!["-o", "sft", "--p-correct", "2"], 2),
    ] {
        let r = same_both_ways(name, &args, &a, &b, true);
        assert_eq!(r.code, code, "warp-{name} {args:?}: {}", r.stderr);
    }
    // Settings errors name the flag.
    let r = run("warp-rl", &["-o", "run", "--mu", "2"], &a);
    assert!(
        r.stderr.contains("--mu: must be in (0, 1], got 2"),
        "{}",
        r.stderr
    );
    assert!(entries(&a).is_empty() && entries(&b).is_empty());
}

#[test]
fn outputs_are_checked_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir(d.join("taken")).unwrap();
    std::fs::write(d.join("taken/f"), b"x").unwrap();
    let t0 = Instant::now();
    let r = run("warp-rl", &["-o", "taken", "--steps", "2"], d);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--resume"), "{}", r.stderr);
    let r = run("warp", &["eval", "--run", "x", "-o", "nowhere/e.csv"], d);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("nowhere"), "{}", r.stderr);
    let r = run("warp-sft", &["-o", "taken"], d);
    assert_eq!(r.code, 2, "{}", r.stderr);
    // No model was loaded for any of them.
    assert!(t0.elapsed() < Duration::from_secs(20));
    assert_eq!(entries(d), ["taken"]);
}

/// A config file gives the settings; flags given as well override it; run.json records the
/// result and `--resume` uses it.
#[test]
fn config_file_and_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(
        d.join("c.json"),
        r#"{"steps": 1, "batch": 4, "n": 2, "seed": 5, "device": "cpu"}"#,
    )
    .unwrap();
    let args = [
        "--config",
        "c.json",
        "--seed",
        "7",
        "-o",
        "run",
        "--threads",
        "1",
        "-q",
    ];
    let fin = ok("warp-rl", &args, d);
    assert_eq!(fin.trim(), "run/final");
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("run/run.json")).unwrap()).unwrap();
    let c = &rec["config"];
    assert_eq!(
        (c["steps"].as_u64(), c["batch"].as_u64(), c["n"].as_u64()),
        (Some(1), Some(4), Some(2))
    );
    assert_eq!(c["seed"], 7);
    assert_eq!(c["device"], "cpu");
    assert_eq!(c["model"], "builtin:arith/model");
    // Unknown keys are refused, naming the file and the key.
    std::fs::write(d.join("bad.toml"), "steps = 1\nbatchh = 4\n").unwrap();
    let r = run("warp-rl", &["--config", "bad.toml", "-o", "run2"], d);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("bad.toml") && r.stderr.contains("batchh"),
        "{}",
        r.stderr
    );
    assert!(!d.join("run2").exists());
}

/// SIGTERM (how Slurm stops a job) during `warp rl`: exit 143 at the end of the current step,
/// the run folder holds its last checkpoint and no temporary folder, and `--resume` finishes it.
#[test]
fn sigterm_leaves_a_resumable_rl_run() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let child = Command::new(bin("warp-rl"))
        .args([
            "-o",
            "run",
            "--steps",
            "200",
            "--save-every",
            "2",
            "--batch",
            "4",
            "-n",
            "2",
            "--threads",
            "1",
            "--device",
            "cpu",
            "-q",
        ])
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first = d.join("run/step-000002/trainer/state.json");
    let t0 = Instant::now();
    while !first.is_file() {
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our child's pid (not reaped yet).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let (code, stderr) = wait(child, 120);
    assert_eq!(code, Some(143), "{stderr}");
    assert!(
        stderr.contains("--resume") && stderr.contains("SIGTERM"),
        "{stderr}"
    );
    let run_dir = d.join("run");
    assert!(!run_dir.join("final").exists());
    // No temporary folder left (the run folder's lock file stays: see warp::io::lock).
    assert!(
        entries(&run_dir)
            .iter()
            .all(|e| !e.starts_with('.') || e == ".warp-run.lock"),
        "{:?}",
        entries(&run_dir)
    );
    let r = run(
        "warp-rl",
        &["--resume", "run", "--steps", "6", "--threads", "1", "-q"],
        d,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(run_dir.join("final/policy/model.safetensors").is_file());
    let lines = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 6, "{lines}");
}

/// The processes whose command line mentions `needle` (other than this test).
fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if pid != me && cmd.contains(needle) {
            v.push((pid, cmd));
        }
    }
    v
}

/// Ctrl-C during `warp run`: the RL runs it started are stopped (SIGTERM) and waited for, it
/// exits 130, and its folder is resumable: a second `warp run` resumes the runs and completes.
#[test]
fn ctrl_c_stops_warp_run_and_its_children_and_the_run_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cfg = d.join("tiny.toml");
    std::fs::write(
        &cfg,
        "iterations = 1\nruns = 2\nsteps = 30\ncheckpoints = 15\netas = [0.5]\neta = 0.5\n\
         init_anchor_runs = false\njobs = 2\ndevices = [\"cpu\"]\neval_prompts = 8\n\
         eval_samples = 1\nthreads = 1\n[rl]\nbatch = 4\nn = 2\n",
    )
    .unwrap();
    let out = d.join("run");
    let child = Command::new(bin("warp"))
        .args(["run", s(&cfg), "-o", s(&out)])
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ckpt = out.join("iter-1/run-1/step-000002/trainer/state.json");
    let t0 = Instant::now();
    while !ckpt.is_file() {
        assert!(t0.elapsed() < Duration::from_secs(180), "no checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
    let children = processes_mentioning(s(&out.join("iter-1")));
    assert!(!children.is_empty(), "no RL child found");
    // As a terminal's Ctrl-C: to warp run (its children run in process groups of their own).
    // SAFETY: kill(2) on our child's pid (not reaped yet).
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let (code, stderr) = wait(child, 180);
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("stopping"), "{stderr}");
    for (pid, cmd) in &children {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || !std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .unwrap_or_default()
                    .contains("iter-1"),
            "child still running: {pid} {cmd}"
        );
    }
    assert!(processes_mentioning(s(&out.join("iter-1"))).is_empty());
    // Each run stopped at a step boundary: resumable, not complete.
    for m in [1, 2] {
        let r = out.join(format!("iter-1/run-{m}"));
        assert!(r.join("run.json").is_file(), "run-{m}");
        assert!(!r.join("final").exists(), "run-{m} finished before Ctrl-C");
        let log = std::fs::read_to_string(out.join(format!("logs/iter-1-run-{m}.log"))).unwrap();
        assert!(log.contains("SIGTERM"), "run-{m}: {log}");
    }
    let r = run("warp", &["run", s(&cfg), "-o", s(&out)], d);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for m in [1, 2] {
        assert!(
            r.stderr.contains(&format!("resume iter-1/run-{m} ")),
            "{}",
            r.stderr
        );
        let metrics = std::fs::read_to_string(out.join(format!("iter-1/run-{m}/metrics.jsonl")));
        assert_eq!(metrics.unwrap().lines().count(), 30);
    }
    assert!(out.join("eval.csv").is_file() && out.join("front.svg").is_file());
}

/// Two Ctrl-C in a row: `warp run` ends at once (killed by the signal), but its steps still get
/// one SIGTERM each and stop cleanly at a step boundary (their logs say so), leaving resumable
/// runs and no orphan running on.
#[test]
fn a_second_ctrl_c_ends_warp_run_at_once_and_its_steps_still_stop_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cfg = d.join("tiny.toml");
    std::fs::write(
        &cfg,
        "iterations = 1\nruns = 2\nsteps = 200\ncheckpoints = 100\netas = [0.5]\neta = 0.5\n\
         init_anchor_runs = false\njobs = 2\ndevices = [\"cpu\"]\nthreads = 1\n\
         [rl]\nbatch = 4\nn = 2\n",
    )
    .unwrap();
    let out = d.join("run");
    let child = Command::new(bin("warp"))
        .args(["run", s(&cfg), "-o", s(&out)])
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    for m in [1, 2] {
        let ckpt = out.join(format!("iter-1/run-{m}/step-000002/trainer/state.json"));
        while !ckpt.is_file() {
            assert!(
                t0.elapsed() < Duration::from_secs(180),
                "no checkpoint in run-{m}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // SAFETY: kill(2) on our child's pid (not reaped yet), twice.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    std::thread::sleep(Duration::from_millis(30));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let (code, stderr) = wait(child, 60);
    // Ended by the signal itself (no exit code), not by its own error path.
    assert_eq!(code, None, "{stderr}");
    let t1 = Instant::now();
    while !processes_mentioning(s(&out.join("iter-1"))).is_empty() {
        assert!(
            t1.elapsed() < Duration::from_secs(120),
            "steps still running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for m in [1, 2] {
        let r = out.join(format!("iter-1/run-{m}"));
        let log = std::fs::read_to_string(out.join(format!("logs/iter-1-run-{m}.log"))).unwrap();
        assert!(log.contains("interrupted by SIGTERM"), "run-{m}: {log}");
        assert!(r.join("run.json").is_file() && !r.join("final").exists());
        // No temporary folder (the run folder's lock file stays: see warp::io::lock).
        assert!(
            entries(&r)
                .iter()
                .all(|e| !e.starts_with('.') || e == ".warp-run.lock"),
            "run-{m}: {:?}",
            entries(&r)
        );
    }
}
