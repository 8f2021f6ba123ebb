//! `warp run` end to end on the built-in task with tiny settings (feature `rl`: the pipeline
//! runs warp-rl and warp eval): every step runs, the run folder is complete, re-running skips
//! what is done and resumes what was interrupted; and `warp-sft` reproduces the committed model.
#![cfg(feature = "rl")]

use crate::common;

use std::path::Path;

use common::{fails, ok, run};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn rows(csv: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(csv)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(String::from).collect())
        .collect()
}

#[test]
// long fn: one pipeline folder taken through complete, skip and resume in order.
fn warp_run_completes_skips_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("tiny.toml");
    std::fs::write(&cfg, common::tiny_pipeline(&[], "")).unwrap();
    let out = tmp.path().join("run");
    let table = ok("warp", &["run", s(&cfg), "-o", s(&out)], tmp.path());
    assert!(table.contains("liti it2"), "{table}");

    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("plan.json")).unwrap()).unwrap();
    let ids: Vec<&str> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| st["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "iter-1/run-1",
            "iter-1/run-2",
            "init-anchor/run-1",
            "init-anchor/run-2",
            "iter-1/slerp",
            "iter-1/lerp",
            "iter-2/run-1",
            "iter-2/run-2",
            "iter-2/slerp",
            "iter-2/lerp",
            "iter-2/front",
            "eval",
            "plot"
        ]
    );
    // Iteration 2 starts from iteration 1's LITI point at η = 0.5.
    let cfg2 = std::fs::read_to_string(out.join("iter-2/run-1/run.json")).unwrap();
    assert!(cfg2.contains("iter-1/slerp/eta-0.50"), "{cfg2}");

    let r = rows(&out.join("eval.csv"));
    let count = |kind: &str| r.iter().filter(|row| row[1] == kind).count();
    assert_eq!(count("sft"), 1);
    assert_eq!(count("liti"), 2 * 3);
    assert_eq!(count("slerp"), 2);
    assert_eq!(count("lerp"), 2);
    // One checkpoint (the last step) per run: policy + EMA, 2 runs × 2 iterations.
    assert_eq!(count("policy"), 4);
    assert_eq!(count("ema"), 4);
    assert_eq!(count("anchor_init"), 2);
    // Iteration 2's SLERP toward the SFT model (the paper's output front).
    assert_eq!(count("front"), 3);
    // Every sample of every row, and the settings (temperature: the RL runs').
    let samples = warp::stats::SampleTable::read_csv(&out.join("eval-samples.csv")).unwrap();
    assert_eq!(
        (samples.points, samples.prompts, samples.samples),
        (r.len(), 8, 1)
    );
    let settings = warp::stats::EvalSettings::read(&out.join("eval.json")).unwrap();
    assert_eq!((settings.temperature, settings.points), (0.9, r.len()));
    for (k, row) in r.iter().enumerate() {
        let m = samples.prompt_means(k);
        let mean = m.reward.iter().sum::<f64>() / 8.0;
        assert!(
            (mean - row[8].parse::<f64>().unwrap()).abs() < 1e-5,
            "{row:?}"
        );
    }
    for row in &r {
        let kl: f64 = row[6].parse().unwrap();
        let reward: f64 = row[8].parse().unwrap();
        assert!(kl >= -1e-6 && kl.is_finite(), "{row:?}");
        assert!((0.0..=1.0).contains(&reward), "{row:?}");
    }
    // η = 0 is the iteration's init: the SFT model itself in iteration 1 (KL exactly 0).
    let eta0 = r
        .iter()
        .find(|row| row[1] == "liti" && row[2] == "1" && row[5] == "0")
        .unwrap();
    assert_eq!(eta0[6].parse::<f64>().unwrap(), 0.0, "{eta0:?}");
    let svg = std::fs::read_to_string(out.join("front.svg")).unwrap();
    assert!(svg.starts_with("<svg") || svg.starts_with("<?xml"));

    // Interrupted state: an RL run without its final checkpoint, a merge and the evaluation
    // gone. The re-run resumes the run, redoes the rest and skips everything else.
    std::fs::remove_dir_all(out.join("iter-2/run-2/final")).unwrap();
    std::fs::remove_dir_all(out.join("iter-2/slerp")).unwrap();
    std::fs::remove_file(out.join("eval.csv")).unwrap();
    let r2 = run("warp", &["run", s(&cfg), "-o", s(&out)], tmp.path());
    assert_eq!(r2.code, 0, "{}", r2.stderr);
    for skipped in [
        "iter-1/run-1",
        "iter-1/slerp",
        "iter-2/run-1",
        "iter-2/lerp",
    ] {
        assert!(
            r2.stderr.contains(&format!("skip  {skipped} ")),
            "{skipped} not skipped:\n{}",
            r2.stderr
        );
    }
    for redone in ["iter-2/slerp", "eval"] {
        assert!(
            r2.stderr.contains(&format!("start  {redone} ")),
            "{}",
            r2.stderr
        );
    }
    assert!(r2.stderr.contains("resume iter-2/run-2 "), "{}", r2.stderr);
    // Continued, not restarted: one metrics line per step.
    let m = std::fs::read_to_string(out.join("iter-2/run-2/metrics.jsonl")).unwrap();
    assert_eq!(m.lines().count(), 2, "{m}");
    assert!(out
        .join("iter-2/run-2/final/policy/model.safetensors")
        .is_file());
    assert_eq!(rows(&out.join("eval.csv")).len(), r.len());
}

#[test]
fn warp_run_rejects_bad_configs() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "iterations = 1\nrunz = 2\n").unwrap();
    fails("warp", &["run", s(&cfg)], tmp.path(), &["bad.toml", "runz"]);
    std::fs::write(&cfg, "runs = 1\n").unwrap();
    fails(
        "warp",
        &["run", s(&cfg)],
        tmp.path(),
        &["runs", "must be ≥ 2"],
    );
    std::fs::write(&cfg, "launcher = \"pbs\"\n").unwrap();
    fails(
        "warp",
        &["run", s(&cfg)],
        tmp.path(),
        &["launcher", "local or slurm"],
    );
    std::fs::write(&cfg, "launcher = \"slurm\"\n[slurm.rl]\nmem = \"8 G\"\n").unwrap();
    fails("warp", &["run", s(&cfg)], tmp.path(), &["slurm.rl.mem"]);
    std::fs::write(&cfg, "[slurm]\npartitio = \"gpu\"\n").unwrap();
    fails(
        "warp",
        &["run", s(&cfg)],
        tmp.path(),
        &["bad.toml", "partitio"],
    );
    assert!(!tmp.path().join("warp-run").exists());
}

/// The committed built-in model is reproducible: `warp-sft` with its defaults trains a model
/// whose sampled held-out accuracy is within ±0.05 of the committed one (sft.json), and
/// `warp-sft --eval` re-measures the committed model within ±0.02.
#[test]
fn warp_sft_reproduces_the_committed_model() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/arith");
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("sft.json")).unwrap()).unwrap();
    let want = committed["heldout_sampled_accuracy"].as_f64().unwrap();
    assert!((0.6..=0.7).contains(&want), "committed accuracy {want}");

    let tmp = tempfile::tempdir().unwrap();
    let measured = ok(
        "warp-sft",
        &[
            "--eval",
            s(&fixture.join("model")),
            "--prompts",
            s(&fixture.join("heldout.jsonl")),
        ],
        tmp.path(),
    );
    let m: serde_json::Value = serde_json::from_str(&measured).unwrap();
    let again = m["sampled_accuracy"].as_f64().unwrap();
    assert!(
        (again - want).abs() <= 0.02,
        "re-measured {again}, committed {want}"
    );

    let out = tmp.path().join("sft");
    // One libtorch thread, as the committed model was made (the thread count changes the order
    // of floating-point reductions, hence the trajectory).
    ok(
        "warp-sft",
        &["-o", s(&out), "--threads", "1", "-q"],
        tmp.path(),
    );
    let got: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("sft.json")).unwrap()).unwrap();
    let acc = got["heldout_sampled_accuracy"].as_f64().unwrap();
    assert!(
        (acc - want).abs() <= 0.05,
        "retrained {acc}, committed {want}"
    );
    assert!(got["heldout_greedy_accuracy"].as_f64().unwrap() >= 0.9);
    for f in [
        "train.jsonl",
        "heldout.jsonl",
        "model/tokenizer.json",
        "model/tokenizer_config.json",
        "model/special_tokens_map.json",
        "model/generation_config.json",
    ] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(fixture.join(f)).unwrap(),
            "{f} differs"
        );
    }
}

/// `warp run` on a bf16 SFT model with `merge_dtype = "f32"`, and on an SFT model mixing bf16
/// and f32 tensors: the merges take the f32 policies next to the SFT model in its own dtypes
/// (no f32 copy of it), and iteration 2's front (`warp liti` from the SFT model to a merge in
/// `merge_dtype`) completes. Issue 23: both failed at iteration 2 after all the RL had run.
#[test]
fn warp_run_merges_across_dtypes_through_iteration_2() {
    use warp::io::{Checkpoint, DType};
    let tmp = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/arith/model");
    let bf16 = tmp.path().join("sft-bf16");
    crate::dtypes::recast(&fixture, &bf16, &|_| Some(DType::BF16));
    let mixed = tmp.path().join("sft-mixed");
    crate::dtypes::recast(&fixture, &mixed, &|n| {
        (n.contains("mlp") || n.contains("embed")).then_some(DType::BF16)
    });
    const SHORT: &str = "iterations = 2\nruns = 2\nsteps = 1\ncheckpoints = 1\n\
        etas = [0.0, 1.0]\neta = 0.5\ninit_anchor_runs = false\n\
        rl_args = [\"--batch\", \"2\", \"-n\", \"2\"]\neval_prompts = 2\neval_samples = 1\n\
        threads = 1\n";
    for (sft, extra, want) in [
        (&bf16, "merge_dtype = \"f32\"\n", DType::F32),
        // "sft" is the SFT model's most common float dtype (by bytes): bf16 here.
        (&mixed, "", DType::BF16),
    ] {
        let cfg = tmp.path().join("c.toml");
        std::fs::write(&cfg, format!("{SHORT}{extra}model = {:?}\n", s(sft))).unwrap();
        let out = tmp.path().join(format!(
            "run-{}",
            sft.file_name().unwrap().to_str().unwrap()
        ));
        ok("warp", &["run", s(&cfg), "-o", s(&out), "-q"], tmp.path());
        let plan = std::fs::read_to_string(out.join("plan.json")).unwrap();
        assert!(!plan.contains("init-f32"), "{plan}");
        for point in [
            "iter-1/slerp/eta-0.50",
            "iter-2/front/eta-0.00",
            "iter-2/front/eta-1.00",
        ] {
            let ck = Checkpoint::open(out.join(point)).unwrap();
            for t in ck.tensors() {
                assert_eq!(t.dtype, want, "{point}: {}", t.name);
            }
        }
        // The η grid is 0, 0.5 (the next init's η) and 1.
        let fronts = rows(&out.join("eval.csv"))
            .iter()
            .filter(|row| row[1] == "front")
            .count();
        assert_eq!(fronts, 3);
    }
}
