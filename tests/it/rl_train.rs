//! `warp-rl` (feature `rl`) on the built-in task: gradients reach every parameter, the EMA
//! follows its recurrence, runs are reproducible, a killed run resumes to the same result, the
//! checkpoints load in `transformers`, and bad input fails cleanly with the run folder intact.
#![cfg(feature = "rl")]

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, fails, fixture, ok};
use tch::{Device, Kind, Tensor};
use warp::io::Checkpoint;
use warp::rl::trainer::{advantages, Baseline, RlConfig, Trainer};
use warp::rl::CausalLm;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Small, fast settings on the built-in model (64 samples per step).
fn quick_args<'a>(out: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "-o",
        out,
        "--steps",
        steps,
        "--batch",
        "16",
        "-n",
        "4",
        "--lr",
        "3e-4",
        "--warmup",
        "1",
        "--threads",
        "1",
        "-q",
    ]
}

/// f32 tensors of a checkpoint as f64, by name.
fn tensors(dir: &Path) -> Vec<(String, Vec<f64>)> {
    let ck = Checkpoint::open(dir).unwrap();
    ck.tensors()
        .iter()
        .map(|t| {
            let b = ck.bytes(t, 0..t.nbytes);
            let v = b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect();
            (t.name.clone(), v)
        })
        .collect()
}

/// metrics.jsonl without the timing field.
fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            // Wall-clock figures differ between identical runs.
            let o = v.as_object_mut().unwrap();
            for k in [
                "samples_per_s",
                "generate_s",
                "reward_s",
                "train_s",
                "gen_tokens_per_s",
            ] {
                o.remove(k);
            }
            v
        })
        .collect()
}

fn same_file(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

#[test]
fn rloo_and_reinforce_advantages_match_closed_form() {
    let r = [1.0f32, 0.0, 0.5, 0.25, 2.0, 2.0, -1.0, 0.0];
    let t = Tensor::from_slice(&r);
    let n = 4;
    let got: Vec<f32> = Vec::try_from(advantages(&t, n, Baseline::Rloo)).unwrap();
    for (i, g) in got.iter().enumerate() {
        let grp = &r[i / n * n..i / n * n + n];
        let others = (grp.iter().sum::<f32>() - r[i]) / (n as f32 - 1.0);
        assert!((g - (r[i] - others)).abs() < 1e-6, "{i}: {g}");
    }
    let plain: Vec<f32> = Vec::try_from(advantages(&t, n, Baseline::None)).unwrap();
    assert_eq!(plain, r);
}

#[test]
fn every_parameter_receives_a_gradient() {
    let out = tempfile::tempdir().unwrap();
    let cfg = RlConfig {
        steps: 1,
        batch: 16,
        n: 4,
        device: warp::Device::Cpu,
        ..RlConfig::default()
    };
    let mut t = Trainer::new(cfg, &out.path().join("run"), &warp::progress::Silent).unwrap();
    let m = t.train_step(false).unwrap();
    // The SFT model is right ~2/3 of the time: rewards vary within groups, so the signal is
    // non-zero.
    assert!(m.reward_std > 0.0, "{m:?}");
    let vars = t.policy.vs.variables();
    let mut n = 0;
    for name in t.policy.parameter_names() {
        let g = vars[name].grad();
        assert!(g.defined(), "{name}: no gradient");
        let norm = g.norm().double_value(&[]);
        assert!(
            norm > 0.0 && norm.is_finite(),
            "{name}: gradient norm {norm}"
        );
        n += 1;
    }
    assert_eq!(n, vars.len());
}

#[test]
fn ema_follows_its_recurrence_and_stays_closer_to_init() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut args = quick_args(s(&out), "3");
    args.extend(["--save-every", "1", "--mu", "0.25"]);
    ok("warp-rl", &args, tmp.path());
    let init = tensors(&fixture("arith").join("model"));
    let mut prev_ema = init.clone();
    for step in 1..=3 {
        let dir = out.join(format!("step-{step:06}"));
        let pol = tensors(&dir.join("policy"));
        let ema = tensors(&dir.join("ema"));
        let mut d_pol = 0.0;
        let mut d_ema = 0.0;
        for (k, (name, e)) in ema.iter().enumerate() {
            assert_eq!(name, &pol[k].0);
            for (i, &ei) in e.iter().enumerate() {
                let want = 0.75 * prev_ema[k].1[i] + 0.25 * pol[k].1[i];
                assert!(
                    (ei - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "step {step} {name}[{i}]: ema {ei} want {want}"
                );
                d_pol += (pol[k].1[i] - init[k].1[i]).powi(2);
                d_ema += (ei - init[k].1[i]).powi(2);
            }
        }
        assert!(
            d_ema < d_pol,
            "step {step}: ‖ema−init‖² {d_ema} ≥ ‖policy−init‖² {d_pol}"
        );
        prev_ema = ema;
    }
}

#[test]
fn seeded_runs_are_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |name: &str, seed: &str| {
        let out = tmp.path().join(name);
        let mut args = quick_args(s(&out), "2");
        args.extend(["--seed", seed]);
        ok("warp-rl", &args, tmp.path());
        out
    };
    let a = run("a", "5");
    let b = run("b", "5");
    let c = run("c", "6");
    let st = "final/policy/model.safetensors";
    assert!(same_file(&a.join(st), &b.join(st)));
    assert!(same_file(
        &a.join("final/ema/model.safetensors"),
        &b.join("final/ema/model.safetensors")
    ));
    assert_eq!(metrics(&a), metrics(&b));
    assert!(!same_file(&a.join(st), &c.join(st)));
    assert_ne!(metrics(&a), metrics(&c));
}

#[test]
fn killed_run_resumes_to_the_same_result() {
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    let killed = tmp.path().join("killed");
    let extra = ["--save-every", "1"];
    let mut args = quick_args(s(&full), "5");
    args.extend(extra);
    ok("warp-rl", &args, tmp.path());

    let mut args = quick_args(s(&killed), "5");
    args.extend(extra);
    let mut child = Command::new(bin("warp-rl"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !killed.join("step-000002/trainer/state.json").exists() {
        assert!(Instant::now() < deadline, "no checkpoint after 300 s");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL: no clean-up of any kind
    child.wait().unwrap();
    assert!(!killed.join("final").exists());

    let r = common::run(
        "warp-rl",
        &["--resume", s(&killed), "--threads", "1", "-q"],
        tmp.path(),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    for f in [
        "final/policy/model.safetensors",
        "final/ema/model.safetensors",
    ] {
        assert!(
            same_file(&full.join(f), &killed.join(f)),
            "{f} differs after resume"
        );
    }
    assert_eq!(metrics(&full), metrics(&killed));
    // Settings are the run's own: changing one with --resume is refused.
    fails(
        "warp-rl",
        &["--resume", s(&killed), "--beta", "0.5"],
        tmp.path(),
        &["beta"],
    );
}

#[test]
fn checkpoint_loads_in_warp_and_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    ok("warp-rl", &quick_args(s(&out), "1"), tmp.path());
    let dir = out.join("final/policy");
    let model = CausalLm::load(&dir, Device::Cpu).unwrap();
    let ids: Vec<i64> = vec![1, 7, 8, 14, 5, 13, 17];
    let t = Tensor::from_slice(&ids).view([1, -1]);
    let mask = Tensor::ones([1, ids.len() as i64], (Kind::Int64, Device::Cpu));
    let pos = Tensor::arange(ids.len() as i64, (Kind::Int64, Device::Cpu)).view([1, -1]);
    let ours = model.forward(&t, &mask, &pos, None).unwrap();
    let req = serde_json::json!({ "input_ids": [ids] });
    let v = common::torch_ref("hf_logits.py", &[&dir], &req);
    let theirs: Vec<Vec<Vec<f32>>> = serde_json::from_value(v["logits"].clone()).unwrap();
    let theirs: Vec<f32> = theirs.into_iter().flatten().flatten().collect();
    let ours: Vec<f32> = Vec::try_from(ours.flatten(0, -1)).unwrap();
    assert_eq!(ours.len(), theirs.len());
    let diff = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-4, "max |ours − transformers| = {diff}");
    // The model card records the run.
    let card = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(
        card.contains("warp_recipe") && card.contains("\"beta\""),
        "{card}"
    );
}

/// A copy of the built-in model folder to break.
fn model_copy(tmp: &Path) -> PathBuf {
    let dst = tmp.join("model");
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(fixture("arith").join("model")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

#[test]
fn bad_models_and_prompts_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model_copy(tmp.path());
    let out = tmp.path().join("out");
    let o = s(&out);

    std::fs::rename(m.join("config.json"), tmp.path().join("config.json")).unwrap();
    fails("warp-rl", &[s(&m), "-o", o], tmp.path(), &["config.json"]);
    std::fs::rename(tmp.path().join("config.json"), m.join("config.json")).unwrap();

    let tok = std::fs::read(m.join("tokenizer.json")).unwrap();
    std::fs::write(m.join("tokenizer.json"), b"{not json").unwrap();
    fails(
        "warp-rl",
        &[s(&m), "-o", o],
        tmp.path(),
        &["tokenizer.json"],
    );
    std::fs::write(m.join("tokenizer.json"), tok).unwrap();

    let cfg = std::fs::read_to_string(m.join("config.json")).unwrap();
    let wider = cfg.replace("\"intermediate_size\": 352", "\"intermediate_size\": 360");
    assert_ne!(cfg, wider, "fixture config changed: update this test");
    std::fs::write(m.join("config.json"), wider).unwrap();
    fails(
        "warp-rl",
        &[s(&m), "-o", o],
        tmp.path(),
        &["mlp.gate_proj.weight", "360"],
    );
    std::fs::write(m.join("config.json"), cfg).unwrap();

    let empty = tmp.path().join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    fails(
        "warp-rl",
        &["-o", o, "--prompts", s(&empty)],
        tmp.path(),
        &["empty.jsonl", "no prompts"],
    );
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"1+2=\"}\n{\"text\": \"x\"}\n").unwrap();
    fails(
        "warp-rl",
        &["-o", o, "--prompts", s(&bad)],
        tmp.path(),
        &["bad.jsonl", "line 2"],
    );
    fails(
        "warp-rl",
        &["-o", o, "--baseline", "rloo", "-n", "1"],
        tmp.path(),
        &["n"],
    );
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none());
}

/// A `cmd:` reward that scores 1 per line for its first `good` calls, then misbehaves.
fn flaky_scorer(dir: &Path, good: u32, then: &str) -> String {
    let script = dir.join("scorer.sh");
    let count = dir.join("calls");
    std::fs::write(
        &script,
        format!(
            "n=$(cat {c} 2>/dev/null || echo 0); echo $((n+1)) > {c}\n\
             if [ \"$n\" -ge {good} ]; then {then}; fi\n\
             while read -r line; do echo 1; done\n",
            c = count.display()
        ),
    )
    .unwrap();
    format!("cmd:sh {}", script.display())
}

#[test]
fn failing_reward_commands_keep_the_last_checkpoint() {
    // Two scorer calls per checkpoint step (policy samples + EMA probe) with --save-every 1:
    // steps 1 and 2 complete, step 3 fails.
    for (then, want) in [
        ("echo boom >&2; exit 7", "boom"),
        ("while read -r l; do echo banana; done; exit 0", "banana"),
        ("sleep 30", "timeout"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("run");
        let reward = flaky_scorer(tmp.path(), 4, then);
        let mut args = quick_args(s(&out), "5");
        args.extend([
            "--save-every",
            "1",
            "--reward",
            &reward,
            "--reward-timeout",
            "2",
        ]);
        let started = Instant::now();
        fails("warp-rl", &args, tmp.path(), &[want]);
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "{then}: too slow"
        );
        for step in [1, 2] {
            let d = out.join(format!("step-{step:06}"));
            CausalLm::load(d.join("policy"), Device::Cpu).unwrap();
            assert!(d.join("trainer/state.json").is_file());
        }
        let names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert!(
            !names
                .iter()
                .any(|n| n.contains("000003") || n.contains("tmp")),
            "{names:?}"
        );
        assert!(!out.join("final").exists());
    }
}
