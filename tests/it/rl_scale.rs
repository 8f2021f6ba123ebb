//! `warp-rl` at scale (feature `rl`): the optimizer's precision (f32 master weights for bf16
//! parameters, checked against PyTorch's own Adam), memory-bounded scoring (chunked log-probs,
//! KL and entropy against the full-logits computation, gradients too) and the memory plan's
//! parameter counts (against transformers).
#![cfg(feature = "rl")]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{fixture, torch_python, torch_ref};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};
use warp::rl::chunked::{
    backward_logprobs, token_stats, Completions, Reference, StatsOptions, TokenStats,
};
use warp::rl::eval::token_kl;
use warp::rl::memory::ModelShape;
use warp::rl::optim::{Adam, AdamConfig};
use warp::rl::{score_at, CausalLm};
use warp::rng::SplitMix64;

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.detach().to_kind(Kind::Float).flatten(0, -1)).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

// ---------------------------------------------------------------------------------------------
// Optimizer

/// Named parameters with shapes, from a seeded stream: magnitudes in [lo, hi], random signs.
fn make_params(seed: u64, lo: f64, hi: f64) -> Vec<(String, Vec<i64>, Vec<f32>)> {
    let mut rng = SplitMix64::stream(seed, 1);
    [
        ("a.weight", vec![4i64, 5]),
        ("b.bias", vec![7]),
        ("c.weight", vec![3, 2, 2]),
    ]
    .into_iter()
    .map(|(n, shape)| {
        let count: i64 = shape.iter().product();
        let v = (0..count)
            .map(|_| {
                let mag = lo + (hi - lo) * rng.next_open01();
                let sign = if rng.below(2) == 0 { -1.0 } else { 1.0 };
                (sign * mag) as f32
            })
            .collect();
        (n.to_string(), shape, v)
    })
    .collect()
}

#[derive(Clone, Copy, PartialEq)]
enum Grads {
    /// Uniform in ±1, every other step 10× smaller (so clipping at 1 acts on some steps only).
    Noise,
    /// A fixed sign per element times a magnitude in [0.5, 1): a consistent training signal,
    /// so that Adam moves every weight by about lr per step.
    Signal,
    /// Multiples of 1/64 in [-1, 1]: exact in bf16, and so are their f32 sums.
    Exact,
}

/// Per step, per parameter: gradients of the given kind from a seeded stream.
fn make_grads(
    seed: u64,
    params: &[(String, Vec<i64>, Vec<f32>)],
    steps: usize,
    kind: Grads,
) -> Vec<HashMap<String, Vec<f32>>> {
    let mut rng = SplitMix64::stream(seed, 2);
    let signs: Vec<Vec<f32>> = params
        .iter()
        .map(|(_, _, v)| {
            v.iter()
                .map(|_| if rng.below(2) == 0 { -1.0 } else { 1.0 })
                .collect()
        })
        .collect();
    (0..steps)
        .map(|s| {
            let scale = if s % 2 == 0 { 1.0 } else { 0.1 };
            params
                .iter()
                .zip(&signs)
                .map(|((n, _, _), sign)| {
                    let g = sign
                        .iter()
                        .map(|sg| {
                            let u = rng.next_open01();
                            match kind {
                                Grads::Noise => (scale * (2.0 * u - 1.0)) as f32,
                                Grads::Signal => sg * (0.5 + 0.5 * u) as f32,
                                Grads::Exact => ((2.0 * u - 1.0) * 64.0).round() as f32 / 64.0,
                            }
                        })
                        .collect();
                    (n.clone(), g)
                })
                .collect()
        })
        .collect()
}

fn shallow(ts: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    ts.iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect()
}

fn tensors(params: &[(String, Vec<i64>, Vec<f32>)], kind: Kind) -> Vec<(String, Tensor)> {
    params
        .iter()
        .map(|(n, shape, v)| {
            let t = Tensor::from_slice(v)
                .view(shape.as_slice())
                .to_kind(kind)
                .set_requires_grad(true);
            (n.clone(), t)
        })
        .collect()
}

/// Sets the gradients of `params` to `grads` exactly: backward of Σ p·G.
fn backward_with(params: &[(String, Tensor)], grads: &HashMap<String, Vec<f32>>) {
    let terms: Vec<Tensor> = params
        .iter()
        .map(|(n, p)| {
            let g = Tensor::from_slice(&grads[n])
                .view(p.size().as_slice())
                .to_kind(p.kind());
            (p * g).sum(Kind::Float)
        })
        .collect();
    Tensor::stack(&terms, 0).sum(Kind::Float).backward();
}

/// PyTorch's trajectory for the same start, gradients and settings.
fn torch_adam(
    params: &[(String, Vec<i64>, Vec<f32>)],
    grads: &[HashMap<String, Vec<f32>>],
    lrs: &[f64],
    cfg: &AdamConfig,
) -> (HashMap<String, Vec<f32>>, Vec<f64>) {
    let p: serde_json::Map<String, Value> = params
        .iter()
        .map(|(n, s, v)| (n.clone(), json!({"shape": s, "values": v})))
        .collect();
    let out = torch_ref(
        "torch_adam.py",
        &[],
        &json!({"params": p, "grads": grads, "lr": lrs, "beta1": cfg.beta1,
                "beta2": cfg.beta2, "eps": cfg.eps, "weight_decay": cfg.weight_decay,
                "clip": cfg.grad_clip}),
    );
    let finals = out["params"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(n, v)| {
            let v: Vec<f32> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            (n.clone(), v)
        })
        .collect();
    let norms = out["norms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    (finals, norms)
}

fn check_f32_against_torch(cfg: AdamConfig, steps: usize) {
    let params = make_params(1, 0.0, 0.5);
    let grads = make_grads(2, &params, steps, Grads::Noise);
    let ts = tensors(&params, Kind::Float);
    let mut opt = Adam::from_params(shallow(&ts), cfg.clone()).unwrap();
    let lrs: Vec<f64> = (1..=steps as u64).map(|s| opt.lr_at(s)).collect();
    let mut norms = Vec::new();
    for g in &grads {
        opt.zero_grad();
        backward_with(&ts, g);
        norms.push(opt.step().unwrap().grad_norm);
    }
    let (want, want_norms) = torch_adam(&params, &grads, &lrs, &cfg);
    for (a, b) in norms.iter().zip(&want_norms) {
        // Squares in f32 (as the gradients), summed in f64; the reference squares in f64.
        assert!((a - b).abs() <= 1e-6 * b, "grad norm {a} vs torch {b}");
    }
    let clipped = want_norms.iter().filter(|&&n| n > cfg.grad_clip).count();
    assert!(
        clipped > 0 && clipped < steps,
        "clipping on {clipped} of {steps} steps"
    );
    let mut worst = 0f64;
    for (n, t) in &ts {
        for (x, y) in values(t).iter().zip(&want[n]) {
            worst = worst.max((x - y).abs() as f64);
        }
    }
    eprintln!("f32 Adam vs torch ({cfg:?}): max |diff| {worst:e} after {steps} steps");
    assert!(worst <= 1e-6, "max |ours − torch| = {worst}");
}

#[test]
fn adam_matches_torch_with_warmup_decay_and_clipping() {
    let base = AdamConfig {
        lr: 0.01,
        warmup: 3,
        decay_steps: 6,
        grad_clip: 1.0,
        ..AdamConfig::default()
    };
    check_f32_against_torch(base.clone(), 12);
    check_f32_against_torch(
        AdamConfig {
            weight_decay: 0.1,
            ..base
        },
        12,
    );
}

fn bf16_of(v: &[f32]) -> Vec<f32> {
    values(&Tensor::from_slice(v).to_kind(Kind::BFloat16))
}

#[test]
fn bf16_parameters_learn_at_lr_1e6_through_f32_masters_and_resume_exactly() {
    let steps = 80;
    let cfg = AdamConfig {
        lr: 1e-6,
        grad_clip: 0.0,
        ..AdamConfig::default()
    };
    // Weights of magnitude ~0.02: one bf16 spacing there is 2^-13 ≈ 1.2e-4.
    let params: Vec<_> = make_params(3, 0.015, 0.025)
        .into_iter()
        .map(|(n, s, v)| (n, s, bf16_of(&v)))
        .collect();
    let grads = make_grads(4, &params, steps, Grads::Signal);
    // Without a master copy an update of 1e-6 is rounded away: w − 1e-6 is w again in bf16.
    for (_, _, v) in &params {
        let moved: Vec<f32> = v.iter().map(|x| x - 1e-6).collect();
        assert_eq!(bf16_of(&moved), *v);
    }
    let run = |from: usize, to: usize, opt: &mut Adam, ts: &[(String, Tensor)]| {
        for g in &grads[from..to] {
            opt.zero_grad();
            backward_with(ts, g);
            opt.step().unwrap();
        }
    };
    let ts = tensors(&params, Kind::BFloat16);
    let mut opt = Adam::from_params(shallow(&ts), cfg.clone()).unwrap();
    assert!(opt.has_masters());
    run(0, steps, &mut opt, &ts);
    let lrs = vec![cfg.lr; steps];
    let (want, _) = torch_adam(&params, &grads, &lrs, &cfg);
    let masters: HashMap<&str, Tensor> = opt.weights_f32().into_iter().collect();
    let (mut worst, mut changed, mut total, mut off) = (0f64, 0, 0, 0);
    for ((n, t), (_, _, start)) in ts.iter().zip(&params) {
        let m = values(&masters[n.as_str()]);
        for (x, y) in m.iter().zip(&want[n]) {
            worst = worst.max((x - y).abs() as f64);
        }
        // The bf16 parameter is its master rounded to nearest even.
        let p = values(t);
        assert_eq!(p, bf16_of(&m), "{n}");
        off += p
            .iter()
            .zip(bf16_of(&want[n]))
            .filter(|(a, b)| *a != b)
            .count();
        changed += p.iter().zip(start).filter(|(a, b)| a != b).count();
        total += p.len();
    }
    eprintln!(
        "bf16 at lr 1e-6, {steps} steps: master vs torch f32 Adam max |diff| {worst:e}; \
         {changed}/{total} bf16 weights changed; {off} differ from torch's trajectory rounded"
    );
    // f32 rounding of the two formulas (ours divides m̂ by √v̂ + ε, torch's addcdiv folds lr/bc1
    // in): a few f32 ulps of 0.02 (1.9e-9) per step at most, far below the 8e-5 trained here.
    assert!(worst <= 1e-7, "master vs torch: {worst}");
    assert!(
        changed * 2 > total,
        "only {changed} of {total} bf16 weights moved"
    );
    assert!(
        off * 50 <= total,
        "{off} of {total} bf16 weights off torch's trajectory"
    );

    // Resume at step 40 from the saved state and the bf16 weights: the same end, bit for bit.
    let ts2 = tensors(&params, Kind::BFloat16);
    let mut first = Adam::from_params(shallow(&ts2), cfg.clone()).unwrap();
    run(0, 40, &mut first, &ts2);
    let saved: HashMap<String, Tensor> = first
        .state()
        .into_iter()
        .map(|(n, t)| (n, t.detach().copy()))
        .collect();
    assert!(saved.keys().any(|k| k.starts_with("master.")));
    let resumed_params: Vec<(String, Tensor)> = ts2
        .iter()
        .map(|(n, t)| (n.clone(), t.detach().copy().set_requires_grad(true)))
        .collect();
    let mut second = Adam::from_params(shallow(&resumed_params), cfg.clone()).unwrap();
    second
        .load_state(40, &mut |name, shape| {
            let t = saved.get(name).unwrap().shallow_clone();
            assert_eq!(t.size(), shape);
            Ok(t)
        })
        .unwrap();
    run(40, steps, &mut second, &resumed_params);
    for ((n, a), (_, b)) in ts.iter().zip(&resumed_params) {
        assert_eq!(values(a), values(b), "{n} after resume");
    }
    let m2: HashMap<&str, Tensor> = second.weights_f32().into_iter().collect();
    for (n, m) in &masters {
        assert_eq!(values(m), values(&m2[n]), "master {n} after resume");
    }
}

#[test]
fn bf16_gradients_of_micro_batches_are_summed_in_f32() {
    let steps = 10;
    let cfg = AdamConfig {
        lr: 1e-3,
        grad_clip: 0.0,
        ..AdamConfig::default()
    };
    let params: Vec<_> = make_params(5, 0.0, 0.5)
        .into_iter()
        .map(|(n, s, v)| (n, s, bf16_of(&v)))
        .collect();
    let g1 = make_grads(6, &params, steps, Grads::Exact);
    let g2 = make_grads(7, &params, steps, Grads::Exact);
    let ts = tensors(&params, Kind::BFloat16);
    let mut opt = Adam::from_params(shallow(&ts), cfg.clone()).unwrap();
    for (a, b) in g1.iter().zip(&g2) {
        opt.zero_grad();
        backward_with(&ts, a);
        opt.accumulate().unwrap();
        backward_with(&ts, b);
        opt.step().unwrap();
    }
    // The reference gets the exact sums (both terms are multiples of 1/64 in [-1, 1]).
    let sums: Vec<HashMap<String, Vec<f32>>> = g1
        .iter()
        .zip(&g2)
        .map(|(a, b)| {
            a.iter()
                .map(|(n, x)| (n.clone(), x.iter().zip(&b[n]).map(|(p, q)| p + q).collect()))
                .collect()
        })
        .collect();
    let (want, _) = torch_adam(&params, &sums, &vec![cfg.lr; steps], &cfg);
    let masters: HashMap<&str, Tensor> = opt.weights_f32().into_iter().collect();
    let mut worst = 0f64;
    for (n, _) in &ts {
        for (x, y) in values(&masters[n.as_str()]).iter().zip(&want[n]) {
            worst = worst.max((x - y).abs() as f64);
        }
    }
    eprintln!("accumulated bf16 gradients: master vs torch max |diff| {worst:e}");
    assert!(worst <= 1e-6, "{worst}");
}

// ---------------------------------------------------------------------------------------------
// Chunked scoring

/// The LM head of a loaded model as a function (the embedding when tied).
fn head_weight(m: &CausalLm) -> Tensor {
    let vars = m.vs.variables();
    let name = if m.config.tie_word_embeddings {
        "model.embed_tokens.weight"
    } else {
        "lm_head.weight"
    };
    vars[name].shallow_clone()
}

/// Random (prompt, completion) pairs: prompts of 1–6 tokens, completions of 0–7 (one empty).
fn random_pairs(vocab: i64, seed: u64) -> Vec<(Vec<i64>, Vec<i64>)> {
    let mut rng = SplitMix64::stream(seed, 3);
    let tok = |rng: &mut SplitMix64| 1 + rng.below(vocab as u64 - 1) as i64;
    (0..7)
        .map(|i| {
            let p = (0..1 + rng.below(6)).map(|_| tok(&mut rng)).collect();
            let c = if i == 2 {
                Vec::new()
            } else {
                (0..1 + rng.below(7)).map(|_| tok(&mut rng)).collect()
            };
            (p, c)
        })
        .collect()
}

fn perturbed_copy(dir: &Path, seed: u64) -> CausalLm {
    let m = CausalLm::load(dir, Device::Cpu).unwrap();
    perturb(&m, seed);
    m
}

fn grads_of(m: &CausalLm) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> =
        m.vs.variables()
            .into_iter()
            .map(|(n, t)| (n, t.grad().detach().copy()))
            .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn zero_grads(m: &CausalLm) {
    for (_, mut t) in m.vs.variables() {
        t.zero_grad();
    }
}

/// Chunked statistics against `score_at` + `token_kl` (+ the trainer's entropy), values and
/// gradients, on the model at `dir`.
// long fn: the full-vocabulary reference is written out step by step beside the chunked one.
fn check_chunked_against_full(dir: &Path) {
    let temperature = 0.9;
    let policy = CausalLm::load(dir, Device::Cpu).unwrap();
    let reference = perturbed_copy(dir, 5);
    let vocab = policy.config.vocab_size;
    let pairs = random_pairs(vocab as i64, 11);
    let pad = 0;

    // The full-logits computation of today's trainer.
    let full = score_at(&policy, &pairs, pad, temperature).unwrap();
    let (ref_full, kl_full, ent_full) = tch::no_grad(|| {
        let r = score_at(&reference, &pairs, pad, temperature).unwrap();
        let kl = token_kl(&full.logits, &r.logits, temperature) * &full.mask;
        let lp = (&full.logits / temperature).log_softmax(-1, Kind::Float);
        let ent = -(lp.exp() * &lp).sum_dim_intlist(-1, false, Kind::Float) * &full.mask;
        (r, kl, ent)
    });

    let comp = Completions::new(
        &pairs,
        pad,
        vocab,
        policy.config.max_position_embeddings,
        Device::Cpu,
    )
    .unwrap();
    let (pw, rw) = (head_weight(&policy), head_weight(&reference));
    let head = |h: &Tensor| -> warp::Result<Tensor> { Ok(h.linear::<Tensor>(&pw, None)) };
    let ref_head = |h: &Tensor| -> warp::Result<Tensor> { Ok(h.linear::<Tensor>(&rw, None)) };
    let hidden = |m: &CausalLm| {
        let h = m
            .hidden_states(&comp.ids, &comp.attention_mask, &comp.position_ids)
            .unwrap();
        comp.gather(&h).unwrap()
    };
    let hr = tch::no_grad(|| hidden(&reference));
    let stats = |h: &Tensor, chunk: i64| -> TokenStats {
        token_stats(
            h,
            &head,
            &comp.targets,
            &[Reference {
                hidden: &hr,
                head: &ref_head,
            }],
            &StatsOptions {
                temperature,
                chunk,
                entropy: true,
            },
        )
        .unwrap()
    };
    assert_eq!(comp.n_tokens, full.mask.sum(Kind::Int64).int64_value(&[]));
    for chunk in [1, 4, 10_000] {
        let s = tch::no_grad(|| stats(&hidden(&policy), chunk));
        let r = &s.references[0];
        let diffs = [
            max_abs_diff(&comp.to_padded(&s.logprobs).unwrap(), &full.logprobs),
            max_abs_diff(&comp.to_padded(&r.logprobs).unwrap(), &ref_full.logprobs),
            max_abs_diff(&comp.to_padded(&r.kl).unwrap(), &kl_full),
            max_abs_diff(
                &comp.to_padded(s.entropy.as_ref().unwrap()).unwrap(),
                &ent_full,
            ),
        ];
        eprintln!(
            "{}: chunk {chunk}: max |diff| logprobs {:e}, reference logprobs {:e}, KL {:e}, \
             entropy {:e}",
            dir.display(),
            diffs[0],
            diffs[1],
            diffs[2],
            diffs[3]
        );
        assert!(diffs.iter().all(|&d| d <= 2e-5), "{diffs:?}");
    }
    // The KL is not trivially zero: the reference really differs.
    assert!(kl_full.abs().max().double_value(&[]) > 1e-3);

    // Gradients of Σ_i w_i log π(y_i | x_i): full logits, chunked in-graph, chunked bounded.
    let mut rng = SplitMix64::stream(13, 4);
    let w: Vec<f32> = (0..pairs.len())
        .map(|_| (2.0 * rng.next_open01() - 1.0) as f32)
        .collect();
    let w = Tensor::from_slice(&w);
    zero_grads(&policy);
    let loss = (full.logprobs.sum_dim_intlist(-1, false, Kind::Float) * &w).sum(Kind::Float);
    loss.backward();
    let g_full = grads_of(&policy);

    zero_grads(&policy);
    let s = stats(&hidden(&policy), 3);
    let seq = comp.per_sequence(&s.logprobs).unwrap();
    (&seq * &w).sum(Kind::Float).backward();
    let g_graph = grads_of(&policy);

    zero_grads(&policy);
    let token_w = w.index_select(0, &comp.seq);
    let objective = backward_logprobs(
        &hidden(&policy),
        &head,
        &comp.targets,
        &token_w,
        temperature,
        3,
    )
    .unwrap();
    let g_bounded = grads_of(&policy);
    assert!((objective.double_value(&[]) - loss.double_value(&[])).abs() <= 1e-4);

    let scale = g_full
        .iter()
        .map(|(_, g)| g.abs().max().double_value(&[]))
        .fold(0.0, f64::max);
    assert!(scale > 0.0);
    for (label, got) in [("in-graph", &g_graph), ("bounded", &g_bounded)] {
        let mut worst = 0f64;
        for ((n, a), (m, b)) in g_full.iter().zip(got.iter()) {
            assert_eq!(n, m);
            assert!(
                b.defined() && b.abs().max().double_value(&[]) > 0.0,
                "{label}: {n}"
            );
            worst = worst.max(max_abs_diff(a, b));
        }
        eprintln!(
            "{}: {label} gradients vs full logits: max |diff| {worst:e} (max |g| {scale:e})",
            dir.display()
        );
        assert!(worst <= 1e-5 * scale.max(1.0), "{label}: {worst}");
    }
}

#[test]
fn chunked_scoring_equals_full_logits_on_the_builtin_model() {
    check_chunked_against_full(&fixture("arith/model"));
}

/// A tiny tied-embedding Llama made by transformers.
fn tied_llama(dir: &Path) -> u64 {
    let out = torch_ref(
        "hf_tiny_model.py",
        &[dir],
        &json!({"config": {"model_type": "llama", "vocab_size": 64, "hidden_size": 32,
                           "intermediate_size": 64, "num_hidden_layers": 2,
                           "num_attention_heads": 4, "num_key_value_heads": 2,
                           "max_position_embeddings": 32, "tie_word_embeddings": true},
                "dtype": "f32", "seed": 3}),
    );
    out["parameters"].as_u64().unwrap()
}

#[test]
fn chunked_scoring_equals_full_logits_on_a_tied_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tied");
    tied_llama(&dir);
    check_chunked_against_full(&dir);
}

#[test]
fn chunked_scoring_refuses_bad_pairs() {
    let comp = |pairs: &[(Vec<i64>, Vec<i64>)]| {
        Completions::new(pairs, 0, 32, 16, Device::Cpu).map(|_| ())
    };
    let err = |pairs: &[(Vec<i64>, Vec<i64>)]| comp(pairs).unwrap_err().to_string();
    assert!(err(&[]).contains("no (prompt, completion) pairs"));
    assert!(err(&[(vec![], vec![1])]).contains("prompt 0 is empty"));
    assert!(err(&[(vec![1], vec![40])]).contains("completion 0: token id 40"));
    assert!(err(&[(vec![1; 10], vec![1; 7])]).contains("exceeds max_position_embeddings 16"));
    assert!(comp(&[(vec![1; 10], vec![1; 6])]).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Memory plan

/// transformers' parameter count of a checkpoint folder.
fn hf_parameters(dir: &Path) -> u64 {
    let out = Command::new(torch_python())
        .args([
            "-c",
            "import sys; from transformers import AutoModelForCausalLM as M; \
             m = M.from_pretrained(sys.argv[1]); print(sum(p.numel() for p in m.parameters()))",
        ])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn memory_plan_counts_parameters_as_transformers_does() {
    let b = ModelShape::from_path(&fixture("arith/model")).unwrap();
    assert_eq!(b.parameters, hf_parameters(&fixture("arith/model")));
    assert_eq!(b.checkpoint_bytes, 4 * b.parameters);
    assert_eq!((b.hidden, b.layers, b.kv_heads, b.vocab), (128, 4, 2, 32));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tied");
    let hf = tied_llama(&dir);
    let t = ModelShape::from_path(&dir).unwrap();
    assert_eq!(t.parameters, hf);
    assert_eq!(t.head_dim, 8);
}

// ---------------------------------------------------------------------------------------------
// libtorch's CUDA backend

#[test]
fn cuda_backend_loads_on_demand() {
    warp::rl::cuda::load_backend().unwrap();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(
        maps.contains("libtorch_cuda.so"),
        "libtorch_cuda.so is not mapped"
    );
    // Without a GPU, libtorch now answers "no device" rather than failing.
    if !warp::rl::cuda::driver_present() {
        assert!(!tch::Cuda::is_available());
    }
}

// ---------------------------------------------------------------------------------------------
// The trainer: micro-batches, precision, saved task vectors, the memory plan

use warp::rl::trainer::{advantages, RlConfig, TrainDtype, Trainer};

fn builtin_cfg(micro_batch: usize, dtype: TrainDtype) -> RlConfig {
    RlConfig {
        model: fixture("arith/model").display().to_string(),
        batch: 4,
        n: 4,
        micro_batch,
        dtype,
        device: warp::device::Device::Cpu,
        ..RlConfig::default()
    }
}

/// (prompt ids, completion ids) pairs.
type Pairs = Vec<(Vec<i64>, Vec<i64>)>;

/// Pairs of the built-in vocabulary (prompts of 2–6 tokens after BOS, completions of 0–6) and
/// rewards, in groups of 4 per prompt.
fn fixed_samples() -> (Pairs, Vec<f64>) {
    let mut rng = SplitMix64::stream(21, 5);
    let mut pairs = Vec::new();
    for g in 0..4 {
        let p: Vec<i64> = std::iter::once(1)
            .chain((0..2 + rng.below(5)).map(|_| 4 + rng.below(28) as i64))
            .collect();
        for j in 0..4 {
            let len = if g == 1 && j == 2 { 0 } else { rng.below(7) };
            pairs.push((
                p.clone(),
                (0..len).map(|_| 3 + rng.below(29) as i64).collect(),
            ));
        }
    }
    let rewards = (0..16).map(|_| rng.next_open01()).collect();
    (pairs, rewards)
}

/// The loss of the full batch computed as the trainer did before micro-batching: full-logits
/// scores of policy and anchor (`score_at`), r_β, RLOO advantages, −mean(A · log π); its
/// gradients by parameter.
fn reference_gradients(
    t: &Trainer,
    pairs: &[(Vec<i64>, Vec<i64>)],
    rewards: &[f64],
) -> HashMap<String, Tensor> {
    let c = &t.cfg;
    for (_, mut v) in t.policy.vs.variables() {
        v.zero_grad();
    }
    let pol = score_at(&t.policy, pairs, 0, c.temperature).unwrap();
    let anc = tch::no_grad(|| score_at(&t.ema, pairs, 0, c.temperature).unwrap());
    let seq = pol.logprobs.sum_dim_intlist(-1, false, Kind::Float);
    let log_ratio = seq.detach() - anc.logprobs.sum_dim_intlist(-1, false, Kind::Float);
    let r = Tensor::from_slice(&rewards.iter().map(|&x| x as f32).collect::<Vec<_>>());
    let adv = advantages(&(r - log_ratio * c.beta), c.n, c.baseline);
    (-(adv.detach() * &seq).mean(Kind::Float)).backward();
    t.policy
        .vs
        .variables()
        .into_iter()
        .map(|(n, v)| (n, v.grad().to_kind(Kind::Float).detach().copy()))
        .collect()
}

/// Adds N(0, 0.05²) noise from a seeded stream (not libtorch's global generator, which tests
/// running in parallel share) to every weight of `m`, in name order.
fn perturb(m: &CausalLm, seed: u64) {
    let mut rng = SplitMix64::stream(seed, 6);
    let mut vars: Vec<(String, Tensor)> = m.vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (_, mut v) in vars {
            let noise: Vec<f32> = (0..v.numel())
                .map(|_| (0.05 * rng.normal()) as f32)
                .collect();
            let noise = Tensor::from_slice(&noise)
                .view(v.size().as_slice())
                .to_kind(v.kind());
            v += noise;
        }
    });
}

#[test]
fn micro_batched_gradient_equals_the_full_batch_gradient() {
    let (pairs, rewards) = fixed_samples();
    let tmp = tempfile::tempdir().unwrap();
    let mut full: Option<HashMap<String, Tensor>> = None;
    // 16: one micro-batch; 8 and 4: whole prompt groups (one pass); 3 and 1: groups split
    // (a no-graph pass for the RLOO baselines first).
    for k in [16, 8, 4, 3, 1] {
        let mut t = Trainer::new(
            builtin_cfg(k, TrainDtype::F32),
            &tmp.path().join(format!("k{k}")),
            &warp::progress::Silent,
        )
        .unwrap();
        perturb(&t.ema, 9);
        let want = reference_gradients(&t, &pairs, &rewards);
        let sums = t.accumulate_gradient(&pairs, &rewards, true).unwrap();
        let got: HashMap<String, Tensor> = t.gradients().unwrap().into_iter().collect();
        let scale = want
            .values()
            .map(|g| g.abs().max().double_value(&[]))
            .fold(0.0, f64::max);
        let worst = want
            .iter()
            .map(|(n, g)| max_abs_diff(g, &got[n]))
            .fold(0.0, f64::max);
        eprintln!(
            "micro-batch {k}: max |grad − full-logits reference| {worst:e} (max |g| {scale:e}), \
             loss {:.6}, KL(anchor) {:.4}",
            sums.loss, sums.kl_anchor
        );
        assert!(scale > 0.0 && sums.kl_anchor > 0.0);
        assert!(worst <= 2e-5 * scale, "micro-batch {k}: {worst}");
        if let Some(f) = &full {
            let d = f
                .iter()
                .map(|(n, g)| max_abs_diff(g, &got[n]))
                .fold(0.0, f64::max);
            assert!(d <= 2e-5 * scale, "micro-batch {k} vs 16: {d}");
        } else {
            full = Some(got);
        }
    }
}

#[test]
fn bf16_micro_batches_sum_their_gradients_in_f32() {
    let (pairs, rewards) = fixed_samples();
    let tmp = tempfile::tempdir().unwrap();
    let grads = |k: usize| -> HashMap<String, Tensor> {
        let mut t = Trainer::new(
            builtin_cfg(k, TrainDtype::Bf16),
            &tmp.path().join(format!("k{k}")),
            &warp::progress::Silent,
        )
        .unwrap();
        t.accumulate_gradient(&pairs, &rewards, false).unwrap();
        t.gradients().unwrap().into_iter().collect()
    };
    let (a, b) = (grads(16), grads(4));
    let scale = a
        .values()
        .map(|g| g.abs().max().double_value(&[]))
        .fold(0.0, f64::max);
    let worst = a
        .iter()
        .map(|(n, g)| max_abs_diff(g, &b[n]))
        .fold(0.0, f64::max);
    eprintln!("bf16: micro-batch 4 vs 16: max |diff| {worst:e} (max |g| {scale:e})");
    // bf16 forward passes of different batch shapes round differently: a few bf16 ulps.
    assert!(scale > 0.0 && worst <= 2e-2 * scale, "{worst}");
}

/// A reward program in `dir`: the share of the completion's words w<k> with k divisible by 3.
fn word_reward(dir: &Path) -> String {
    let p = dir.join("reward.py");
    std::fs::write(
        &p,
        "import json, sys\n\
         for line in sys.stdin:\n    \
         w = json.loads(line)['completion'].split()\n    \
         hits = [x for x in w if x[1:].isdigit() and int(x[1:]) % 3 == 0]\n    \
         print(len(hits) / max(len(w), 1))\n",
    )
    .unwrap();
    format!("cmd:{} {}", crate::common::python(), p.display())
}

/// Prompts of the word-level vocabulary of `tests/ref/hf_tiny_model.py` (words w4 … w{vocab-1}).
fn word_prompts(dir: &Path, vocab: u64) -> PathBuf {
    let mut rng = SplitMix64::stream(3, 7);
    let text: String = (0..12)
        .map(|_| {
            let words: Vec<String> = (0..2 + rng.below(4))
                .map(|_| format!("w{}", 4 + rng.below(vocab - 4)))
                .collect();
            format!("{}\n", json!({"prompt": words.join(" ")}))
        })
        .collect();
    let p = dir.join("prompts.jsonl");
    std::fs::write(&p, text).unwrap();
    p
}

/// Tiny random models made by transformers (with the word-level tokenizer), one process.
fn hf_models(models: &[(PathBuf, Value, &str)]) -> Vec<Value> {
    let req: Vec<Value> = models
        .iter()
        .map(|(out, config, dtype)| {
            json!({"out": out, "config": config, "dtype": dtype, "seed": 1, "tokenizer": true})
        })
        .collect();
    torch_ref("hf_tiny_model.py", &[], &json!({ "models": req }))
        .as_array()
        .unwrap()
        .clone()
}

fn tiny_llama() -> Value {
    json!({"model_type": "llama", "vocab_size": 64, "hidden_size": 32,
           "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "max_position_embeddings": 64,
           "tie_word_embeddings": false})
}

/// f32 values of every tensor of a checkpoint, by name.
fn weights(dir: &Path) -> HashMap<String, Vec<f32>> {
    let ck = warp::io::Checkpoint::open(dir).unwrap();
    ck.tensors()
        .iter()
        .map(|t| {
            let v = warp::rl::model::read_tensor(&ck, &t.name, Kind::Float, Device::Cpu).unwrap();
            (t.name.clone(), values(&v))
        })
        .collect()
}

#[test]
fn updates_below_the_inits_half_ulp_still_give_task_vectors() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("llama-bf16");
    hf_models(&[(model.clone(), tiny_llama(), "bf16")]);
    let prompts = word_prompts(tmp.path(), 64);
    let reward = word_reward(tmp.path());
    let run = |out: &str, extra: &[&str]| {
        let out = tmp.path().join(out);
        let mut args = vec![
            model.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--prompts",
            prompts.to_str().unwrap(),
            "--reward",
            &reward,
            "--steps",
            "2",
            "--batch",
            "2",
            "-n",
            "2",
            "--max-new-tokens",
            "4",
            // One Adam step moves a weight by at most ~lr: 2 × 1e-8 is above half an f32 step
            // of every weight below 0.3 in magnitude, and below half a bf16 step of every
            // weight above 2e-5 (the init's N(0, 0.02) weights, but for ~0.1 % of them).
            "--lr",
            "1e-8",
            "--warmup",
            "0",
            "--dtype",
            "f32",
            "--threads",
            "1",
            "-q",
        ];
        args.extend_from_slice(extra);
        crate::common::ok("warp-rl", &args, tmp.path());
        weights(&out.join("final/policy"))
    };
    let init = weights(&model);
    let exact = run("f32-saves", &[]);
    let rounded = run("same-saves", &["--save-dtype", "same"]);
    let (mut moved, mut total, mut below, mut kept) = (0, 0, 0, 0);
    for (name, w0) in &init {
        let w = &exact[name];
        // The changes are below the init's half-ulp: rounding the f32 result to bf16 gives the
        // init back …
        below += bf16_of(w).iter().zip(w0).filter(|(a, b)| a == b).count();
        // … so `--save-dtype same` saved the init: its task vector is (almost) all zeros.
        kept += rounded[name].iter().zip(w0).filter(|(a, b)| a == b).count();
        moved += w.iter().zip(w0).filter(|(a, b)| a != b).count();
        total += w.len();
    }
    eprintln!(
        "lr 1e-8 from a bf16 init: {moved}/{total} f32-saved weights differ from the init; \
         {below}/{total} round back to it in bf16; a bf16 save kept {kept}/{total}"
    );
    assert!(
        below * 1000 >= total * 998,
        "{below}/{total} below half a bf16 step"
    );
    assert!(
        kept * 1000 >= total * 998,
        "{kept}/{total} kept by a bf16 save"
    );
    assert!(
        moved * 2 > total,
        "only {moved}/{total} weights carry a task vector"
    );
}

#[test]
fn dry_run_prints_the_plan_and_max_memory_refuses_before_loading() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = out.to_str().unwrap();
    let plan = crate::common::ok(
        "warp-rl",
        &["--dry-run", "-o", o, "--micro-batch", "16"],
        tmp.path(),
    );
    for want in [
        "policy weights",
        "Adam moments",
        "KV cache",
        "activations",
        "estimated peak",
        "micro-batch: 16",
        // Generation has its own batch (the whole 64 sequences of the tiny built-in model).
        "generation batch: 64",
        "generation, per generation batch of 64",
        "shared prompts' KV cache",
    ] {
        assert!(plan.contains(want), "{want} not in:\n{plan}");
    }
    assert!(!out.exists(), "--dry-run wrote the run folder");
    // A limit below the resident part: no micro-batch fits.
    crate::common::fails(
        "warp-rl",
        &["-o", o, "--max-memory", "100MB"],
        tmp.path(),
        &["--max-memory", "no micro-batch fits"],
    );
    // A limit that micro-batch 8 meets but 64 does not.
    let cfg = |k| RlConfig {
        micro_batch: k,
        device: warp::device::Device::Cpu,
        ..RlConfig::default()
    };
    let peak = |k| {
        warp::rl::memory::for_run(&cfg(k), &warp::progress::Silent)
            .unwrap()
            .plan
            .peak()
    };
    assert!(peak(8) < peak(64));
    let limit = format!("{}", peak(8));
    let e = crate::common::fails(
        "warp-rl",
        &[
            "-o",
            o,
            "--micro-batch",
            "64",
            "--device",
            "cpu",
            "--max-memory",
            &limit,
        ],
        tmp.path(),
        &["--max-memory", "would fit"],
    );
    assert!(e.lines().count() <= 2, "{e}");
    assert!(!out.exists(), "a refused run wrote its folder");
}

/// A tiny config of each supported family (transformers' names and fields).
fn family_configs() -> Vec<(&'static str, Value)> {
    let base = |model_type: &str, extra: Value| {
        let mut c = json!({
            "model_type": model_type, "vocab_size": 64, "hidden_size": 32,
            "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 64,
            "tie_word_embeddings": false
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    vec![
        ("llama", base("llama", json!({}))),
        ("mistral", base("mistral", json!({"sliding_window": 4}))),
        ("qwen2", base("qwen2", json!({"tie_word_embeddings": true}))),
        ("qwen3", base("qwen3", json!({"head_dim": 16}))),
        (
            "gemma",
            base(
                "gemma",
                json!({"num_key_value_heads": 1, "head_dim": 16, "tie_word_embeddings": true}),
            ),
        ),
        (
            "gemma2",
            base(
                "gemma2",
                json!({"head_dim": 16, "tie_word_embeddings": true, "sliding_window": 4,
                       "attn_logit_softcapping": 2.0, "final_logit_softcapping": 3.0,
                       "query_pre_attn_scalar": 12}),
            ),
        ),
        (
            "gemma3_text",
            base(
                "gemma3_text",
                json!({"head_dim": 16, "tie_word_embeddings": true, "sliding_window": 4,
                       "sliding_window_pattern": 2, "final_logit_softcapping": 5.0}),
            ),
        ),
        ("phi3", base("phi3", json!({"partial_rotary_factor": 0.5}))),
    ]
}

/// The common flags of the small `warp-rl` runs below.
fn small_run<'a>(model: &'a str, out: &'a str, prompts: &'a str, reward: &'a str) -> Vec<&'a str> {
    vec![
        model,
        "-o",
        out,
        "--prompts",
        prompts,
        "--reward",
        reward,
        "--batch",
        "2",
        "-n",
        "2",
        "--max-new-tokens",
        "4",
        "--warmup",
        "0",
        "--device",
        "cpu",
        "--threads",
        "1",
        "-q",
    ]
}

#[test]
fn bf16_trains_bf16_and_f32_checkpoints_of_every_family() {
    let tmp = tempfile::tempdir().unwrap();
    let mut models = Vec::new();
    for (name, config) in family_configs() {
        for dtype in ["f32", "bf16"] {
            models.push((
                tmp.path().join(format!("{name}-{dtype}")),
                config.clone(),
                dtype,
            ));
        }
    }
    hf_models(&models);
    let prompts = word_prompts(tmp.path(), 64);
    let reward = word_reward(tmp.path());
    for (dir, _, dtype) in &models {
        let out = dir.with_extension("run");
        let (m, o, p) = (
            dir.to_str().unwrap(),
            out.to_str().unwrap(),
            prompts.to_str().unwrap(),
        );
        let mut args = small_run(m, o, p, &reward);
        args.extend(["--dtype", "bf16", "--steps", "2", "--lr", "1e-3"]);
        crate::common::ok("warp-rl", &args, tmp.path());
        let run: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
        assert_eq!(run["config"]["dtype"], "bf16");
        // Saved in f32, different from the init: the f32 masters.
        let ck = warp::io::Checkpoint::open(out.join("final/policy")).unwrap();
        assert!(
            ck.tensors().iter().all(|t| t.dtype == warp::io::DType::F32),
            "{}",
            dir.display()
        );
        let (init, fin) = (weights(dir), weights(&out.join("final/policy")));
        let changed = fin.iter().filter(|(n, w)| init[*n] != **w).count();
        for line in std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
        {
            let v: Value = serde_json::from_str(line).unwrap();
            for k in ["kl_anchor", "entropy", "loss", "grad_norm"] {
                assert!(
                    v[k].as_f64().is_some_and(f64::is_finite),
                    "{}: {k} in {line}",
                    dir.display()
                );
            }
        }
        eprintln!(
            "{} ({dtype} checkpoint), --dtype bf16: {changed}/{} tensors trained",
            dir.display(),
            fin.len()
        );
        assert!(
            changed * 2 > fin.len(),
            "{}: {changed} tensors changed",
            dir.display()
        );
    }
}

/// Cosine and norm ratio of two task vectors (flattened over all tensors).
fn compare_deltas(
    init: &HashMap<String, Vec<f32>>,
    a: &HashMap<String, Vec<f32>>,
    b: &HashMap<String, Vec<f32>>,
) -> (f64, f64) {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (n, w0) in init {
        for ((x, y), z) in a[n].iter().zip(&b[n]).zip(w0) {
            let (da, db) = ((x - z) as f64, (y - z) as f64);
            ab += da * db;
            aa += da * da;
            bb += db * db;
        }
    }
    (ab / (aa.sqrt() * bb.sqrt()), aa.sqrt() / bb.sqrt())
}

#[test]
fn bf16_at_lr_1e6_changes_the_weights_and_tracks_an_f32_run() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("llama-f32");
    hf_models(&[(model.clone(), tiny_llama(), "f32")]);
    let prompts = word_prompts(tmp.path(), 64);
    let reward = word_reward(tmp.path());
    let run = |dtype: &str| {
        let out = tmp.path().join(format!("run-{dtype}"));
        let (m, o, p) = (
            model.to_str().unwrap(),
            out.to_str().unwrap(),
            prompts.to_str().unwrap(),
        );
        let mut args = small_run(m, o, p, &reward);
        args.extend([
            "--dtype", dtype, "--steps", "4", "--lr", "1e-6", "--seed", "3",
        ]);
        crate::common::ok("warp-rl", &args, tmp.path());
        weights(&out.join("final/policy"))
    };
    let init = weights(&model);
    let (b, f) = (run("bf16"), run("f32"));
    let (cos, ratio) = compare_deltas(&init, &b, &f);
    let moved = b
        .iter()
        .map(|(n, w)| w.iter().zip(&init[n]).filter(|(x, y)| x != y).count())
        .sum::<usize>();
    let total: usize = init.values().map(Vec::len).sum();
    eprintln!("lr 1e-6, 4 steps: bf16 moved {moved}/{total} weights; task vectors bf16 vs f32: cos {cos:.4}, norm ratio {ratio:.4}");
    assert!(moved * 2 > total, "{moved}/{total}");
    // Tolerance of the first steps: the bf16 run samples and scores in bf16, so its gradients
    // differ from the f32 run's by bf16 rounding; Adam's normalised steps keep the directions.
    assert!(
        cos >= 0.98 && (ratio - 1.0).abs() <= 0.05,
        "cos {cos}, ratio {ratio}"
    );
}

/// Parses the "estimated peak" line of a `--dry-run` plan (`estimated peak: 1.23 GiB`).
fn plan_peak_bytes(plan: &str) -> f64 {
    let line = plan
        .lines()
        .find(|l| l.contains("estimated peak"))
        .unwrap_or_else(|| panic!("no estimated peak in:\n{plan}"));
    let mut words = line
        .split_whitespace()
        .skip_while(|w| *w != "peak:")
        .skip(1);
    let v: f64 = words.next().unwrap().parse().unwrap();
    let unit = match words.next().unwrap() {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        u => panic!("unit {u} in {line}"),
    };
    v * unit
}

/// The memory plan's estimate against the peak RSS of the same run on the CPU. The model is a
/// random Qwen2-shaped one made by transformers (vocabulary 32 000, hidden 256, 4 layers: 19.4M
/// parameters, 78 MB in f32) so that its tensors (six f32 copies: policy, gradients, two Adam
/// moments, EMA, init), not the runtime term, make most of the estimate. The peak is ru_maxrss
/// of the run's process tree, read by a Python parent whose only child is warp-rl (the reward
/// program's processes are far smaller).
#[test]
fn dry_run_estimate_is_within_25_percent_of_the_measured_peak_rss() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("qwen2");
    let config = json!({"model_type": "qwen2", "vocab_size": 32000, "hidden_size": 256,
        "intermediate_size": 704, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 256, "tie_word_embeddings": false});
    hf_models(&[(model.clone(), config, "f32")]);
    let prompts = word_prompts(tmp.path(), 32000);
    let reward = word_reward(tmp.path());
    let out = tmp.path().join("run");
    let args: Vec<&str> = vec![
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--reward",
        &reward,
        "--batch",
        "4",
        "-n",
        "4",
        "--max-new-tokens",
        "32",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--threads",
        "1",
        "-q",
    ];
    let mut dry = args.clone();
    dry.push("--dry-run");
    let plan = crate::common::ok("warp-rl", &dry, tmp.path());
    let estimate = plan_peak_bytes(&plan);
    let measure = "import resource, subprocess, sys\n\
                   subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n\
                   print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n";
    let bin = crate::common::bin("warp-rl");
    let o = Command::new(crate::common::python())
        .arg("-c")
        .arg(measure)
        .arg(&bin)
        .args(&args)
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "warp-rl failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let peak: f64 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    let ratio = estimate / peak;
    eprintln!(
        "plan {:.0} MiB, measured peak RSS {:.0} MiB, ratio {ratio:.3}",
        estimate / 1048576.0,
        peak / 1048576.0
    );
    assert!(
        (0.75..=1.25).contains(&ratio),
        "estimate {estimate} vs peak RSS {peak} (ratio {ratio:.3}):\n{plan}"
    );
}

/// TF32 for f32 matrix products (used on CUDA devices): the flag is set through libtorch's own
/// context, read back by libtorch's getter (process-wide; CPU ops do not use it).
#[test]
fn tf32_is_enabled_through_libtorchs_context() {
    assert_eq!(warp::rl::cuda::allow_tf32(), Ok(true));
}
