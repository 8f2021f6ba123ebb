//! The TRL backend of the RL stage: `warp rl` with `backend = "trl"` hands the run to TRL's
//! RLOOTrainer under `accelerate launch` (docs/SCALE.md), through the Python entry point kept in
//! the source tree as python/warp_trl.py and embedded here, so an installed `warp` needs no source
//! tree: it is written once to the cache, keyed by its content hash.
//!
//! Python and accelerate come from the environment: `$WARP_TRL_PYTHON` (exported by
//! scripts/setup-trl.sh) and the `accelerate` beside it, else `accelerate` on `PATH`. The child
//! runs in a process group of its own; a cancellation request (Ctrl-C, SIGTERM to warp) sends it
//! SIGTERM, and the run folder stays resumable (every folder it writes is staged and renamed).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::io::write_file_atomic;

/// python/warp_trl.py.
pub const ENTRY_POINT: &str = include_str!("../../python/warp_trl.py");

/// How the trainer is launched.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// An accelerate config file (FSDP, ZeRO-3, several GPUs: python/accelerate/*.yaml); without
    /// one, a single process (on the CPU when `cpu`).
    pub accelerate_config: Option<PathBuf>,
    /// One CPU process (the device setting is `cpu`).
    pub cpu: bool,
    /// torch threads per process.
    pub threads: Option<usize>,
    /// No progress on stderr.
    pub quiet: bool,
    /// Further RLOOConfig settings, as a JSON object (the entry point's --trl-args).
    pub trl_args: Option<String>,
}

fn cache_dir() -> PathBuf {
    match std::env::var_os("WARP_CACHE") {
        Some(d) => PathBuf::from(d),
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".cache"))
            .unwrap_or_else(std::env::temp_dir)
            .join("warp"),
    }
    .join("trl")
}

/// The entry point as a file: written once to the cache (atomically), then reused.
pub fn entry_point() -> Result<PathBuf> {
    let hash = Sha256::digest(ENTRY_POINT.as_bytes());
    let tag: String = hash[..6].iter().map(|b| format!("{b:02x}")).collect();
    let dir = cache_dir();
    let path = dir.join(format!("warp_trl-{tag}.py"));
    if std::fs::read(&path).ok().as_deref() != Some(ENTRY_POINT.as_bytes()) {
        std::fs::create_dir_all(&dir).at(&dir)?;
        write_file_atomic(&path, ENTRY_POINT.as_bytes())?;
    }
    Ok(path)
}

/// The `accelerate` program: beside `$WARP_TRL_PYTHON`, else on `PATH`.
pub fn accelerate_program() -> Result<PathBuf> {
    if let Some(py) = std::env::var_os("WARP_TRL_PYTHON") {
        let cand = Path::new(&py).with_file_name("accelerate");
        if cand.is_file() {
            return Ok(cand);
        }
        return Err(Error::compute(
            "trl backend",
            format!(
                "no `accelerate` beside WARP_TRL_PYTHON={} (source scripts/setup-trl.sh)",
                Path::new(&py).display()
            ),
        ));
    }
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("accelerate"))
                .find(|c| c.is_file())
        })
        .ok_or_else(|| {
            Error::compute(
                "trl backend",
                "`accelerate` not found: set WARP_TRL_PYTHON or put accelerate on PATH \
                 (`source scripts/setup-trl.sh` does both)",
            )
        })
}

/// Starts a new run in `out` with warp's RL settings `config` (the object recorded under
/// "config" in run.json).
pub fn train(config: &serde_json::Value, out: &Path, l: &Launch) -> Result<()> {
    let file = tempfile_path("config.json");
    let text = serde_json::to_string_pretty(config)
        .map_err(|e| Error::Internal(format!("RL settings to JSON: {e}")))?;
    write_file_atomic(&file, text.as_bytes())?;
    let args = vec![
        "train".to_string(),
        file.display().to_string(),
        "-o".into(),
        out.display().to_string(),
    ];
    let r = run(args, l);
    let _ = std::fs::remove_file(&file);
    r
}

/// Continues the run in `out` from its last complete checkpoint; `steps` may extend it.
pub fn resume(out: &Path, steps: Option<u64>, l: &Launch) -> Result<()> {
    let mut args = vec!["resume".to_string(), out.display().to_string()];
    if let Some(s) = steps {
        args.extend(["--steps".into(), s.to_string()]);
    }
    run(args, l)
}

fn tempfile_path(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "warp-trl-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// The command line: `accelerate launch [LAUNCH FLAGS] ENTRY ARGS [--threads N] [-q] …`.
pub fn command(args: &[String], l: &Launch) -> Result<Command> {
    let mut c = Command::new(accelerate_program()?);
    c.arg("launch");
    match &l.accelerate_config {
        Some(f) => {
            c.arg("--config_file").arg(f);
        }
        None => {
            c.args(["--num_processes", "1", "--num_machines", "1"]);
            c.args(["--mixed_precision", "no", "--dynamo_backend", "no"]);
            if l.cpu {
                c.arg("--cpu");
            }
        }
    }
    if let Some(t) = l.threads {
        c.args(["--num_cpu_threads_per_process", &t.to_string()]);
    }
    c.arg("-q").arg(entry_point()?).args(args);
    if let Some(t) = l.threads {
        c.args(["--threads", &t.to_string()]);
    }
    if l.quiet {
        c.arg("-q");
    }
    if let Some(j) = &l.trl_args {
        c.args(["--trl-args", j]);
    }
    Ok(c)
}

fn run(args: Vec<String>, l: &Launch) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let mut cmd = command(&args, l)?;
    cmd.process_group(0);
    let shown = format!("accelerate launch … warp_trl.py {}", args[0]);
    let child = cmd
        .spawn()
        .map_err(|e| Error::compute("trl backend", format!("cannot start accelerate: {e}")))?;
    let status = wait(child)?;
    if status.success() {
        Ok(())
    } else {
        let how = match status.code() {
            Some(c) => format!("exited with status {c}"),
            None => format!("was killed ({status})"),
        };
        Err(Error::compute(
            "trl backend",
            format!("{shown} {how} (its error is above)"),
        ))
    }
}

/// Waits for the trainer; on a cancellation request, SIGTERM to its process group, then waits.
fn wait(mut child: Child) -> Result<ExitStatus> {
    let pid = child.id() as libc::pid_t;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Ok(s),
            Ok(None) => {}
            Err(e) => return Err(Error::compute("trl backend", format!("waiting: {e}"))),
        }
        if crate::interrupt::check().is_err() {
            // SAFETY: kill(2) on the process group our child leads.
            unsafe {
                libc::kill(-pid, libc::SIGTERM);
            }
            let _ = child.wait();
            return Err(Error::Interrupted);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
