//! The one command tree (`warp <command>`, src/cli/): every command listed in `warp --help`, the
//! aliases (`warp-slerp`, …) identical to `warp <command>` in output and exit code, exit codes,
//! argument checks before any output, `--threads` bounds, completions, and the signal policy:
//! SIGTERM / SIGHUP / SIGINT during a merge of a few hundred MB exit 128 + N with nothing left
//! in the output's parent, then a rerun succeeds.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{bin, entries, ok, run, Run};

const COMMANDS: [&str; 21] = [
    "slerp",
    "merge",
    "liti",
    "lerp",
    "ema",
    "convert",
    "extract-lora",
    "inspect",
    "fixture",
    "rl",
    "sft",
    "run",
    "status",
    "cancel",
    "eval",
    "generate",
    "plot",
    "report",
    "push",
    "download",
    "completions",
];

/// The aliases this build has (`warp-rl`, `warp-sft` need the `rl` feature).
pub fn aliases() -> Vec<&'static str> {
    let mut v = vec![
        "slerp",
        "liti",
        "lerp",
        "ema",
        "convert",
        "inspect",
        "fixture",
        "extract-lora",
    ];
    if cfg!(feature = "rl") {
        v.extend(["rl", "sft"]);
    }
    v
}

#[test]
fn help_lists_every_command() {
    let help = ok("warp", &["--help"], Path::new("."));
    let listed: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for c in COMMANDS {
        assert!(listed.contains(&c), "{c} not in warp --help:\n{help}");
        // Each command has its own help, with its usage line.
        let h = ok("warp", &[c, "--help"], Path::new("."));
        assert!(h.contains(&format!("Usage: warp {c}")), "{h}");
    }
    assert!(listed.contains(&"help"));
    assert_eq!(listed.len(), COMMANDS.len() + 1, "{listed:?}");
}

/// `warp-NAME args` and `warp NAME args` run in twin folders: the same stdout and exit code,
/// and the same stderr once the program name is normalised.
pub fn same_both_ways(name: &str, args: &[&str], a: &Path, b: &Path, compare_stderr: bool) -> Run {
    let mut alias = run(&format!("warp-{name}"), args, a);
    alias.stdout = alias
        .stdout
        .replace(&format!("warp-{name}"), &format!("warp {name}"));
    let mut full_args = vec![name];
    full_args.extend_from_slice(args);
    let mut full = run("warp", &full_args, b);
    // `warp slerp --version` says `warp-slerp 0.1.0` (clap names subcommands so).
    full.stdout = full
        .stdout
        .replace(&format!("warp-{name}"), &format!("warp {name}"));
    assert_eq!(
        (alias.code, &alias.stdout),
        (full.code, &full.stdout),
        "warp-{name} {args:?} vs warp {name}:\n{}\n---\n{}",
        alias.stderr,
        full.stderr
    );
    if compare_stderr {
        let norm_alias = alias
            .stderr
            .replace(&format!("warp-{name}"), &format!("warp {name}"));
        let norm_full = full
            .stderr
            .replace("warp: error:", &format!("warp {name}: error:"));
        assert_eq!(norm_alias, norm_full, "warp-{name} {args:?}");
    }
    alias
}

/// Twin folders with the same tiny inputs: base, a and b (fine-tunes of base).
fn twins() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for d in [&a, &b] {
        std::fs::create_dir(d).unwrap();
        for (out, extra) in [
            ("base", vec![]),
            ("m1", vec!["--base-seed", "0", "--seed", "1"]),
            ("m2", vec!["--base-seed", "0", "--seed", "2"]),
        ] {
            let mut args = vec!["--size", "300KB", "--dtype", "f32", "-o", out, "-q"];
            args.extend(extra);
            ok("warp-fixture", &args, d);
        }
    }
    (tmp, a, b)
}

#[test]
fn aliases_behave_exactly_like_the_commands() {
    let (_tmp, a, b) = twins();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "slerp",
            vec![
                "m1", "m2", "--init", "base", "-o", "s", "--eta", "0.3", "--eta", "1", "-q",
            ],
        ),
        (
            "liti",
            vec![
                "--init", "base", "--merged", "m1", "--eta", "0.5", "-o", "l", "-q",
            ],
        ),
        ("lerp", vec!["m1", "m2", "--init", "base", "-o", "r", "-q"]),
        (
            "ema",
            vec!["--mu", "0.1", "base", "m1", "m2", "-o", "e", "-q"],
        ),
        ("convert", vec!["m1", "-o", "c", "--dtype", "bf16", "-q"]),
        ("inspect", vec!["m1"]),
        ("fixture", vec!["--size", "100KB", "-o", "f", "-q"]),
    ];
    for (name, args) in &cases {
        let r = same_both_ways(name, args, &a, &b, true);
        assert_eq!(r.code, 0, "warp-{name} {args:?}: {}", r.stderr);
    }
    for out in ["s/eta-0.30", "s/eta-1.00", "l", "r", "e", "c", "f"] {
        crate::common::assert_same_tensors(&a.join(out), &b.join(out));
    }
    // Failures: bad arguments (clap and ours), a missing input, an existing destination.
    for name in aliases() {
        for args in [vec!["--no-such-flag"], vec!["--help"], vec!["--version"]] {
            same_both_ways(name, &args, &a, &b, true);
        }
    }
    for (name, args, code) in [
        ("slerp", vec!["m1", "--init", "base", "-o", "x"], 2),
        ("slerp", vec!["m1", "nope", "--init", "base", "-o", "x2"], 2),
        (
            "slerp",
            vec!["m1", "m2/config.json", "--init", "base", "-o", "x3"],
            1,
        ),
        (
            "liti",
            vec![
                "--init", "base", "--merged", "m1", "--eta", "0.5", "-o", "l",
            ],
            2,
        ),
        ("convert", vec!["m1", "-o", "y", "--threads", "0"], 2),
        ("inspect", vec!["m1/config.json"], 1),
    ] {
        let r = same_both_ways(name, &args, &a, &b, true);
        assert_eq!(r.code, code, "warp-{name} {args:?}: {}", r.stderr);
    }
}

#[test]
fn exit_codes_and_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // Bad arguments: 2; a failure: 1; both one line naming the program.
    let r = run("warp", &["slerp", "--init"], d);
    assert_eq!(r.code, 2, "{}", r.stderr);
    std::fs::write(d.join("bad.safetensors"), b"not a checkpoint").unwrap();
    let r = run("warp-inspect", &["bad.safetensors"], d);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.starts_with("warp-inspect: error: "),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("bad.safetensors"), "{}", r.stderr);
    assert_eq!(r.stderr.trim_end().lines().count(), 1, "{}", r.stderr);
    let r = run("warp", &["bogus"], d);
    assert_eq!(r.code, 2);
    // Commands of the `rl` feature are listed in every build and say when it is missing.
    if !cfg!(feature = "rl") {
        for args in [
            vec!["rl", "-o", "run", "--steps", "2"],
            vec!["sft", "-o", "sft"],
            vec!["eval", "--run", "x", "-o", "e.csv"],
            vec!["generate", "m", "--prompt", "x"],
            vec!["run", "-o", "x"],
        ] {
            let r = run("warp", &args, d);
            assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
            assert!(r.stderr.contains("needs the `rl` feature"), "{}", r.stderr);
        }
        // Its arguments are still checked first.
        let r = run("warp", &["rl", "-o", "run", "--mu", "2"], d);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(r.stderr.contains("--mu: must be in (0, 1]"), "{}", r.stderr);
    }
    assert_eq!(entries(d), ["bad.safetensors"]);
}

#[test]
fn arguments_are_checked_before_any_input_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // The inputs do not even exist: the error must be about the argument, found first.
    let r = run(
        "warp-slerp",
        &[
            "x1",
            "x2",
            "--init",
            "x0",
            "-o",
            "out",
            "--report",
            "no/such/dir/angles.json",
        ],
        d,
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("--report") && r.stderr.contains("no/such/dir"),
        "{}",
        r.stderr
    );
    std::fs::create_dir(d.join("taken")).unwrap();
    let r = run("warp-lerp", &["x1", "--init", "x0", "-o", "taken"], d);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("taken") && r.stderr.contains("--force"),
        "{}",
        r.stderr
    );
    std::fs::write(d.join("file"), b"x").unwrap();
    let r = run("warp-convert", &["x1", "-o", "file/sub", "--force"], d);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("not a folder"), "{}", r.stderr);
    let r = run("warp", &["plot", "x.csv", "-o", "nowhere/front.svg"], d);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("nowhere"), "{}", r.stderr);
    let r = run("warp-fixture", &["--size", "1KB", "-o", "taken"], d);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let mut left = entries(d);
    left.retain(|e| e != "taken" && e != "file");
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn threads_are_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let cores = std::thread::available_parallelism().unwrap().get();
    let max = (4 * cores).to_string();
    let over = (4 * cores + 1).to_string();
    for n in ["0", over.as_str(), "100000", "-1", "x"] {
        let arg = format!("--threads={n}");
        let r = run("warp-convert", &["in", "-o", "out", &arg], tmp.path());
        assert_eq!(r.code, 2, "--threads {n}: {}", r.stderr);
        assert!(r.stderr.contains("--threads"), "{}", r.stderr);
    }
    let r = run(
        "warp-convert",
        &["in", "-o", "out", "--threads", "1000"],
        tmp.path(),
    );
    assert!(
        r.stderr.contains(&format!("between 1 and {max}")),
        "{}",
        r.stderr
    );
    // The largest allowed value passes the parser (the run then fails on the missing input).
    let r = run(
        "warp-convert",
        &["in", "-o", "out", "--threads", &max],
        tmp.path(),
    );
    assert!(
        r.code != 0 && !r.stderr.contains("--threads"),
        "{}",
        r.stderr
    );
}

#[test]
fn completions_cover_warp_and_its_aliases() {
    for shell in ["bash", "zsh", "fish"] {
        let text = ok("warp", &["completions", shell], Path::new("."));
        for name in ["warp", "warp-slerp", "warp-rl"] {
            assert!(text.contains(name), "{shell}: {name}");
        }
        assert!(text.contains("lerp-threshold"), "{shell}");
    }
}

/// Waits for `child` with a deadline; its exit code and stderr.
pub fn wait(mut child: std::process::Child, secs: u64) -> (Option<i32>, String) {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (st.code(), err);
        }
        if t0.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            panic!("still running after {secs} s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGTERM and SIGHUP (and SIGINT) at several points of a merge of a few hundred MB: exit
/// 128 + N, nothing left in the output's parent (no destination, no temporary folder), and a
/// rerun succeeds. A signal that lands after the merge finished proves nothing: at least one
/// run per signal must be interrupted.
#[test]
fn signals_stop_a_merge_cleanly_at_any_point() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for (name, extra) in [
        ("base", vec![]),
        ("m1", vec!["--base-seed", "0", "--seed", "1"]),
        ("m2", vec!["--base-seed", "0", "--seed", "2"]),
    ] {
        let mut args = vec!["--size", "100MB", "--dtype", "f32", "-o", name, "-q"];
        args.extend(extra);
        ok("warp-fixture", &args, d);
    }
    let out_parent = d.join("outs");
    std::fs::create_dir(&out_parent).unwrap();
    let args = [
        "../m1",
        "../m2",
        "--init",
        "../base",
        "-o",
        "merged",
        "--eta",
        "0.3",
        "--eta",
        "1",
        "--dtype",
        "bf16",
        "--memory-budget",
        "1MiB",
        "--threads",
        "1",
        "-q",
    ];
    for (sig, code) in [
        (libc::SIGTERM, 143),
        (libc::SIGHUP, 129),
        (libc::SIGINT, 130),
    ] {
        let mut interrupted = 0;
        for delay_ms in [0u64, 150, 500] {
            let child = Command::new(bin("warp-slerp"))
                .args(args)
                .current_dir(&out_parent)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // Once it writes (its temporary folder exists), wait `delay_ms`, then signal.
            let t0 = Instant::now();
            while !entries(&out_parent).iter().any(|e| e.contains("warp-tmp")) {
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "never started writing"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(delay_ms));
            // SAFETY: kill(2) on our child's pid (not reaped yet).
            unsafe { libc::kill(child.id() as i32, sig) };
            let (got, stderr) = wait(child, 120);
            if got == Some(0) {
                eprintln!("note: signal {sig} after {delay_ms} ms landed after the merge finished");
                std::fs::remove_dir_all(out_parent.join("merged")).unwrap();
                continue;
            }
            interrupted += 1;
            assert_eq!(got, Some(code), "signal {sig}: {stderr}");
            assert!(stderr.contains("interrupted"), "{stderr}");
            assert!(
                entries(&out_parent).is_empty(),
                "left: {:?}",
                entries(&out_parent)
            );
        }
        assert!(interrupted > 0, "signal {sig} never interrupted the merge");
    }
    let r = run("warp-slerp", &args, &out_parent);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(entries(&out_parent), ["merged"]);
}
