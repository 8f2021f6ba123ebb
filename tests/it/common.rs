//! Shared test helpers: run the real binaries, craft safetensors files byte by byte, call the
//! independent Python reference.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin(name: &str) -> PathBuf {
    // Cargo sets CARGO_BIN_EXE_<name> for integration tests.
    let var = format!("CARGO_BIN_EXE_{name}");
    PathBuf::from(std::env::var(&var).unwrap_or_else(|_| panic!("{var} not set")))
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(name: &str, args: &[&str], cwd: &Path) -> Run {
    let out: Output = Command::new(bin(name))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("spawn binary");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs and asserts success, returning stdout.
pub fn ok(name: &str, args: &[&str], cwd: &Path) -> String {
    let r = run(name, args, cwd);
    assert_eq!(r.code, 0, "{name} {args:?} failed:\n{}", r.stderr);
    r.stdout
}

/// Runs, asserts failure with a one-line-ish message containing every `want`, returns stderr.
pub fn fails(name: &str, args: &[&str], cwd: &Path, want: &[&str]) -> String {
    let r = run(name, args, cwd);
    assert_ne!(
        r.code, 0,
        "{name} {args:?} should fail; stdout:\n{}",
        r.stdout
    );
    assert!(
        !r.stderr.contains("panicked"),
        "{name} panicked:\n{}",
        r.stderr
    );
    for w in want {
        assert!(
            r.stderr.contains(w),
            "{name} {args:?}: stderr lacks '{w}':\n{}",
            r.stderr
        );
    }
    r.stderr
}

/// A safetensors file from a raw JSON header and a data section.
pub fn raw_file(path: &Path, header_json: &str, data: &[u8]) {
    let mut f = (header_json.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(header_json.as_bytes());
    f.extend_from_slice(data);
    std::fs::write(path, f).unwrap();
}

/// A valid file with f32 tensors `(name, values)`, laid out in order.
pub fn f32_file(path: &Path, tensors: &[(&str, Vec<f32>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, vals) in tensors {
        let begin = data.len();
        for v in vals {
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": [vals.len()], "data_offsets": [begin, data.len()]}),
        );
    }
    raw_file(path, &serde_json::to_string(&header).unwrap(), &data);
}

/// Lists a folder's entries (names), sorted; empty when missing.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `fixtures/NAME` of the repository (`arith`, `arith/model`, a tiny family model, …).
pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("fixtures").join(name)
}

/// Runs `cmd` with `stdin` written to its standard input, its output captured (a failed status
/// is the caller's to judge); panics if it cannot be started.
pub fn with_stdin(cmd: &mut Command, stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()));
    // A program that exits without reading all of it closes the pipe: its status says why.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

/// The Python interpreter for reference scripts: $WARP_PYTHON, else python3. The test script
/// (scripts/test) installs numpy and safetensors; a missing module fails the test loudly.
pub fn python() -> String {
    std::env::var("WARP_PYTHON").unwrap_or_else(|_| "python3".into())
}

pub fn py(args: &[&str], cwd: &Path) -> String {
    let out = Command::new(python())
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("python3 must be installed (run scripts/test, which sets it up)");
    assert!(
        out.status.success(),
        "python {args:?} failed (scripts/setup-python installs numpy/safetensors):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts two checkpoints hold the same tensors with byte-identical data (metadata may differ).
pub fn assert_same_tensors(a: &Path, b: &Path) {
    let ca = warp::io::Checkpoint::open(a).unwrap();
    let cb = warp::io::Checkpoint::open(b).unwrap();
    assert_eq!(
        ca.tensors().len(),
        cb.tensors().len(),
        "{} vs {}",
        a.display(),
        b.display()
    );
    for ta in ca.tensors() {
        let tb = cb
            .get(&ta.name)
            .unwrap_or_else(|| panic!("{} lacks {}", b.display(), ta.name));
        assert_eq!((ta.dtype, &ta.shape), (tb.dtype, &tb.shape), "{}", ta.name);
        assert!(
            ca.bytes(ta, 0..ta.nbytes) == cb.bytes(tb, 0..tb.nbytes),
            "{}: data differs",
            ta.name
        );
    }
}

/// The Python of the venv made by scripts/setup-torch.sh (torch + transformers), for the `rl`
/// reference scripts.
pub fn torch_python() -> String {
    std::env::var("WARP_TORCH_PYTHON").unwrap_or_else(|_| {
        panic!(
            "WARP_TORCH_PYTHON is not set: run `source scripts/setup-torch.sh` (it installs torch \
             and transformers into a cached venv and exports it), then rerun the tests"
        )
    })
}

/// Runs the reference script tests/ref/`script` with the torch venv: `req` as JSON on stdin,
/// the JSON it prints back.
pub fn torch_ref(script: &str, args: &[&Path], req: &serde_json::Value) -> serde_json::Value {
    let mut cmd = Command::new(torch_python());
    cmd.arg(repo_root().join("tests/ref").join(script))
        .args(args);
    let out = with_stdin(&mut cmd, req.to_string().as_bytes());
    assert!(
        out.status.success(),
        "{script} failed (is the venv of scripts/setup-torch.sh in WARP_TORCH_PYTHON?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The settings of a tiny `warp run` (TOML): 2 iterations of 2 RL runs of 2 steps on the built-in
/// task, 3 η, a short evaluation, one thread. `over` replaces keys or adds them (values in TOML,
/// e.g. `("iterations", "1")`, `("trainer", "\"trl\"")`); `tables` (e.g. a `[slurm]` table) is
/// appended.
pub fn tiny_pipeline(over: &[(&str, &str)], tables: &str) -> String {
    let mut keys: Vec<(&str, String)> = [
        ("iterations", "2"),
        ("runs", "2"),
        ("steps", "2"),
        ("checkpoints", "1"),
        ("etas", "[0.0, 0.5, 1.0]"),
        ("eta", "0.5"),
        ("rl_args", r#"["--batch", "4", "-n", "2"]"#),
        ("eval_prompts", "8"),
        ("eval_samples", "1"),
        ("threads", "1"),
    ]
    .iter()
    .map(|(k, v)| (*k, v.to_string()))
    .collect();
    for (k, v) in over {
        match keys.iter_mut().find(|(key, _)| key == k) {
            Some(kv) => kv.1 = v.to_string(),
            None => keys.push((k, v.to_string())),
        }
    }
    let mut text: String = keys.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    text.push_str(tables);
    text
}

/// The `[slurm]` table of the tiny pipelines run on the test cluster: one CPU, and the queue
/// looked at often (so a test does not wait for nothing).
pub const TINY_SLURM: &str = "[slurm]\ncpus = 1\npoll_seconds = 0.3\nmarker_grace_seconds = 5\n";

/// Simulated experiments per coverage design: `default` in CI; `WARP_COVERAGE_SIMS` for the
/// long runs whose figures docs/RESULTS.md quotes (binomial sd of a 95 % coverage: √(0.0475/n)).
pub fn coverage_sims(default: usize) -> usize {
    std::env::var("WARP_COVERAGE_SIMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The rows of an RL run's metrics.jsonl.
pub fn read_metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The mean of a numeric field over metrics rows.
pub fn mean_field(rows: &[serde_json::Value], field: &str) -> f64 {
    rows.iter().map(|r| r[field].as_f64().unwrap()).sum::<f64>() / rows.len() as f64
}
