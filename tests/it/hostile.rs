//! Issue 22's hostile inputs against the real binary (the parts that need no `rl` feature; the
//! others are in `hostile_rl`): each is refused with a clear error and the right exit code,
//! within a time limit (a regression fails, it does not hang the suite) and, where the issue saw
//! memory run away, with the child's peak RSS measured (`wait4`'s rusage).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{bin, f32_file};
use crate::hub_server::{write_checkpoint, Fault, HubServer, TOKEN};

/// How a bounded run of a child ended.
#[allow(dead_code)]
pub struct Bounded {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Peak resident memory of the child (bytes).
    pub max_rss: u64,
}

/// Runs `cmd` to its end, killing it (and failing the test) if it is not done within `limit`:
/// a hang is a test failure, not a stuck suite. Also reports the child's peak RSS.
// The child is reaped by wait4 (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
pub fn bounded(mut cmd: Command, limit: Duration) -> Bounded {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let t0 = Instant::now();
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid out-parameter for wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 on our own child, with valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        if t0.elapsed() > limit {
            // SAFETY: kill(2) and wait4 on our own, still unreaped child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::wait4(pid, &mut status, 0, &mut usage);
            }
            panic!(
                "{cmd:?} still running after {limit:?} (killed); stderr:\n{}",
                e.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Bounded {
        code,
        stdout: o.join().unwrap_or_default(),
        stderr: e.join().unwrap_or_default(),
        max_rss: usage.ru_maxrss as u64 * 1024,
    }
}

fn warp(args: &[&str], cwd: &Path) -> Command {
    let mut c = Command::new(bin("warp"));
    c.args(args).current_dir(cwd);
    c
}

/// A one-line error (no panic, no backtrace) that contains every `want`.
pub fn assert_clear(r: &Bounded, code: i32, want: &[&str]) {
    assert_eq!(r.code, Some(code), "stderr:\n{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    for w in want {
        assert!(r.stderr.contains(w), "stderr lacks '{w}':\n{}", r.stderr);
    }
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o644) },
        0,
        "mkfifo {p:?}"
    );
}

const LIMIT: Duration = Duration::from_secs(60);

/// Item 7: `mkfifo f/model.safetensors; warp inspect f` and a FIFO named as a shard in an index
/// are refused at once (nobody ever writes to the FIFO), not waited on.
#[test]
fn fifos_are_refused_not_waited_on() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir(d.join("f")).unwrap();
    mkfifo(&d.join("f/model.safetensors"));
    let r = bounded(warp(&["inspect", "f"], d), LIMIT);
    assert_clear(&r, 1, &["model.safetensors", "not a regular file"]);

    std::fs::create_dir(d.join("s")).unwrap();
    f32_file(&d.join("s/a.safetensors"), &[("a", vec![1.0])]);
    mkfifo(&d.join("s/b.safetensors"));
    std::fs::write(
        d.join("s/model.safetensors.index.json"),
        r#"{"weight_map": {"a": "a.safetensors", "b": "b.safetensors"}}"#,
    )
    .unwrap();
    let r = bounded(warp(&["inspect", "s"], d), LIMIT);
    assert_clear(&r, 1, &["b.safetensors", "not a regular file"]);
    // And as the index itself.
    std::fs::create_dir(d.join("i")).unwrap();
    mkfifo(&d.join("i/model.safetensors.index.json"));
    let r = bounded(warp(&["inspect", "i"], d), LIMIT);
    assert_clear(
        &r,
        1,
        &["model.safetensors.index.json", "not a regular file"],
    );
}

fn hub_warp(server: &HubServer, home: &Path) -> Command {
    let mut c = Command::new(bin("warp"));
    c.env("HF_ENDPOINT", &server.url)
        .env("HF_HOME", home)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_TOKEN_PATH")
        .env("HF_TOKEN", TOKEN);
    c
}

/// A repo `org/h` on `server` holding a small checkpoint.
fn pushed(server: &HubServer, home: &Path) {
    pushed_as(server, home, "org/h", &[]);
}

/// A checkpoint pushed to `repo` with extra `warp push` flags (e.g. `--private`).
fn pushed_as(server: &HubServer, home: &Path, repo: &str, flags: &[&str]) {
    let src = tempfile::tempdir().unwrap();
    write_checkpoint(src.path(), 5);
    let mut c = hub_warp(server, home);
    c.args(["push", "-q"]).args(flags).arg(src.path()).arg(repo);
    let r = bounded(c, LIMIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
}

/// Item 6 (hub half): a hub answering `Retry-After: 1e20` made `warp download` and `warp push`
/// panic (the value was converted before the cap). Now a clear error, exit 1, at once.
#[test]
fn retry_after_1e20_is_an_error_not_a_panic() {
    let server = HubServer::start();
    let home = tempfile::tempdir().unwrap();
    pushed(&server, home.path());
    let huge = Fault::Headers {
        code: 404,
        headers: vec![("Retry-After".into(), "1e20".into())],
    };
    // The listing (sent with the token: it goes to the hub's own origin).
    server.fail("GET", "org/h", huge.clone(), 1);
    let mut c = hub_warp(&server, home.path());
    c.args(["download", "org/h"]);
    let r = bounded(c, LIMIT);
    assert_clear(&r, 1, &["hub:", "404"]);

    let src = tempfile::tempdir().unwrap();
    write_checkpoint(src.path(), 6);
    server.fail("POST", "org/h", huge, 1);
    let mut c = hub_warp(&server, home.path());
    c.args(["push", "-q"]).arg(src.path()).arg("org/h");
    let r = bounded(c, LIMIT);
    assert_clear(&r, 1, &["hub:", "404"]);
}

/// Item 8: the token goes only to the hub's exact origin — the storage server on the same host
/// but another port (the redirect target of every LFS file) never sees it — and a server that
/// echoes it in its message does not get it printed.
#[test]
fn the_token_stays_with_its_origin_and_out_of_messages() {
    let server = HubServer::start();
    let home = tempfile::tempdir().unwrap();
    pushed(&server, home.path());
    let mut c = hub_warp(&server, home.path());
    c.args(["download", "org/h"]);
    let r = bounded(c, LIMIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let log = server.log();
    let cdn: Vec<_> = log.iter().filter(|l| l.server == "cdn").collect();
    assert!(
        !cdn.is_empty(),
        "the download went through the storage server"
    );
    assert!(
        cdn.iter().all(|l| !l.has_auth),
        "the token reached another port of the same host: {cdn:?}"
    );
    assert!(log.iter().any(|l| l.server == "hub" && l.has_auth));

    let echo = Fault::Headers {
        code: 401,
        headers: vec![(
            "X-Error-Message".into(),
            format!("Invalid credentials: the token {TOKEN} is revoked"),
        )],
    };
    // The listing, sent once with the token (a 401 is not retried).
    server.fail("GET", "org/h", echo, 1);
    let mut c = hub_warp(&server, home.path());
    c.args(["download", "org/h"]);
    let r = bounded(c, LIMIT);
    assert_clear(&r, 1, &["401", "Invalid credentials", "[the token]"]);
    assert!(!r.stderr.contains(TOKEN), "{}", r.stderr);
}

/// Item 8, private repos: the repo cannot be read without the token, so every request of the
/// download carries it to the hub — and still none reaches the storage server its files
/// redirect to (hf-hub, used before, forwarded it along that redirect). The files arrive
/// intact in the python client's cache layout, and a second download fetches nothing.
#[test]
fn the_token_stays_with_its_origin_for_a_private_repo() {
    let server = HubServer::start();
    let home = tempfile::tempdir().unwrap();
    pushed_as(&server, home.path(), "org/secret", &["--private"]);
    assert_eq!(server.is_private("org/secret"), Some(true));
    let start = server.log().len();
    let mut c = hub_warp(&server, home.path());
    c.args(["download", "org/secret"]);
    let r = bounded(c, LIMIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let log = server.log();
    let (cdn, hub): (Vec<_>, Vec<_>) = log[start..].iter().partition(|l| l.server == "cdn");
    assert!(!cdn.is_empty(), "the shards came from the storage server");
    assert!(
        cdn.iter().all(|l| !l.has_auth),
        "token sent to storage: {cdn:?}"
    );
    assert!(
        hub.iter().all(|l| l.has_auth),
        "a hub request went without it"
    );
    let snap = std::path::PathBuf::from(r.stdout.trim());
    for f in server.files("org/secret", "main") {
        if f == ".gitattributes" {
            continue;
        }
        let got = std::fs::read(snap.join(&f)).unwrap();
        assert_eq!(Some(got), server.file("org/secret", "main", &f), "{f}");
        // A relative link into blobs/, as huggingface_hub makes it.
        let link = std::fs::read_link(snap.join(&f)).unwrap();
        assert!(link.starts_with("../../blobs"), "{f}: {}", link.display());
    }
    let before = server.log().len();
    let mut c = hub_warp(&server, home.path());
    c.args(["download", "org/secret"]);
    let r = bounded(c, LIMIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let again = server.log();
    assert!(
        again[before..]
            .iter()
            .all(|l| !l.path.contains("/resolve/")),
        "cached files were fetched again"
    );
}

/// A tiny pipeline config in `d` with `extra` appended (settings tests).
fn pipeline_toml(d: &Path, extra: &str) -> std::path::PathBuf {
    let p = d.join("cfg.toml");
    std::fs::write(&p, format!("steps = 2\n{extra}")).unwrap();
    p
}

/// Item 9: settings errors from the config file, its `[rl]` table and the flags exit 2 before
/// anything is written; `mu = 0`, `beta = -1` and an output inside the model are caught up front
/// (no plan.json, configs/ or logs/).
#[test]
fn settings_errors_exit_2_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir(d.join("model")).unwrap();
    f32_file(&d.join("model/model.safetensors"), &[("a", vec![1.0])]);
    let cases: &[(&str, &[&str])] = &[
        ("colour = 1\n", &["cfg.toml", "colour"]),
        ("seed = \"x\"\n", &["cfg.toml", "seed"]),
        ("jobs = -1\n", &["cfg.toml", "jobs"]),
        ("[rl]\nbatchh = 4\n", &["batchh"]),
        ("mu = 0\n", &["mu", "(0, 1]"]),
        ("beta = -1\n", &["beta", "≥ 0"]),
        ("mu = nan\n", &["cfg.toml", "mu", "NaN"]),
        (
            "[rl]\nreward_timeout = 1e20\n",
            &["reward_timeout", "at most"],
        ),
        ("[rl]\nbatch = 100000000\n", &["batch", "at most"]),
        ("iterations = 1000000000\n", &["iterations", "at most"]),
        (
            "model = \"model\"\noutput = \"model/run\"\n",
            &["output", "inside", "model"],
        ),
    ];
    for (extra, want) in cases {
        let cfg = pipeline_toml(d, extra);
        let r = bounded(warp(&["run", cfg.to_str().unwrap()], d), LIMIT);
        assert_clear(&r, 2, want);
        // Bounded: the plan of a billion iterations is never built.
        assert!(r.max_rss < 1 << 30, "{extra}: {} bytes", r.max_rss);
        for left in ["warp-run", "model/run"] {
            assert!(!d.join(left).exists(), "{extra}: {left} written");
        }
    }
    // The same values as flags.
    let cfg = pipeline_toml(d, "");
    for (flags, want) in [
        (&["--mu", "0"][..], "mu"),
        (&["--beta=-1"][..], "beta"),
        (&["--iterations", "1000000000"][..], "iterations"),
        (&["--runs", "100000"][..], "runs"),
    ] {
        let mut args = vec!["run", cfg.to_str().unwrap(), "-o", "out"];
        args.extend(flags);
        let r = bounded(warp(&args, d), LIMIT);
        assert_clear(&r, 2, &[want]);
        assert!(!d.join("out").exists());
    }
    // `warp rl`: extreme values refused as settings, before any model is read.
    for (flags, want) in [
        (&["--reward-timeout", "1e20"][..], "--reward-timeout"),
        (&["--batch", "100000000"][..], "--batch"),
    ] {
        let mut args = vec!["rl", "-o", "rl-out"];
        args.extend(flags);
        let r = bounded(warp(&args, d), LIMIT);
        assert_clear(&r, 2, &[want, "at most"]);
        assert!(!d.join("rl-out").exists());
    }
}

/// Item 10: the messages say what happened.
#[test]
fn messages_say_what_happened() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // A symbolic link loop is a loop, not "neither a path nor a hub id".
    std::os::unix::fs::symlink("loop", d.join("loop")).unwrap();
    let r = bounded(warp(&["inspect", "loop"], d), LIMIT);
    assert_clear(&r, 1, &["loop", "symbolic links"]);
    assert!(!r.stderr.contains("neither"), "{}", r.stderr);
    // A self-linked model.safetensors is that file's problem, not "a directory with neither".
    std::fs::create_dir(d.join("m")).unwrap();
    std::os::unix::fs::symlink("model.safetensors", d.join("m/model.safetensors")).unwrap();
    let r = bounded(warp(&["inspect", "m"], d), LIMIT);
    assert_clear(&r, 1, &["model.safetensors", "symbolic links"]);
    assert!(!r.stderr.contains("neither"), "{}", r.stderr);
}

/// Item 10, continued: sizes, the reclaim log, the mismatch message.
#[test]
fn more_messages_say_what_happened() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // The largest size is a size; one more is too large, and says so truthfully.
    f32_file(
        &d.join("a.safetensors"),
        &[("x", vec![1.0, 2.0]), ("y", vec![3.0])],
    );
    let max = u64::MAX.to_string();
    let r = bounded(
        warp(
            &[
                "convert",
                "a.safetensors",
                "-o",
                "c",
                "--dtype",
                "bf16",
                "--memory-budget",
                &max,
                "-q",
            ],
            d,
        ),
        LIMIT,
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let r = bounded(
        warp(
            &[
                "convert",
                "a.safetensors",
                "-o",
                "c2",
                "--memory-budget",
                "18446744073709551616",
            ],
            d,
        ),
        LIMIT,
    );
    assert_clear(&r, 2, &["too large", &format!("at most {max} bytes")]);

    // A destination set aside by a writer that died while replacing it is put back, and the
    // log says "restored", not "removed".
    let old = d.join(".kept.warp-old-2147483000-1");
    std::fs::create_dir(&old).unwrap();
    std::fs::write(old.join("f"), b"v").unwrap();
    let r = bounded(
        warp(
            &["convert", "a.safetensors", "-o", "c3", "--dtype", "bf16"],
            d,
        ),
        LIMIT,
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains("restored") && r.stderr.contains("kept"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read(d.join("kept/f")).unwrap(), b"v");

    // One mismatch: the first line of the error says what it is.
    f32_file(
        &d.join("b.safetensors"),
        &[("x", vec![1.0, 2.0]), ("z", vec![3.0])],
    );
    let r = bounded(
        warp(
            &[
                "ema",
                "--mu",
                "0.5",
                "a.safetensors",
                "b.safetensors",
                "-o",
                "e",
            ],
            d,
        ),
        LIMIT,
    );
    assert_ne!(r.code, Some(0));
    let first = r.stderr.lines().next().unwrap_or("");
    assert!(
        first.contains("do not match") && first.contains("tensor '"),
        "{}",
        r.stderr
    );
}
