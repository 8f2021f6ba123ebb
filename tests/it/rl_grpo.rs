//! GRPO / Dr. GRPO in warp-rl (issue 24): the advantages against their closed form, the gradient
//! of the first update of a batch and of a later, clipped one against an independent torch
//! reference (tests/ref/grpo_ref.py: transformers' Llama, full logits, the loss written from its
//! definition), micro-batches against the full batch, and a GRPO run with the EMA anchor on the
//! built-in task that raises the held-out accuracy.

use std::collections::HashMap;
use std::path::Path;

use crate::common::{fixture, mean_field, ok, read_metrics, torch_ref};
use serde_json::json;
use tch::Tensor;
use warp::io::writer::WriterOptions;
use warp::io::DType;
use warp::rl::trainer::{advantages, Baseline, RlConfig, TrainDtype, Trainer, GRPO_STD_EPS};
use warp::rl::CausalLm;
use warp::rng::SplitMix64;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn grpo_and_dr_grpo_advantages_match_closed_form() {
    let r = [
        1.0f64, 0.0, 0.5, 0.5, 2.0, 2.0, 2.0, 2.0, -1.0, 3.0, 0.25, 0.0,
    ];
    let n = 4;
    let t = Tensor::from_slice(&r.iter().map(|&x| x as f32).collect::<Vec<_>>());
    let grpo: Vec<f32> = Vec::try_from(advantages(&t, n, Baseline::Grpo)).unwrap();
    let dr: Vec<f32> = Vec::try_from(advantages(&t, n, Baseline::DrGrpo)).unwrap();
    for (g, grp) in r.chunks(n).enumerate() {
        let mean = grp.iter().sum::<f64>() / n as f64;
        let var = grp.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0);
        for (j, x) in grp.iter().enumerate() {
            let i = g * n + j;
            let want_dr = x - mean;
            let want = want_dr / (var.sqrt() + GRPO_STD_EPS);
            assert!(
                (dr[i] as f64 - want_dr).abs() < 1e-6,
                "{i}: {} {want_dr}",
                dr[i]
            );
            assert!(
                (grpo[i] as f64 - want).abs() < 1e-5,
                "{i}: {} {want}",
                grpo[i]
            );
        }
    }
    // A group of equal rewards: no signal, and no NaN.
    assert!(grpo[4..8].iter().all(|&a| a == 0.0), "{grpo:?}");
}

/// (prompt ids, completion ids) pairs.
pub(crate) type Pairs = Vec<(Vec<i64>, Vec<i64>)>;

/// Pairs of the built-in vocabulary (prompts of 2–6 tokens after BOS, completions of 0–6) and
/// rewards 0/1 with some all-equal groups' worth of ties, in groups of 4 per prompt.
pub(crate) fn fixed_samples() -> (Pairs, Vec<f64>) {
    let mut rng = SplitMix64::stream(24, 5);
    let mut pairs = Vec::new();
    for g in 0..4 {
        let p: Vec<i64> = std::iter::once(1)
            .chain((0..2 + rng.below(5)).map(|_| 4 + rng.below(28) as i64))
            .collect();
        for j in 0..4 {
            let len = if g == 1 && j == 2 {
                0
            } else {
                1 + rng.below(6)
            };
            pairs.push((
                p.clone(),
                (0..len).map(|_| 3 + rng.below(29) as i64).collect(),
            ));
        }
    }
    let rewards = (0..16).map(|_| rng.below(2) as f64).collect();
    (pairs, rewards)
}

/// Adds N(0, 0.05²) noise from a seeded stream to every weight of `m`, in name order.
pub(crate) fn perturb(m: &CausalLm, seed: u64) {
    let mut rng = SplitMix64::stream(seed, 6);
    let mut vars: Vec<(String, Tensor)> = m.vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (_, mut v) in vars {
            let noise: Vec<f32> = (0..v.numel())
                .map(|_| (0.05 * rng.normal()) as f32)
                .collect();
            v += Tensor::from_slice(&noise).view(v.size().as_slice());
        }
    });
}

pub(crate) fn save(m: &CausalLm, dest: &Path) {
    m.save(
        dest,
        Some(&fixture("arith/model")),
        Some(DType::F32),
        &WriterOptions::default(),
    )
    .unwrap();
}

pub(crate) fn read_grads(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

/// max |a − b| over every parameter, and max |b|.
pub(crate) fn worst(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let mut d: f64 = 0.0;
    let mut scale: f64 = 0.0;
    for (n, g) in b {
        let o = &a[n];
        d = d.max((o - g).abs().max().double_value(&[]));
        scale = scale.max(g.abs().max().double_value(&[]));
    }
    (d, scale)
}

/// Per micro-batch size and baseline: the two updates of a batch (K = 2), the folders the
/// reference needs and our gradients.
struct Case {
    name: String,
    baseline: &'static str,
    first: HashMap<String, Tensor>,
    later: HashMap<String, Tensor>,
    clip_frac: f64,
}

/// A GRPO-family config on the built-in model for two updates of one batch (K = 2, lr 1e-4, no
/// warm-up or clipping of the gradient norm), f32 on the CPU.
pub(crate) fn two_update_config(baseline: Baseline, micro_batch: usize) -> RlConfig {
    RlConfig {
        model: fixture("arith/model").display().to_string(),
        batch: 4,
        n: 4,
        micro_batch,
        dtype: TrainDtype::F32,
        baseline,
        updates_per_batch: 2,
        clip_eps: 0.2,
        lr: 1e-4,
        warmup: 0,
        grad_clip: 0.0,
        metrics_every: 0,
        device: warp::device::Device::Cpu,
        ..RlConfig::default()
    }
}

/// The two updates of one batch under `cfg` with an anchor away from the policy (so that the KL
/// term is not zero): the policy and the anchor each update saw saved as `old-NAME`,
/// `anchor-old-NAME`, `new-NAME` and `anchor-new-NAME` (the EMA anchor moves after the first
/// update), and the two updates' gradients and the later one's clipped share.
pub(crate) fn two_updates(
    dir: &Path,
    name: &str,
    cfg: RlConfig,
    pairs: &Pairs,
    r: &[f64],
) -> (HashMap<String, Tensor>, HashMap<String, Tensor>, f64) {
    let mut t = Trainer::new(
        cfg,
        &dir.join(format!("run-{name}")),
        &warp::progress::Silent,
    )
    .unwrap();
    perturb(&t.ema, 9);
    save(&t.policy, &dir.join(format!("old-{name}")));
    save(&t.ema, &dir.join(format!("anchor-old-{name}")));
    let sums = t.accumulate_gradient(pairs, r, false).unwrap();
    assert!(sums.kl_anchor > 0.0);
    // Copies: the gradients returned alias the parameters' (zeroed by the next update).
    let copies = |t: &Trainer| -> HashMap<String, Tensor> {
        t.gradients()
            .unwrap()
            .into_iter()
            .map(|(n, g)| (n, g.copy()))
            .collect()
    };
    let first = copies(&t);
    t.update(sums.grad_norm).unwrap();
    save(&t.policy, &dir.join(format!("new-{name}")));
    save(&t.ema, &dir.join(format!("anchor-new-{name}")));
    let u = t.accumulate_update(pairs).unwrap();
    (first, copies(&t), u.clip_frac)
}

fn run_case(dir: &Path, baseline: Baseline, micro_batch: usize, pairs: &Pairs, r: &[f64]) -> Case {
    let name = format!("{baseline:?}-k{micro_batch}");
    let cfg = two_update_config(baseline, micro_batch);
    let (first, later, clip_frac) = two_updates(dir, &name, cfg, pairs, r);
    let baseline = match baseline {
        Baseline::Grpo => "grpo",
        Baseline::DrGrpo => "dr-grpo",
        Baseline::Rloo => "rloo",
        Baseline::None => "none",
    };
    Case {
        name,
        baseline,
        first,
        later,
        clip_frac,
    }
}

/// The first update of a batch (on-policy, ratio 1) and the second (the policy moved by one Adam
/// step at lr 1e-4, so that some ratios leave [0.8, 1.2]) against grpo_ref.py, for GRPO with one
/// micro-batch, whole groups per micro-batch (one pass) and split groups (a no-graph pass for
/// the group statistics first), and for Dr. GRPO.
#[test]
fn grpo_gradients_match_the_torch_reference_with_clipping_and_micro_batches() {
    let (pairs, rewards) = fixed_samples();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cases: Vec<Case> = [
        (Baseline::Grpo, 16),
        (Baseline::Grpo, 4),
        (Baseline::Grpo, 3),
        (Baseline::DrGrpo, 16),
    ]
    .into_iter()
    .map(|(b, k)| run_case(d, b, k, &pairs, &rewards))
    .collect();
    let mut jobs = Vec::new();
    for c in &cases {
        for (which, policy) in [("first", "old"), ("later", "new")] {
            jobs.push(json!({
                "policy": d.join(format!("{policy}-{}", c.name)),
                "old": d.join(format!("old-{}", c.name)),
                "anchor": d.join(format!("anchor-old-{}", c.name)),
                "out": d.join(format!("ref-{which}-{}.safetensors", c.name)),
                "pairs": pairs, "rewards": rewards, "n": 4, "baseline": c.baseline,
                "beta": 0.1, "temperature": 0.9, "length_penalty": 0.0, "clip_eps": 0.2,
            }));
        }
    }
    let answers = torch_ref("grpo_ref.py", &[], &json!({ "jobs": jobs }));
    let tokens: usize = pairs.iter().map(|(_, c)| c.len()).sum();
    for (i, c) in cases.iter().enumerate() {
        let (a1, a2) = (&answers[2 * i], &answers[2 * i + 1]);
        let r1 = read_grads(&d.join(format!("ref-first-{}.safetensors", c.name)));
        let r2 = read_grads(&d.join(format!("ref-later-{}.safetensors", c.name)));
        let (d1, s1) = worst(&c.first, &r1);
        let (d2, s2) = worst(&c.later, &r2);
        let (clipped, outside) = (
            a2["clipped"].as_f64().unwrap(),
            a2["outside"].as_f64().unwrap(),
        );
        eprintln!(
            "{}: first update max |ours − torch| {d1:e} (max |g| {s1:e}); later update {d2:e} \
             (max |g| {s2:e}); ratios outside 1 ± ε: {outside:.3}, clipped: torch {clipped:.3}, \
             ours {:.3}",
            c.name, c.clip_frac
        );
        assert_eq!(
            a1["clipped"].as_f64().unwrap(),
            0.0,
            "ratio 1 at the first update"
        );
        // Clipping is active (some tokens lose their gradient) but not everywhere.
        assert!(clipped > 0.0 && outside < 1.0, "{}: {a2}", c.name);
        assert!(
            (c.clip_frac - clipped).abs() <= 1.0 / tokens as f64,
            "{}",
            c.name
        );
        assert!(
            s1 > 0.0 && d1 <= 2e-5 * s1,
            "{}: first update {d1} vs {s1}",
            c.name
        );
        assert!(
            s2 > 0.0 && d2 <= 2e-5 * s2,
            "{}: later update {d2} vs {s2}",
            c.name
        );
    }
    // Micro-batches give the full batch's gradients.
    for c in &cases[1..3] {
        for (ours, full) in [(&c.first, &cases[0].first), (&c.later, &cases[0].later)] {
            let (dd, scale) = worst(ours, full);
            assert!(dd <= 2e-5 * scale, "{} vs one micro-batch: {dd}", c.name);
        }
    }
}

/// `warp rl --baseline grpo --updates-per-batch 2` with the EMA anchor on the built-in task:
/// the final policy's sampled held-out accuracy is clearly above the SFT model's (0.647,
/// fixtures/arith/sft.json), measured by `warp sft --eval` on 1 010 prompts × 4 samples.
#[test]
fn grpo_with_the_ema_anchor_raises_the_builtin_reward() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("grpo");
    ok(
        "warp",
        &[
            "rl",
            "-o",
            s(&out),
            "--baseline",
            "grpo",
            "--updates-per-batch",
            "2",
            "--anchor",
            "ema",
            "--steps",
            "40",
            "--metrics-every",
            "0",
            "--threads",
            "1",
            "-q",
        ],
        tmp.path(),
    );
    let m = read_metrics(&out);
    assert_eq!(m.len(), 40);
    assert!(m.iter().all(|r| r["clip_frac"].as_f64().is_some()));
    let measured = ok(
        "warp",
        &[
            "sft",
            "--eval",
            s(&out.join("final/policy")),
            "--prompts",
            s(&fixture("arith/heldout.jsonl")),
        ],
        tmp.path(),
    );
    let v: serde_json::Value = serde_json::from_str(&measured).unwrap();
    let acc = v["sampled_accuracy"].as_f64().unwrap();
    let first = mean_field(&m[..5], "reward_mean");
    let last = mean_field(&m[35..], "reward_mean");
    eprintln!("GRPO: held-out sampled accuracy {acc:.3} (SFT 0.647); reward steps 1–5 {first:.3}, 36–40 {last:.3}");
    assert!(acc >= 0.75, "held-out accuracy {acc}");
    assert!(last > first, "{first} → {last}");
}

/// `warp run` with `[rl] baseline = "grpo"` and two updates per batch completes; every RL run
/// records the settings and reports its clipping.
#[test]
fn warp_run_with_grpo_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("grpo.toml");
    std::fs::write(
        &cfg,
        crate::common::tiny_pipeline(
            &[("iterations", "1")],
            "[rl]\nbaseline = \"grpo\"\nupdates_per_batch = 2\n",
        ),
    )
    .unwrap();
    let out = tmp.path().join("run");
    ok("warp", &["run", s(&cfg), "-o", s(&out), "-q"], tmp.path());
    assert!(out.join("eval.csv").is_file());
    let mut runs = 0;
    for e in walk(&out) {
        if e.file_name().and_then(|n| n.to_str()) != Some("run.json") {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&e).unwrap()).unwrap();
        let Some(c) = v.get("config") else { continue };
        assert_eq!(c["baseline"], "grpo", "{}", e.display());
        assert_eq!(c["updates_per_batch"], 2, "{}", e.display());
        let metrics = std::fs::read_to_string(e.with_file_name("metrics.jsonl")).unwrap();
        assert!(metrics.contains("\"clip_frac\""), "{metrics}");
        runs += 1;
    }
    // The 2 runs with the EMA anchor, and the pipeline's init-anchor runs beside them.
    assert!(runs >= 2, "{runs} RL runs found under {}", out.display());
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
