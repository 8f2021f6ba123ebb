//! `warp eval` with a large vocabulary (issue 24): the KL to the SFT model is computed through the
//! chunked statistics (no `[batch, length, vocab]` logits), the batch comes from a memory plan,
//! and `--max-memory` is honoured — measured as the peak RSS of the process.

use std::path::Path;
use std::process::Command;

use crate::common::{fails, ok, python, torch_ref};
use serde_json::json;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The "estimated peak: N MiB" line of a plan, in bytes.
fn plan_peak(plan: &str) -> f64 {
    let line = plan
        .lines()
        .find_map(|l| l.strip_prefix("estimated peak: "))
        .unwrap_or_else(|| panic!("no estimated peak in:\n{plan}"));
    let (v, unit) = line.trim().split_once(' ').unwrap();
    let scale = match unit {
        "KiB" => 1024.0,
        "MiB" => 1048576.0,
        "GiB" => 1073741824.0,
        u => panic!("unit {u}"),
    };
    v.parse::<f64>().unwrap() * scale
}

fn batch_of(plan: &str) -> u64 {
    plan.lines()
        .find_map(|l| l.strip_prefix("evaluation batch: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no batch in:\n{plan}"))
}

/// Peak RSS in bytes of `warp args` (ru_maxrss of its process tree: the reward program is far
/// smaller), read by a Python parent.
fn peak_rss(args: &[&str], cwd: &Path) -> f64 {
    let measure = "import resource, subprocess, sys\n\
                   subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n\
                   print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n";
    let o = Command::new(python())
        .arg("-c")
        .arg(measure)
        .arg(crate::common::bin("warp"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "warp eval failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

/// Two random Qwen2 models made by transformers with Qwen2's 151 936-token vocabulary (hidden 64,
/// 2 layers: 19.5M parameters, 78 MB in f32), 64 prompts × 2 samples of 8 tokens. Before this
/// change the same evaluation built the [128, 8, 151 936] f32 logits of both models (peak RSS
/// 3.99 GB measured); now its peak is within the plan, by default and under --max-memory.
#[test]
// long fn: one model pair made once, two measured runs and the refusal share its setup.
fn warp_eval_with_a_151936_token_vocabulary_stays_within_its_memory_plan() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let config = json!({"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 64});
    let models: Vec<_> = [("sft", 2), ("policy", 3)]
        .iter()
        .map(|(name, seed)| {
            json!({"out": d.join(name), "config": config, "dtype": "f32", "seed": seed,
                   "tokenizer": true})
        })
        .collect();
    torch_ref("hf_tiny_model.py", &[], &json!({ "models": models }));
    let mut rng = warp::rng::SplitMix64::stream(24, 11);
    let prompts: String = (0..64)
        .map(|_| {
            let words: Vec<String> = (0..6)
                .map(|_| format!("w{}", 4 + rng.below(151932)))
                .collect();
            format!("{}\n", json!({"prompt": words.join(" ")}))
        })
        .collect();
    std::fs::write(d.join("prompts.jsonl"), prompts).unwrap();
    std::fs::write(
        d.join("reward.py"),
        "import sys\nfor line in sys.stdin:\n    print(0.5)\n",
    )
    .unwrap();
    let reward = format!("cmd:{} {}", python(), s(&d.join("reward.py")));
    let (sft, policy) = (d.join("sft"), d.join("policy"));
    let args = |out: &str, extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "eval",
            s(&policy),
            "--sft",
            s(&sft),
            "--prompts",
            s(&d.join("prompts.jsonl")),
            "--samples",
            "2",
            "--max-new-tokens",
            "8",
            "--reward",
            &reward,
            "--device",
            "cpu",
            "--threads",
            "1",
            "-q",
            "-o",
            s(&d.join(out)),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let mut batches = Vec::new();
    for (out, extra) in [
        ("default.csv", &[][..]),
        ("limited.csv", &["--max-memory", "720MiB"][..]),
    ] {
        let a = args(out, extra);
        let mut dry: Vec<&str> = a.iter().map(String::as_str).collect();
        dry.push("--dry-run");
        let plan = ok("warp", &dry, d);
        let (estimate, batch) = (plan_peak(&plan), batch_of(&plan));
        batches.push(batch);
        let run: Vec<&str> = a.iter().map(String::as_str).collect();
        let peak = peak_rss(&run, d);
        eprintln!(
            "{out}: batch {batch}, plan {:.0} MiB, measured peak RSS {:.0} MiB",
            estimate / 1048576.0,
            peak / 1048576.0
        );
        assert!(
            peak <= estimate,
            "{out}: peak RSS {peak} above the plan:\n{plan}"
        );
        // The plan is not a blanket bound either.
        assert!(peak >= 0.6 * estimate, "{out}: {peak} vs {estimate}");
        if extra.is_empty() {
            assert!(
                batch < 128,
                "the plan keeps the sampler's [batch, vocab] tensors small"
            );
        } else {
            assert!(estimate <= 720.0 * 1048576.0, "{plan}");
            assert!(peak <= 720.0 * 1048576.0, "{out}: {peak}");
        }
        let csv = std::fs::read_to_string(d.join(out)).unwrap();
        let rows: Vec<Vec<&str>> = csv
            .lines()
            .skip(1)
            .map(|l| l.split(',').collect())
            .collect();
        // The SFT model against itself: KL 0; the other model: positive.
        assert_eq!(rows[0][6].parse::<f64>().unwrap(), 0.0, "{csv}");
        assert!(rows[1][6].parse::<f64>().unwrap() > 0.0, "{csv}");
    }
    // Each sequence draws from its own stream: the two batch sizes sample the same completions
    // (the old per-batch streams did not), so the KL and length columns agree too.
    assert_ne!(batches[0], batches[1], "the limit should shrink the batch");
    let columns = |f: &str| -> Vec<Vec<String>> {
        std::fs::read_to_string(d.join(f))
            .unwrap()
            .lines()
            .map(|l| {
                let v: Vec<&str> = l.splitn(7, ',').collect();
                vec![
                    v[0].into(),
                    v[1].into(),
                    v[2].into(),
                    v[5].into(),
                    v[6].into(),
                ]
            })
            .collect()
    };
    let (a, b) = (
        columns("default-samples.csv"),
        columns("limited-samples.csv"),
    );
    assert_eq!(a.len(), 1 + 2 * 64 * 2);
    assert_eq!(a, b, "completions differ between evaluation batches");
    // A limit below the two models: refused before loading, naming the flag.
    let a = args("none.csv", &["--max-memory", "300MiB"]);
    let v: Vec<&str> = a.iter().map(String::as_str).collect();
    fails("warp", &v, d, &["--max-memory", "one sequence at a time"]);
    assert!(!d.join("none.csv").exists());
}
