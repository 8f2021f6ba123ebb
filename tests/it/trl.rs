//! The TRL backend of the RL stage (python/warp_align/trl_backend.py on TRL's RLOOTrainer,
//! feature `rl` for the warp side of the comparisons), run for real through `accelerate launch` on the CPU with the
//! built-in model:
//! - TRL's reference model is WARP's EMA: a test-only callback (tests/ref/trl_policy_steps.py)
//!   saves the policy after every step; the EMA of those iterates, recomputed here in f64, equals
//!   the run's ema folders, and the policy folders equal the saved iterates;
//! - the outputs load in warp (warp-inspect, warp's model, `warp eval`) and in transformers
//!   (logits of a fixed input, tests/ref/hf_logits.py);
//! - a run stopped by SIGTERM and resumed ends bit-identical to an uninterrupted one;
//! - the entry point's rewards equal warp's on the same strings (verify:arith re-implemented,
//!   model: through transformers against warp's RewardModel), cmd: failures are named;
//! - bad settings and a failing reward end with a one-line error and no final/ folder.
//!
//! Needs `source scripts/setup-trl.sh` (exports WARP_TRL_PYTHON, WARP_TRL_VENV and, through
//! scripts/setup-torch.sh, WARP_TORCH_PYTHON).
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use crate::common::{self, fixture, ok, repo_root};
use tch::{Device, Kind, Tensor};
use warp::io::Checkpoint;
use warp::rl::CausalLm;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn trl_venv() -> PathBuf {
    PathBuf::from(std::env::var("WARP_TRL_VENV").unwrap_or_else(|_| {
        panic!(
            "WARP_TRL_VENV is not set: run `source scripts/setup-trl.sh` (it installs TRL, \
             accelerate and datasets into a cached venv on top of the torch one), then rerun"
        )
    }))
}

fn entry() -> PathBuf {
    repo_root().join("python/warp_align/trl_backend.py")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `accelerate launch` of the entry point, one CPU process, in its own process group (the
/// SIGTERM of the test callback goes to that group, not to the test harness).
fn launch(args: &[&str], env: &[(&str, &str)]) -> Output {
    let one = [
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--cpu",
    ];
    launch_with(&one, args, env)
}

/// `accelerate launch LAUNCH_ARGS python/warp_align/trl_backend.py ARGS` with one torch thread
/// per process.
fn launch_with(launch_args: &[&str], args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(trl_venv().join("bin/accelerate"));
    c.arg("launch")
        .args(launch_args)
        .args(["--num_cpu_threads_per_process", "1", "-q"])
        .arg(entry())
        .args(args)
        // The entry point reads warp's RL settings' schema from `warp rl --print-schema`.
        .env("WARP_BIN", common::bin("warp"))
        .stdin(Stdio::null())
        .process_group(0);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output()
        .expect("cannot run accelerate from $WARP_TRL_VENV")
}

/// The entry point under plain `python` (no launcher).
fn python(args: &[&str], stdin: &str) -> Output {
    let mut cmd = Command::new(trl_venv().join("bin/python"));
    cmd.arg(entry())
        .args(args)
        .env("WARP_BIN", common::bin("warp"));
    common::with_stdin(&mut cmd, stdin.as_bytes())
}

/// warp's RL settings for a small run on the built-in task: 4 prompts x 4 completions per step,
/// a large μ and lr so the EMA moves visibly in a few steps.
fn config(dir: &Path, extra: serde_json::Value) -> PathBuf {
    let mut c = serde_json::json!({
        "model": s(&fixture("arith").join("model")),
        "prompts": s(&fixture("arith").join("train.jsonl")),
        "reward": "verify:arith",
        "steps": 5, "batch": 4, "n": 4, "beta": 0.1, "mu": 0.3, "temperature": 0.9,
        "max_new_tokens": 8, "lr": 1e-3, "warmup": 2, "grad_clip": 1.0,
        "baseline": "rloo", "anchor": "ema", "length_penalty": 0.0, "seed": 5,
        "save_every": 2, "dtype": "f32", "device": "cpu", "reward_timeout": 60.0
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("config.json");
    std::fs::write(&p, c.to_string()).unwrap();
    p
}

/// Tensors of a checkpoint (folder or .safetensors file) as f64, by name, in file order.
fn tensors(path: &Path) -> Vec<(String, Vec<f64>)> {
    let ck = Checkpoint::open(path).unwrap();
    ck.tensors()
        .iter()
        .map(|t| {
            assert_eq!(
                format!("{:?}", t.dtype),
                "F32",
                "{}: {}",
                path.display(),
                t.name
            );
            let v = ck
                .bytes(t, 0..t.nbytes)
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect();
            (t.name.clone(), v)
        })
        .collect()
}

fn max_diff(a: &[(String, Vec<f64>)], b: &[(String, Vec<f64>)]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut d = 0.0f64;
    for (name, x) in a {
        let y = &b
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name}"))
            .1;
        assert_eq!(x.len(), y.len(), "{name}");
        for (p, q) in x.iter().zip(y) {
            d = d.max((p - q).abs());
        }
    }
    d
}

/// θ_ema,t = (1 − μ)·θ_ema,t−1 + μ·θ_t from θ_ema,0 = θ_0, in f64.
fn ema_of(iterates: &[Vec<(String, Vec<f64>)>], mu: f64) -> Vec<(String, Vec<f64>)> {
    let mut ema = iterates[0].clone();
    for it in &iterates[1..] {
        for ((_, e), (_, p)) in ema.iter_mut().zip(it) {
            for (x, y) in e.iter_mut().zip(p) {
                *x = (1.0 - mu) * *x + mu * y;
            }
        }
    }
    ema
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Logits of a fixed input through warp's model and through transformers.
fn logits_warp_vs_transformers(dir: &Path) -> f32 {
    let model = CausalLm::load(dir, Device::Cpu).unwrap();
    let ids: Vec<i64> = vec![1, 7, 8, 14, 5, 13, 17];
    let t = Tensor::from_slice(&ids).view([1, -1]);
    let mask = Tensor::ones([1, ids.len() as i64], (Kind::Int64, Device::Cpu));
    let pos = Tensor::arange(ids.len() as i64, (Kind::Int64, Device::Cpu)).view([1, -1]);
    let ours: Vec<f32> =
        Vec::try_from(model.forward(&t, &mask, &pos, None).unwrap().flatten(0, -1)).unwrap();
    let v = common::torch_ref(
        "hf_logits.py",
        &[dir],
        &serde_json::json!({"input_ids": [ids]}),
    );
    let theirs: Vec<Vec<Vec<f32>>> = serde_json::from_value(v["logits"].clone()).unwrap();
    let theirs: Vec<f32> = theirs.into_iter().flatten().flatten().collect();
    assert_eq!(ours.len(), theirs.len());
    ours.iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

#[test]
// long fn: one TRL run (slow to start) checked for its layout, loading and resume in turn.
fn ema_anchor_layout_loading_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), serde_json::json!({}));
    let out = tmp.path().join("run");
    let steps_dir = tmp.path().join("iterates");
    let callback = repo_root().join("tests/ref/trl_policy_steps.py");
    let t0 = Instant::now();
    let o = launch(
        &[
            "train",
            s(&cfg),
            "-o",
            s(&out),
            "--threads",
            "1",
            "-q",
            "--callback",
            s(&callback),
        ],
        &[("WARP_TRL_POLICY_STEPS", s(&steps_dir))],
    );
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "trl_backend.py train failed:\n{stderr}");
    eprintln!("trl run: {:.1} s", t0.elapsed().as_secs_f64());
    assert_eq!(stdout.trim(), s(&out.join("final")));

    // The run layout: run.json, one metrics line per step, step folders, final/; the TRL
    // checkpoint of the newest step only; no staging leftovers.
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["backend"], "trl");
    assert_eq!(run["config"]["mu"], 0.3);
    assert_eq!(run["versions"]["trl"], "1.16.0");
    let mut names = common::entries(&out);
    names.sort();
    assert_eq!(
        names,
        [
            "final",
            "metrics.jsonl",
            "run.json",
            "step-000002",
            "step-000004",
            "step-000005"
        ]
    );
    assert_eq!(common::entries(&out.join("step-000002")), ["ema", "policy"]);
    assert_eq!(
        common::entries(&out.join("step-000005")),
        ["ema", "policy", "trainer"]
    );
    assert_eq!(common::entries(&out.join("final")), ["ema", "policy"]);
    let m = metrics(&out);
    assert_eq!(m.len(), 5);
    for (i, row) in m.iter().enumerate() {
        assert_eq!(row["step"], i as u64 + 1);
        for k in [
            "reward_mean",
            "reward_std",
            "kl_anchor",
            "entropy",
            "completion_len",
            "lr",
        ] {
            assert!(row[k].as_f64().is_some_and(f64::is_finite), "{k} in {row}");
        }
    }
    // warp's warm-up: step 1 of 2 at half the rate.
    assert_eq!(m[0]["lr"], 5e-4);
    assert_eq!(m[1]["lr"], 1e-3);

    // The iterates: θ_0 is the init, and every step moved the policy (else the EMA check below
    // would be weak).
    let init = tensors(&fixture("arith").join("model"));
    let it: Vec<_> = (0..=5)
        .map(|t| tensors(&steps_dir.join(format!("policy-{t}.safetensors"))))
        .collect();
    assert_eq!(max_diff(&it[0], &init), 0.0);
    for t in 1..=5 {
        let moved = max_diff(&it[t], &it[t - 1]);
        assert!(moved > 1e-4, "step {t} left the policy unchanged ({moved})");
    }
    // The EMA: TRL's reference model after step t equals the f64 EMA of θ_0..θ_t (TRL updates
    // in f32: a few ulps per step), and the policy folders hold θ_t exactly.
    let mu = 0.3;
    let mut worst = 0.0f64;
    for (t, dir) in [
        (2, "step-000002"),
        (4, "step-000004"),
        (5, "step-000005"),
        (5, "final"),
    ] {
        let want = ema_of(&it[..=t], mu);
        let d = max_diff(&tensors(&out.join(dir).join("ema")), &want);
        eprintln!("{dir}/ema: max |TRL − EMA recomputed in f64| = {d:.2e}");
        assert!(
            d < 1e-6,
            "{dir}/ema is not the EMA of the policy iterates: {d}"
        );
        worst = worst.max(d);
        assert_eq!(
            max_diff(&tensors(&out.join(dir).join("policy")), &it[t]),
            0.0
        );
    }
    // Negative controls: another μ, the init, the policy itself are all far from it.
    let ema = tensors(&out.join("final/ema"));
    let other_mu = max_diff(&ema, &ema_of(&it, 0.36));
    let from_init = max_diff(&ema, &init);
    let from_policy = max_diff(&ema, &it[5]);
    eprintln!(
        "final/ema vs μ 0.36: {other_mu:.2e}, vs init {from_init:.2e}, vs policy {from_policy:.2e}"
    );
    assert!(other_mu > 100.0 * worst.max(1e-8), "{other_mu}");
    assert!(from_init > 1e-3 && from_policy > 1e-3);

    // The outputs load in warp and transformers.
    for which in ["policy", "ema"] {
        let dir = out.join("final").join(which);
        ok("warp-inspect", &[s(&dir)], tmp.path());
        let d = logits_warp_vs_transformers(&dir);
        eprintln!("final/{which}: max |warp − transformers| logits = {d:.2e}");
        assert!(d < 1e-4, "{which}: {d}");
    }
    let csv = tmp.path().join("eval.csv");
    ok(
        "warp",
        &[
            "eval",
            s(&out.join("final/policy")),
            "--sft",
            s(&fixture("arith").join("model")),
            "--max-prompts",
            "8",
            "--samples",
            "1",
            "--threads",
            "1",
            "-o",
            s(&csv),
        ],
        tmp.path(),
    );
    let rows = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(rows.lines().count(), 3, "{rows}"); // header, the SFT model, the policy

    // Preempted: SIGTERM to the job's process group after step 3 (its checkpoint at step 2),
    // then resumed: the same result as the uninterrupted run, bit for bit.
    let out2 = tmp.path().join("run2");
    let o = launch(
        &[
            "train",
            s(&cfg),
            "-o",
            s(&out2),
            "--threads",
            "1",
            "-q",
            "--callback",
            s(&callback),
        ],
        &[("WARP_TRL_SIGTERM_AT_STEP", "3")],
    );
    assert!(!o.status.success(), "the run should have been killed");
    assert!(!out2.join("final").exists());
    assert!(out2
        .join("step-000002/trainer/trainer_state.json")
        .is_file());
    assert_eq!(metrics(&out2).len(), 3);
    let o = launch(&["resume", s(&out2), "--threads", "1", "-q"], &[]);
    assert!(o.status.success(), "resume failed:\n{}", text(&o).1);
    for which in ["policy", "ema"] {
        common::assert_same_tensors(
            &out.join("final").join(which),
            &out2.join("final").join(which),
        );
    }
    let strip = |v: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        v.into_iter()
            .map(|mut r| {
                let o = r.as_object_mut().unwrap();
                o.remove("samples_per_s");
                o.remove("trl");
                r
            })
            .collect()
    };
    assert_eq!(strip(metrics(&out)), strip(metrics(&out2)));
    // A finished run is not resumed again.
    let o = python(&["resume", s(&out2), "-q"], "");
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("complete"), "{}", text(&o).1);
}

#[test]
// long fn: the awkward-string cases are a table, listed in the test.
fn rewards_match_warp() {
    // verify:arith, re-implemented in Python, against warp's on awkward strings.
    let cases: Vec<(String, String)> = [
        ("37+58=", "95"),
        ("37+58=", " 95 "),
        ("37+58=", "96"),
        ("37+58=", "095"),
        ("37+58=", ""),
        ("Q: 3+4=", "7"),
        ("3*4=", "12"),
        ("+4=", "4"),
        ("3+4= \t", "7"),
        ("3+4=\u{1c}", "7"),
        ("3+4=", "7\u{1c}"),
        ("3+4=", "\u{2003}7\u{3000}"),
        ("3+4=", "\u{ff17}"),
        ("1234567+1=", "1234568"),
        ("123456+1=", "123457"),
        ("1+2+3=", "6"),
        ("x1+2=", "3"),
        ("1+2==", "3"),
        ("\u{0661}+1=", "2"),
        ("hello", "95"),
    ]
    .iter()
    .map(|(p, c)| (p.to_string(), c.to_string()))
    .collect();
    let input: String = cases
        .iter()
        .map(|(p, c)| serde_json::json!({"prompt": p, "completion": c}).to_string() + "\n")
        .collect();
    let o = python(&["score", "verify:arith"], &input);
    assert!(o.status.success(), "{}", text(&o).1);
    let theirs: Vec<f64> = text(&o).0.lines().map(|l| l.parse().unwrap()).collect();
    let ours: Vec<f64> = cases
        .iter()
        .map(|(p, c)| warp::tasks::arith::arith_reward(p, c))
        .collect();
    assert_eq!(ours, theirs, "verify:arith differs on {cases:?}");
    assert!(ours.contains(&1.0) && ours.contains(&0.0));

    // model:PATH through transformers (python) against warp's RewardModel on a random reward
    // model made by tests/ref/hf_seqcls.py.
    let tmp = tempfile::tempdir().unwrap();
    let rm = tmp.path().join("rm");
    std::fs::create_dir(&rm).unwrap();
    let pairs: Vec<(String, String)> = [
        ("Q: 12+7=? A:", " 19"),
        ("Q: 1+1=? A:", ""),
        ("Q: 3*4=? A:", "12<pad>"),
        ("", "1"),
        ("Q: 9-3=? A:", " 6 = 9 - 3"),
        ("Q: 0+0=? A:", " 0"),
    ]
    .iter()
    .map(|(p, c)| (p.to_string(), c.to_string()))
    .collect();
    common::torch_ref(
        "hf_seqcls.py",
        &[&rm, &repo_root().join("fixtures/tiny-llama-bf16")],
        &serde_json::json!({"seed": 3, "pairs": pairs}),
    );
    let input: String = pairs
        .iter()
        .map(|(p, c)| serde_json::json!({"prompt": p, "completion": c}).to_string() + "\n")
        .collect();
    let spec = format!("model:{}", rm.display());
    let o = python(&["score", &spec], &input);
    assert!(o.status.success(), "{}", text(&o).1);
    let theirs: Vec<f64> = text(&o).0.lines().map(|l| l.parse().unwrap()).collect();
    let ours = warp::rl::reward_model::RewardModel::load(&rm, Device::Cpu, 64)
        .unwrap()
        .rewards(&pairs)
        .unwrap();
    let d = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    eprintln!("model: max |warp − trl_backend.py| = {d:.2e} over {ours:?}");
    assert_eq!(ours.len(), theirs.len());
    assert!(d < 1e-4, "{ours:?} vs {theirs:?}");
    assert!(
        ours.iter().any(|&r| (r - ours[0]).abs() > 0.05),
        "degenerate model"
    );

    // cmd:PROGRAM: the protocol, and every failure named.
    let script = |name: &str, body: &str| -> String {
        let p = tmp.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        format!("cmd:{}", p.display())
    };
    let three: String = (0..3)
        .map(|i| {
            serde_json::json!({"prompt": format!("{i}+0="), "completion": "x".repeat(i)})
                .to_string()
                + "\n"
        })
        .collect();
    let lens = script(
        "lens.sh",
        r#"python3 -c 'import json,sys
for l in sys.stdin: print(len(json.loads(l)["completion"]) + 0.5)'"#,
    );
    let o = python(&["score", &lens], &three);
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(
        text(&o).0.lines().collect::<Vec<_>>(),
        ["0.5", "1.5", "2.5"]
    );
    for (name, body, want) in [
        (
            "crash.sh",
            "cat >/dev/null; echo boom >&2; exit 3",
            "exited with status 3; its stderr ends with: boom",
        ),
        (
            "garbage.sh",
            "cat >/dev/null; echo 1; echo one; echo 2",
            "line 2 of its output, \"one\", is not a number",
        ),
        (
            "under.sh",
            "cat >/dev/null; echo 1",
            "printed 1 lines for 3 pairs",
        ),
        (
            "nan.sh",
            "cat >/dev/null; echo 1; echo NaN; echo 2",
            "is not a finite number",
        ),
        (
            "underscore.sh",
            "cat >/dev/null; echo 1; echo 1_0; echo 2",
            "is not a number",
        ),
        (
            "slow.sh",
            "sleep 30",
            "did not finish within the timeout of 1 s",
        ),
    ] {
        let spec = script(name, body);
        let t = Instant::now();
        let o = python(&["score", &spec, "--timeout", "1"], &three);
        let err = text(&o).1;
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains(&spec) && err.contains(want), "{name}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{name}: not one line: {err}");
        assert!(t.elapsed().as_secs() < 20, "{name} took {:?}", t.elapsed());
    }
    let o = python(&["score", "cmd:/nonexistent/scorer"], &three);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("not found"), "{}", text(&o).1);
}

#[test]
// long fn: a table of bad settings checked alike, then the failing rewards on the same set-up.
fn bad_settings_and_failing_rewards_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let bad_prompts = tmp.path().join("bad.jsonl");
    std::fs::write(&bad_prompts, "{\"prompt\": \"1+2=\"}\n{\"prompt\": 3}\n").unwrap();
    // Checked before anything is loaded: exit 2, one line naming the field or file, no folder.
    for (i, (extra, want)) in [
        (serde_json::json!({"betta": 0.1}), "unknown field 'betta'"),
        (
            serde_json::json!({"mu": 2.0}),
            "field 'mu' must be in (0, 1]",
        ),
        (serde_json::json!({"baseline": "none"}), "field 'baseline'"),
        (
            serde_json::json!({"updates_per_batch": 65}),
            "field 'updates_per_batch'",
        ),
        (serde_json::json!({"clip_eps": 1.0}), "field 'clip_eps'"),
        (serde_json::json!({"lora": 0}), "field 'lora'"),
        (serde_json::json!({"lora_alpha": 0.0}), "field 'lora_alpha'"),
        (serde_json::json!({"baseline": "grpo", "n": 1}), "field 'n'"),
        (serde_json::json!({"n": 1}), "field 'n'"),
        (
            serde_json::json!({"steps": "ten"}),
            "field 'steps' is not an integer",
        ),
        (serde_json::json!({"beta": 0.0}), "field 'beta'"),
        (
            serde_json::json!({"prompts": s(&bad_prompts)}),
            "bad.jsonl: line 2: \"prompt\" is not a string",
        ),
        (
            serde_json::json!({"model": s(&tmp.path().join("nope"))}),
            "no such folder",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let cfg = config(&tmp.path().join(format!("c{i}")), extra);
        let out = tmp.path().join(format!("out{i}"));
        let o = python(&["train", s(&cfg), "-o", s(&out)], "");
        let err = text(&o).1;
        assert_eq!(o.status.code(), Some(2), "{want}: {err}");
        assert!(err.contains(want), "wanted '{want}' in: {err}");
        assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
        assert!(!out.exists(), "{want}: {} was created", out.display());
    }
    // A reward program that does not exist: refused before the run folder is made.
    let cfg = config(
        &tmp.path().join("c-missing"),
        serde_json::json!({"reward": "cmd:/nonexistent/scorer"}),
    );
    let out = tmp.path().join("out-missing");
    let o = python(
        &["train", s(&cfg), "-o", s(&out), "--threads", "1", "-q"],
        "",
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).1.contains("cmd:/nonexistent/scorer") && text(&o).1.contains("not found"),
        "{}",
        text(&o).1
    );
    assert!(!out.exists());
    // A reward program that crashes at the first step: the error names it, no final/.
    let crash = tmp.path().join("crash.sh");
    std::fs::write(
        &crash,
        "#!/bin/sh\ncat >/dev/null\necho 'scorer exploded' >&2\nexit 4\n",
    )
    .unwrap();
    std::fs::set_permissions(&crash, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cfg = config(
        &tmp.path().join("c-crash"),
        serde_json::json!({"reward": format!("cmd:{}", crash.display())}),
    );
    let out = tmp.path().join("out-crash");
    let o = python(
        &["train", s(&cfg), "-o", s(&out), "--threads", "1", "-q"],
        "",
    );
    let err = text(&o).1;
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
    assert!(
        err.contains(s(&crash))
            && err.contains("exited with status 4")
            && err.contains("scorer exploded"),
        "{err}"
    );
    assert!(out.join("run.json").is_file() && !out.join("final").exists());
    // A non-empty run folder is refused (use resume).
    let o = python(
        &[
            "train",
            s(&config(&tmp.path().join("c-ne"), serde_json::json!({}))),
            "-o",
            s(&out),
        ],
        "",
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("not empty"), "{}", text(&o).1);
}

#[test]
fn two_processes_keep_the_ema_anchor() {
    // Two CPU processes (data parallel over gloo, each generating and scoring half of every
    // step's completions): the reference model still follows the EMA of the policy iterates.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        tmp.path(),
        serde_json::json!({"steps": 3, "save_every": 3, "seed": 7}),
    );
    let out = tmp.path().join("run");
    let steps_dir = tmp.path().join("iterates");
    let callback = repo_root().join("tests/ref/trl_policy_steps.py");
    // accelerate's multi-process launcher (torchrun) with every process on the CPU.
    let acc = tmp.path().join("two-cpus.yaml");
    std::fs::write(
        &acc,
        "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nuse_cpu: true\n\
         num_machines: 1\nnum_processes: 2\nmachine_rank: 0\nmixed_precision: 'no'\n\
         dynamo_backend: 'NO'\nrdzv_backend: static\nsame_network: true\n",
    )
    .unwrap();
    let o = launch_with(
        &["--config_file", s(&acc)],
        &[
            "train",
            s(&cfg),
            "-o",
            s(&out),
            "--threads",
            "1",
            "-q",
            "--callback",
            s(&callback),
        ],
        &[("WARP_TRL_POLICY_STEPS", s(&steps_dir))],
    );
    assert!(o.status.success(), "{}", text(&o).1);
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["world_size"], 2);
    let it: Vec<_> = (0..=3)
        .map(|t| tensors(&steps_dir.join(format!("policy-{t}.safetensors"))))
        .collect();
    for t in 1..=3 {
        assert!(
            max_diff(&it[t], &it[t - 1]) > 1e-4,
            "step {t} left the policy unchanged"
        );
    }
    let d = max_diff(&tensors(&out.join("final/ema")), &ema_of(&it, 0.3));
    eprintln!("2 processes: final/ema vs EMA recomputed in f64: {d:.2e}");
    assert!(d < 1e-6, "{d}");
    assert_eq!(max_diff(&tensors(&out.join("final/policy")), &it[3]), 0.0);
    assert_eq!(metrics(&out).len(), 3);
}

#[test]
fn messages_prompts_use_the_chat_template() {
    let tmp = tempfile::tempdir().unwrap();
    let msgs = tmp.path().join("chat.jsonl");
    let mut lines = String::from("\n");
    for (a, b) in [(3, 4), (12, 30), (7, 7), (45, 9)] {
        lines += &serde_json::json!({"messages": [
            {"role": "system", "content": "Q"},
            {"role": "user", "content": format!("{a}+{b}=")}
        ]})
        .to_string();
        lines.push('\n');
    }
    std::fs::write(&msgs, lines).unwrap();
    // The built-in tokenizer has no chat template: the first messages line (line 2) is named.
    let cfg = config(
        &tmp.path().join("c1"),
        serde_json::json!({"prompts": s(&msgs)}),
    );
    let out = tmp.path().join("out1");
    let o = python(
        &["train", s(&cfg), "-o", s(&out), "--threads", "1", "-q"],
        "",
    );
    let err = text(&o).1;
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("chat.jsonl: line 2") && err.contains("chat template"),
        "{err}"
    );
    assert!(!out.exists());
    // A copy with a template that renders BOS and the user turns only: the policy sees
    // "<s>a+b=" as in training, and the verifier scores the last user message, so the SFT model
    // is mostly right (and with a template that left BOS out, this check fails: reward 0).
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for e in std::fs::read_dir(fixture("arith").join("model")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), model.join(e.file_name())).unwrap();
    }
    let tc = model.join("tokenizer_config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tc).unwrap()).unwrap();
    v["chat_template"] = serde_json::json!(
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% endif %}\
         {% endfor %}"
    );
    std::fs::write(&tc, v.to_string()).unwrap();
    // --chat-template none (as warp writes it into the config) refuses conversations even though
    // the model has a template.
    let cfg = config(
        &tmp.path().join("c-none"),
        serde_json::json!({"prompts": s(&msgs), "model": s(&model), "chat_template": "none"}),
    );
    let o = python(
        &[
            "train",
            s(&cfg),
            "-o",
            s(&tmp.path().join("out-none")),
            "-q",
        ],
        "",
    );
    let err = text(&o).1;
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("line 2") && err.contains("--chat-template none"),
        "{err}"
    );
    let cfg = config(
        &tmp.path().join("c2"),
        serde_json::json!({"prompts": s(&msgs), "model": s(&model), "steps": 2, "save_every": 2}),
    );
    let out = tmp.path().join("out2");
    let o = python(
        &["train", s(&cfg), "-o", s(&out), "--threads", "1", "-q"],
        "",
    );
    assert!(o.status.success(), "{}", text(&o).1);
    let m = metrics(&out);
    let mean = m
        .iter()
        .map(|r| r["reward_mean"].as_f64().unwrap())
        .sum::<f64>()
        / 2.0;
    assert!(
        mean > 0.3,
        "the verifier did not read the user turns: {m:?}"
    );
    assert!(out.join("final/policy/model.safetensors").is_file());
}

/// `warp` with the trl backend: WARP_TRL_PYTHON (from scripts/setup-trl.sh) is inherited, so
/// warp finds the `accelerate` beside it.
#[test]
// long fn: one end-to-end run of each command, sharing the TRL environment setup.
fn warp_rl_and_warp_run_with_the_trl_backend() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(
        std::env::var_os("WARP_TRL_PYTHON").is_some(),
        "source scripts/setup-trl.sh"
    );
    // warp rl --backend trl on the built-in task (embedded files, embedded entry point).
    let out = tmp.path().join("rl");
    let args = [
        "rl",
        "--backend",
        "trl",
        "-o",
        s(&out),
        "--steps",
        "2",
        "--batch",
        "2",
        "-n",
        "2",
        "--save-every",
        "1",
        "--device",
        "cpu",
        "--threads",
        "1",
        "-q",
    ];
    let stdout = ok("warp", &args, tmp.path());
    assert_eq!(stdout.trim(), s(&out.join("final")));
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["backend"], "trl");
    assert_eq!(run["config"]["backend"], "trl");
    assert!(run["config"]["model"].as_str().unwrap().ends_with("model"));
    // The run folder's lock (issue 22) stays with the folder.
    assert_eq!(
        common::entries(&out),
        [
            ".warp-run.lock",
            "final",
            "metrics.jsonl",
            "run.json",
            "step-000001",
            "step-000002"
        ]
    );
    // --resume of a complete trl run goes to TRL, which refuses it.
    let r = common::run("warp", &["rl", "--resume", s(&out), "-q"], tmp.path());
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("complete"), "{}", r.stderr);
    // What TRL cannot do is refused by warp before anything starts, naming the setting.
    let bad = tmp.path().join("bad");
    for (flag, value) in [
        ("--baseline", "none"),
        ("--beta", "0"),
        ("--trl-args", "[1]"),
    ] {
        let r = common::run(
            "warp",
            &["rl", "--backend", "trl", "-o", s(&bad), flag, value, "-q"],
            tmp.path(),
        );
        assert_eq!(r.code, 2, "{flag}: {}", r.stderr);
        assert!(r.stderr.contains(flag), "{flag}: {}", r.stderr);
        assert!(!bad.exists());
    }

    // The pipeline with trainer = "trl": RL runs (EMA-anchored and init-anchored) through TRL,
    // then warp's merges, evaluation and plot on their outputs.
    let cfg = tmp.path().join("trl.toml");
    std::fs::write(
        &cfg,
        common::tiny_pipeline(
            &[
                ("trainer", r#""trl""#),
                ("iterations", "1"),
                ("devices", r#"["cpu"]"#),
                ("jobs", "2"),
            ],
            "",
        ),
    )
    .unwrap();
    let run_dir = tmp.path().join("pipeline");
    let t = Instant::now();
    let table = ok("warp", &["run", s(&cfg), "-o", s(&run_dir)], tmp.path());
    eprintln!(
        "warp run with trainer = trl: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert!(table.contains("liti it1"), "{table}");
    for run in ["iter-1/run-1", "iter-1/run-2", "init-anchor/run-1"] {
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(run_dir.join(run).join("run.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(v["backend"], "trl", "{run}");
    }
    // TRL keeps no EMA with the init anchor: policy folders only.
    assert_eq!(
        common::entries(&run_dir.join("init-anchor/run-1/final")),
        ["policy"]
    );
    let csv = std::fs::read_to_string(run_dir.join("eval.csv")).unwrap();
    let kinds: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap())
        .collect();
    let count = |k: &str| kinds.iter().filter(|&&x| x == k).count();
    assert_eq!(
        (
            count("sft"),
            count("policy"),
            count("ema"),
            count("anchor_init")
        ),
        (1, 2, 2, 2),
        "{csv}"
    );
    assert_eq!(
        (count("liti"), count("slerp"), count("lerp")),
        (3, 1, 1),
        "{csv}"
    );
    let svg = std::fs::read_to_string(run_dir.join("front.svg")).unwrap();
    assert!(svg.contains("<svg"));
}

/// The start-up check on TRL's reference model (the EMA): a reference held in bf16 (here loaded
/// so through `model_init_kwargs`) is refused before anything is written, naming a parameter
/// and its dtype; the same run with the f32 reference starts and completes.
#[test]
fn a_reference_model_not_in_f32_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        &tmp.path().join("c"),
        serde_json::json!({"steps": 1, "save_every": 1}),
    );
    // RLOOTrainer and GRPOTrainer build their reference alike: both are checked.
    let grpo = config(
        &tmp.path().join("c-grpo"),
        serde_json::json!({"steps": 1, "save_every": 1, "baseline": "grpo"}),
    );
    for (name, cfg) in [("rloo", &cfg), ("grpo", &grpo)] {
        let bf16 = tmp.path().join(format!("bf16-{name}"));
        let o = python(
            &[
                "train",
                s(cfg),
                "-o",
                s(&bf16),
                "--threads",
                "1",
                "-q",
                "--trl-args",
                r#"{"model_init_kwargs": {"dtype": "bfloat16"}}"#,
            ],
            "",
        );
        let err = text(&o).1;
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains("reference model (the EMA)") && err.contains("torch.bfloat16"),
            "{name}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
        assert!(!bf16.join("run.json").exists());
    }
    let f32 = tmp.path().join("f32");
    let o = python(
        &[
            "train",
            s(&cfg),
            "-o",
            s(&f32),
            "--threads",
            "1",
            "-q",
            "--trl-args",
            r#"{"model_init_kwargs": {"dtype": "float32"}}"#,
        ],
        "",
    );
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(f32.join("final/ema/model.safetensors").is_file());
}

/// GRPOTrainer (`baseline` grpo, K = 2 updates per batch): TRL's reference model is still WARP's
/// EMA, updated after every optimizer step (K per batch); the step folders and metrics count
/// batches as warp-rl does; a run killed in the middle of a batch and resumed ends bit for bit as
/// the uninterrupted one.
#[test]
// long fn: one GRPO run checked for its layout, its EMA and its resume in turn.
fn grpo_keeps_the_ema_anchor_per_update_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let k = 2usize;
    let cfg = config(
        tmp.path(),
        serde_json::json!({"baseline": "grpo", "updates_per_batch": k, "clip_eps": 0.2,
                           "steps": 3, "save_every": 2}),
    );
    let out = tmp.path().join("run");
    let steps_dir = tmp.path().join("iterates");
    let callback = repo_root().join("tests/ref/trl_policy_steps.py");
    let train = |out: &Path, env: &[(&str, &str)]| {
        launch(
            &[
                "train",
                s(&cfg),
                "-o",
                s(out),
                "--threads",
                "1",
                "-q",
                "--callback",
                s(&callback),
            ],
            env,
        )
    };
    let o = train(&out, &[("WARP_TRL_POLICY_STEPS", s(&steps_dir))]);
    assert!(o.status.success(), "{}", text(&o).1);
    // The same artefacts as the RLOO path (ema_anchor_layout_loading_and_resume), per batch.
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["config"]["baseline"], "grpo");
    let mut names = common::entries(&out);
    names.sort();
    assert_eq!(
        names,
        [
            "final",
            "metrics.jsonl",
            "run.json",
            "step-000002",
            "step-000003"
        ]
    );
    assert_eq!(
        common::entries(&out.join("step-000003")),
        ["ema", "policy", "trainer"]
    );
    let card = std::fs::read_to_string(out.join("final/policy/README.md")).unwrap();
    assert!(card.contains("GRPOTrainer"), "{card}");
    let m = metrics(&out);
    assert_eq!(m.len(), 3);
    for (i, row) in m.iter().enumerate() {
        assert_eq!(row["step"], i as u64 + 1);
        for key in [
            "reward_mean",
            "reward_std",
            "kl_anchor",
            "entropy",
            "completion_len",
            "lr",
            "clip_frac",
            "grad_norm",
        ] {
            assert!(
                row[key].as_f64().is_some_and(f64::is_finite),
                "{key} in {row}"
            );
        }
        // warp's warm-up counts optimizer updates: batch s starts with update (s − 1)·K + 1.
        let update = (i * k + 1) as f64;
        assert_eq!(row["lr"], 1e-3 * (update / 2.0).min(1.0), "{row}");
        // TRL's dr_grpo loss is warp's divided by max_new_tokens (8): the logged norm is
        // scaled back.
        let trl = row["trl"]["grad_norm"].as_f64().unwrap();
        assert!((row["grad_norm"].as_f64().unwrap() - 8.0 * trl).abs() < 1e-9 * (1.0 + trl));
    }

    // The iterates after every optimizer step (3 batches × K updates).
    let it: Vec<_> = (0..=3 * k)
        .map(|t| tensors(&steps_dir.join(format!("policy-{t}.safetensors"))))
        .collect();
    assert_eq!(
        max_diff(&it[0], &tensors(&fixture("arith").join("model"))),
        0.0
    );
    for t in 1..=3 * k {
        let moved = max_diff(&it[t], &it[t - 1]);
        assert!(
            moved > 1e-4,
            "update {t} left the policy unchanged ({moved})"
        );
    }
    let mu = 0.3;
    let mut worst = 0.0f64;
    for (batch, dir) in [(2, "step-000002"), (3, "step-000003"), (3, "final")] {
        let want = ema_of(&it[..=batch * k], mu);
        let d = max_diff(&tensors(&out.join(dir).join("ema")), &want);
        eprintln!("grpo {dir}/ema: max |TRL − EMA of every update, f64| = {d:.2e}");
        assert!(
            d < 1e-6,
            "{dir}/ema is not the EMA of the policy iterates: {d}"
        );
        worst = worst.max(d);
        assert_eq!(
            max_diff(&tensors(&out.join(dir).join("policy")), &it[batch * k]),
            0.0
        );
    }
    // Negative control: the EMA of the batch-end policies only (one EMA update per batch) is
    // far from it.
    let per_batch: Vec<_> = (0..=3).map(|b| it[b * k].clone()).collect();
    let other = max_diff(&tensors(&out.join("final/ema")), &ema_of(&per_batch, mu));
    eprintln!("grpo final/ema vs one EMA update per batch: {other:.2e}");
    assert!(other > 100.0 * worst.max(1e-8), "{other}");

    // Killed in batch 3 (at its first update, after the checkpoint of batch 2), resumed.
    let out2 = tmp.path().join("run2");
    let o = train(&out2, &[("WARP_TRL_SIGTERM_AT_STEP", "5")]);
    assert!(!o.status.success(), "the run should have been killed");
    assert!(out2
        .join("step-000002/trainer/trainer_state.json")
        .is_file());
    assert!(!out2.join("final").exists());
    let o = launch(&["resume", s(&out2), "--threads", "1", "-q"], &[]);
    assert!(o.status.success(), "resume failed:\n{}", text(&o).1);
    for which in ["policy", "ema"] {
        common::assert_same_tensors(
            &out.join("final").join(which),
            &out2.join("final").join(which),
        );
    }
    assert_eq!(metrics(&out2).len(), 3);
}

/// `warp rl --backend trl --baseline dr-grpo` writes the artefacts of the RLOO path (same
/// folders, same tensor names), and `warp run` with `trainer = "trl"` and `baseline = "grpo"`
/// completes, every RL run of it on GRPOTrainer.
#[test]
// long fn: one `warp rl` and one `warp run`, sharing the TRL environment setup.
fn warp_rl_and_warp_run_on_grpotrainer() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(
        std::env::var_os("WARP_TRL_PYTHON").is_some(),
        "source scripts/setup-trl.sh"
    );
    let rl = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "rl",
            "--backend",
            "trl",
            "-o",
            s(out),
            "--steps",
            "2",
            "--batch",
            "2",
            "-n",
            "2",
            "--save-every",
            "1",
            "--device",
            "cpu",
            "--threads",
            "1",
            "-q",
        ];
        args.extend_from_slice(extra);
        ok("warp", &args, tmp.path())
    };
    let rloo = tmp.path().join("rloo");
    let grpo = tmp.path().join("grpo");
    rl(&rloo, &[]);
    let stdout = rl(
        &grpo,
        &["--baseline", "dr-grpo", "--updates-per-batch", "2"],
    );
    assert_eq!(stdout.trim(), s(&grpo.join("final")));
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(grpo.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["config"]["baseline"], "dr-grpo");
    assert_eq!(run["config"]["updates_per_batch"], 2);
    assert_eq!(common::entries(&grpo), common::entries(&rloo));
    for dir in ["step-000001", "step-000002", "final"] {
        assert_eq!(
            common::entries(&grpo.join(dir)),
            common::entries(&rloo.join(dir)),
            "{dir}"
        );
        for which in ["policy", "ema"] {
            let names = |root: &Path| -> Vec<String> {
                tensors(&root.join(dir).join(which))
                    .into_iter()
                    .map(|(n, _)| n)
                    .collect()
            };
            // (Their values may coincide here: with 2 prompts × 2 samples every group often has
            // one reward, so neither trainer moves; grpo_keeps_… checks that GRPO trains.)
            assert_eq!(names(&grpo), names(&rloo), "{dir}/{which}");
        }
    }
    assert_eq!(metrics(&grpo).len(), 2);
    assert!(metrics(&grpo).iter().all(|m| m["clip_frac"].is_f64()));

    // The pipeline with trainer = "trl" and GRPO, two updates per batch.
    let cfg = tmp.path().join("trl-grpo.toml");
    std::fs::write(
        &cfg,
        common::tiny_pipeline(
            &[
                ("trainer", r#""trl""#),
                ("iterations", "1"),
                ("devices", r#"["cpu"]"#),
                ("jobs", "2"),
            ],
            "[rl]\nbaseline = \"grpo\"\nupdates_per_batch = 2\n",
        ),
    )
    .unwrap();
    let run_dir = tmp.path().join("pipeline");
    let table = ok("warp", &["run", s(&cfg), "-o", s(&run_dir)], tmp.path());
    assert!(table.contains("liti it1"), "{table}");
    for run in ["iter-1/run-1", "iter-1/run-2", "init-anchor/run-1"] {
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(run_dir.join(run).join("run.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(v["backend"], "trl", "{run}");
        assert_eq!(v["config"]["baseline"], "grpo", "{run}");
        let card =
            std::fs::read_to_string(run_dir.join(run).join("final/policy/README.md")).unwrap();
        assert!(card.contains("GRPOTrainer"), "{run}: {card}");
    }
    assert!(run_dir.join("eval.csv").is_file());
    assert!(run_dir.join("front.svg").is_file());
}

/// The LoRA factors of adapter `name` ("default": the policy, "ref": TRL's reference) in a full
/// PEFT state dict, under PEFT's file names (the adapter name dropped), sorted.
fn adapter_of(state: &[(String, Vec<f64>)], name: &str) -> Vec<(String, Vec<f64>)> {
    let tag = format!(".{name}.");
    let mut v: Vec<_> = state
        .iter()
        .filter(|(n, _)| n.contains(&tag))
        .map(|(n, x)| (n.replace(&tag, "."), x.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// TRL with a PEFT policy (`lora` 4): TRL's "ref" adapter is WARP's EMA of the adapter
/// parameters. Checked: the run writes PEFT adapters; the base stays frozen; the ema adapters
/// equal the EMA of the policy adapter's trajectory recomputed in f64; TRL's reference
/// log-probabilities equal those of the base with the saved EMA adapter folded in by hand
/// (tests/ref/lora_ref_logps.py, no PEFT) and not those of the policy adapter; a run killed and
/// resumed ends bit for bit as the uninterrupted one.
#[test]
// long fn: one LoRA run checked for its adapters, its EMA, its reference and its resume in turn.
fn lora_keeps_the_ema_adapter_as_trls_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        tmp.path(),
        serde_json::json!({"baseline": "grpo", "lora": 4, "lora_alpha": 8.0, "steps": 3,
                           "save_every": 1, "lr": 1e-2}),
    );
    let out = tmp.path().join("run");
    let steps_dir = tmp.path().join("iterates");
    let ref_dir = tmp.path().join("ref-logps");
    let callback = repo_root().join("tests/ref/trl_policy_steps.py");
    let train = |out: &Path, env: &[(&str, &str)]| {
        launch(
            &[
                "train",
                s(&cfg),
                "-o",
                s(out),
                "--threads",
                "1",
                "-q",
                "--callback",
                s(&callback),
            ],
            env,
        )
    };
    let o = train(
        &out,
        &[
            ("WARP_TRL_POLICY_STEPS", s(&steps_dir)),
            ("WARP_TRL_REF_LOGPS", s(&ref_dir)),
        ],
    );
    assert!(o.status.success(), "{}", text(&o).1);
    for dir in ["step-000001", "step-000003", "final"] {
        for which in ["policy", "ema"] {
            let d = out.join(dir).join(which);
            let c: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(d.join("adapter_config.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(
                (c["peft_type"].as_str(), c["r"].as_u64()),
                (Some("LORA"), Some(4))
            );
            assert_eq!(c["lora_alpha"], 8.0);
            assert_eq!(c["base_model_name_or_path"], cfg_model());
            assert!(d.join("adapter_model.safetensors").is_file());
            assert!(!d.join("model.safetensors").exists());
        }
    }
    let it: Vec<_> = (0..=3)
        .map(|t| tensors(&steps_dir.join(format!("policy-{t}.safetensors"))))
        .collect();
    // The base is frozen: every non-adapter tensor of the last iterate is the first one's.
    let base = |st: &[(String, Vec<f64>)]| -> Vec<(String, Vec<f64>)> {
        st.iter()
            .filter(|(n, _)| !n.contains("lora_"))
            .cloned()
            .collect()
    };
    assert_eq!(max_diff(&base(&it[3]), &base(&it[0])), 0.0);
    let adapters: Vec<_> = it.iter().map(|st| adapter_of(st, "default")).collect();
    assert_eq!(
        adapters[0].len(),
        4 * 7 * 2,
        "4 layers × 7 projections × (A, B)"
    );
    for t in 1..=3 {
        assert!(max_diff(&adapters[t], &adapters[t - 1]) > 1e-4, "step {t}");
    }
    let file = |dir: &str, which: &str| {
        let mut v = tensors(&out.join(dir).join(which).join("adapter_model.safetensors"));
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let mu = 0.3;
    let mut worst = 0.0f64;
    for (t, dir) in [(1, "step-000001"), (2, "step-000002"), (3, "final")] {
        let d = max_diff(&file(dir, "ema"), &ema_of(&adapters[..=t], mu));
        eprintln!("lora {dir}/ema: max |TRL ref adapter − EMA of the adapters, f64| = {d:.2e}");
        assert!(d < 1e-6, "{dir}: {d}");
        worst = worst.max(d);
        assert_eq!(max_diff(&file(dir, "policy"), &adapters[t]), 0.0, "{dir}");
    }
    let ema = file("final", "ema");
    let (vs_policy, vs_init) = (max_diff(&ema, &adapters[3]), max_diff(&ema, &adapters[0]));
    eprintln!("lora final/ema vs policy {vs_policy:.2e}, vs init adapter {vs_init:.2e}");
    assert!(vs_policy > 100.0 * worst.max(1e-8) && vs_init > 100.0 * worst.max(1e-8));

    // TRL's reference log-probs at the generation of step t + 1 are those of the EMA after t
    // updates (folded in by hand), not of the policy adapter.
    let model = fixture("arith").join("model");
    for t in [1, 2] {
        let record = ref_dir.join(format!("ref-{t}.safetensors"));
        let dist = |which: &str| -> (f64, usize) {
            let adapter = out.join(format!("step-{t:06}")).join(which);
            let v = common::torch_ref(
                "lora_ref_logps.py",
                &[&model, &adapter, &record],
                &serde_json::json!({"temperature": 0.9}),
            );
            let rows = |k: &str| -> Vec<Vec<f64>> { serde_json::from_value(v[k].clone()).unwrap() };
            let (ours, trl, mask) = (rows("ours"), rows("trl"), rows("mask"));
            let mut d = (0.0f64, 0usize);
            for ((o, r), m) in ours.iter().zip(&trl).zip(&mask) {
                for ((a, b), keep) in o.iter().zip(r).zip(m) {
                    if *keep > 0.5 {
                        d = (d.0.max((a - b).abs()), d.1 + 1);
                    }
                }
            }
            d
        };
        let (d_ema, n) = dist("ema");
        let (d_policy, _) = dist("policy");
        eprintln!(
            "ref log-probs at step {}: max |TRL − base+EMA adapter| = {d_ema:.2e} over {n} \
             tokens; vs base+policy adapter {d_policy:.2e}",
            t + 1
        );
        assert!(n > 0 && d_ema < 1e-4, "{d_ema}");
        assert!(d_policy > 100.0 * d_ema.max(1e-7), "{d_policy}");
    }

    // Killed after step 2 (its checkpoint written), resumed: the same adapters, bit for bit.
    let out2 = tmp.path().join("run2");
    let o = train(&out2, &[("WARP_TRL_SIGTERM_AT_STEP", "2")]);
    assert!(!o.status.success(), "the run should have been killed");
    let o = launch(&["resume", s(&out2), "--threads", "1", "-q"], &[]);
    assert!(o.status.success(), "resume failed:\n{}", text(&o).1);
    for which in ["policy", "ema"] {
        let f = |root: &Path| {
            std::fs::read(
                root.join("final")
                    .join(which)
                    .join("adapter_model.safetensors"),
            )
            .unwrap()
        };
        assert!(f(&out) == f(&out2), "final/{which} differs after resume");
    }
}

fn cfg_model() -> String {
    s(&fixture("arith").join("model")).to_string()
}
