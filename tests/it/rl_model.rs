//! The tch Llama decoder (feature `rl`) against an independent reference, `transformers`'
//! `LlamaForCausalLM` (tests/ref/hf_logits.py, run with `$WARP_TORCH_PYTHON` from
//! `source scripts/setup-torch.sh`), plus KV-cache, scoring, sampling and save/load checks.
#![cfg(feature = "rl")]

use crate::common::{self, fixture};

use std::path::Path;

use tch::{Device, Kind, Tensor};
use warp::io::{Checkpoint, CheckpointWriter, DType, OutTensor, WriterOptions};
use warp::rl::{generate, score, CausalLm, GenerateOptions, Tokenizer};

const TOL: f64 = 1e-4;

/// Logits `[b, t, v]` from transformers for `ids` (and optional mask/positions).
fn hf_logits(dir: &Path, ids: &Tensor, mask: Option<&Tensor>, pos: Option<&Tensor>) -> Tensor {
    let to_json = |t: &Tensor| -> serde_json::Value {
        let v: Vec<Vec<i64>> = Vec::try_from(t).unwrap();
        serde_json::json!(v)
    };
    let req = serde_json::json!({
        "input_ids": to_json(ids),
        "attention_mask": mask.map(to_json),
        "position_ids": pos.map(to_json),
    });
    let v = common::torch_ref("hf_logits.py", &[dir], &req);
    let shape: Vec<i64> = serde_json::from_value(v["shape"].clone()).unwrap();
    let logits: Vec<Vec<Vec<f32>>> = serde_json::from_value(v["logits"].clone()).unwrap();
    let flat: Vec<f32> = logits.into_iter().flatten().flatten().collect();
    Tensor::from_slice(&flat).view(shape.as_slice())
}

/// Left-padded batch: ids, mask, position ids (cumsum - 1, as transformers' generate).
fn batch(prompts: &[Vec<i64>], pad: i64) -> (Tensor, Tensor, Tensor) {
    let w = prompts.iter().map(Vec::len).max().unwrap();
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for p in prompts {
        ids.extend(
            std::iter::repeat(pad)
                .take(w - p.len())
                .chain(p.iter().copied()),
        );
        mask.extend(
            std::iter::repeat(0i64)
                .take(w - p.len())
                .chain(std::iter::repeat(1).take(p.len())),
        );
    }
    let shape = [prompts.len() as i64, w as i64];
    let ids = Tensor::from_slice(&ids).view(shape);
    let mask = Tensor::from_slice(&mask).view(shape);
    let pos = (mask.cumsum(1, Kind::Int64) - 1).clamp_min(0);
    (ids, mask, pos)
}

/// Max |a - b| over the positions where `mask` is 1 (`a`, `b`: `[b, t, v]`).
fn max_diff_masked(a: &Tensor, b: &Tensor, mask: &Tensor) -> f64 {
    let m = mask.to_kind(Kind::Float).unsqueeze(-1);
    ((a - b).abs() * m).max().double_value(&[])
}

fn max_abs(a: &Tensor) -> f64 {
    a.abs().max().double_value(&[])
}

fn prompts() -> Vec<Vec<i64>> {
    vec![
        vec![1, 20, 5, 6, 17, 9, 30, 12],
        vec![1, 7, 8],
        vec![1, 33, 4, 4, 4, 21],
    ]
}

/// Our logits vs transformers' on a left-padded batch; returns (max diff, max |logit|).
fn compare_with_hf(dir: &Path) -> (f64, f64) {
    let model = CausalLm::load(dir, Device::Cpu).unwrap();
    let (ids, mask, pos) = batch(&prompts(), 0);
    let ours = tch::no_grad(|| model.forward(&ids, &mask, &pos, None).unwrap());
    let theirs = hf_logits(dir, &ids, Some(&mask), Some(&pos));
    assert_eq!(ours.size(), theirs.size());
    let d = max_diff_masked(&ours, &theirs, &mask);
    let mag = max_abs(&(theirs * mask.to_kind(Kind::Float).unsqueeze(-1)));
    eprintln!(
        "{}: max |ours - transformers| = {d:.3e} (max |logit| {mag:.3})",
        dir.display()
    );
    assert!(d < TOL, "{}: logits differ by {d}", dir.display());
    (d, mag)
}

#[test]
fn fixture_f32_logits_match_transformers() {
    compare_with_hf(&fixture("tiny-llama-f32-3shard"));
}

#[test]
fn fixture_bf16_logits_match_transformers() {
    compare_with_hf(&fixture("tiny-llama-bf16"));
}

/// Deterministic N(0, 1) draws (SplitMix64 + Box-Muller), independent of libtorch's global
/// generator so that parallel tests cannot change each other's weights.
struct Normal(u64);

impl Normal {
    fn new(seed: i64) -> Normal {
        Normal(seed as u64)
    }
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (((z ^ (z >> 31)) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn next(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// Writes a randomly initialised model (weights N(0, std), norms 1 + N(0, 0.1)) with `config`
/// into `dir` through our writer, in `dtype`, sharded.
fn write_random_model(dir: &Path, config: serde_json::Value, std: f64, seed: i64) {
    let c = warp::rl::ModelConfig::from_json(&config).unwrap();
    let mut rng = Normal::new(seed);
    let h = c.hidden_size as i64;
    let (q, kv) = (
        (c.num_attention_heads * c.head_dim) as i64,
        (c.num_key_value_heads * c.head_dim) as i64,
    );
    let (inter, vocab) = (c.intermediate_size as i64, c.vocab_size as i64);
    let mut tensors: Vec<(String, Vec<i64>)> =
        vec![("model.embed_tokens.weight".into(), vec![vocab, h])];
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        tensors.push((format!("{p}.input_layernorm.weight"), vec![h]));
        for (n, o, inp, bias) in [
            ("self_attn.q_proj", q, h, c.qkv_bias),
            ("self_attn.k_proj", kv, h, c.qkv_bias),
            ("self_attn.v_proj", kv, h, c.qkv_bias),
            ("self_attn.o_proj", h, q, c.o_bias),
            ("mlp.gate_proj", inter, h, c.mlp_bias),
            ("mlp.up_proj", inter, h, c.mlp_bias),
            ("mlp.down_proj", h, inter, c.mlp_bias),
        ] {
            tensors.push((format!("{p}.{n}.weight"), vec![o, inp]));
            if bias {
                tensors.push((format!("{p}.{n}.bias"), vec![o]));
            }
        }
        tensors.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
    }
    tensors.push(("model.norm.weight".into(), vec![h]));
    if !c.tie_word_embeddings {
        tensors.push(("lm_head.weight".into(), vec![vocab, h]));
    }
    let out: Vec<OutTensor> = tensors
        .iter()
        .map(|(n, s)| OutTensor {
            name: n.clone(),
            dtype: DType::F32,
            shape: s.iter().map(|&d| d as usize).collect(),
        })
        .collect();
    let opts = WriterOptions {
        max_shard_size: 40_000,
        ..WriterOptions::default()
    };
    let mut w = CheckpointWriter::create(dir, out, &opts).unwrap();
    for (n, s) in &tensors {
        let numel: i64 = s.iter().product();
        let (mean, sd) = if n.ends_with("norm.weight") {
            (1.0, 0.1)
        } else {
            (0.0, std)
        };
        let v: Vec<f32> = (0..numel)
            .map(|_| (mean + sd * rng.next()) as f32)
            .collect();
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.write(&bytes).unwrap();
    }
    w.add_file(
        "config.json",
        serde_json::to_string_pretty(&config).unwrap().as_bytes(),
    )
    .unwrap();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        let bytes = std::fs::read(fixture("tiny-llama-bf16").join(f)).unwrap();
        w.add_file(f, &bytes).unwrap();
    }
    w.finish().unwrap();
}

fn gqa_untied_config() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": 48, "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 3, "num_attention_heads": 8, "num_key_value_heads": 2,
        "head_dim": 8, "max_position_embeddings": 128, "rms_norm_eps": 1e-6,
        "rope_theta": 500000.0, "rope_scaling": {"rope_type": "linear", "factor": 2.0},
        "hidden_act": "silu", "tie_word_embeddings": false, "attention_bias": false,
        "mlp_bias": false, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
        "torch_dtype": "float32"
    })
}

fn tied_bias_config() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": 48, "hidden_size": 48, "intermediate_size": 80,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "hidden_act": "silu", "tie_word_embeddings": true, "attention_bias": true,
        "mlp_bias": true, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
        "torch_dtype": "float32"
    })
}

#[test]
fn random_gqa_untied_logits_match_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gqa");
    write_random_model(&dir, gqa_untied_config(), 0.15, 7);
    assert!(
        Checkpoint::open(&dir).unwrap().shards.len() > 1,
        "want a sharded checkpoint"
    );
    let (_, mag) = compare_with_hf(&dir);
    assert!(
        mag > 1.0,
        "random model too flat to be a test: max |logit| {mag}"
    );
}

#[test]
fn random_tied_with_biases_logits_match_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tied");
    write_random_model(&dir, tied_bias_config(), 0.15, 11);
    let (_, mag) = compare_with_hf(&dir);
    assert!(
        mag > 1.0,
        "random model too flat to be a test: max |logit| {mag}"
    );
}

/// Generation with the KV cache records the logits each token was drawn from; the same
/// sequences run through the model without a cache must give the same logits, and scoring the
/// completions must give their log-softmax.
fn check_cache_and_score(model: &CausalLm, opts: &GenerateOptions) -> (f64, f64) {
    let g = generate(model, &prompts(), opts).unwrap();
    let steps = g.logits.as_ref().unwrap().size()[1];
    let w = g.prompt_len;
    let pos = (g.attention_mask.cumsum(1, Kind::Int64) - 1).clamp_min(0);
    let full = tch::no_grad(|| {
        model
            .forward(&g.tokens, &g.attention_mask, &pos, None)
            .unwrap()
    });
    let at = full.narrow(1, w - 1, steps);
    let live = g.attention_mask.narrow(1, w, steps);
    let d_cache = max_diff_masked(g.logits.as_ref().unwrap(), &at, &live);

    let pairs: Vec<(Vec<i64>, Vec<i64>)> =
        prompts().into_iter().zip(g.completions.clone()).collect();
    let s = tch::no_grad(|| score(model, &pairs, opts.pad_id).unwrap());
    let lp = at.log_softmax(-1, Kind::Float);
    let tokens = g.tokens.narrow(1, w, steps);
    let expect = lp.gather(2, &tokens.unsqueeze(-1), false).squeeze_dim(-1);
    let cm = s.mask.size()[1];
    let expect = expect.narrow(1, 0, cm) * &s.mask;
    let d_score = (&s.logprobs - expect).abs().max().double_value(&[]);
    (d_cache, d_score)
}

#[test]
fn cached_sampling_logits_equal_uncached_and_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gqa");
    write_random_model(&dir, gqa_untied_config(), 0.15, 3);
    for path in [fixture("tiny-llama-f32-3shard"), dir] {
        let model = CausalLm::load(&path, Device::Cpu).unwrap();
        for (temperature, top_k, top_p) in [(1.0, 0, 1.0), (0.9, 10, 0.9), (0.0, 0, 1.0)] {
            let opts = GenerateOptions {
                max_new_tokens: 12,
                temperature,
                top_k,
                top_p,
                seed: 5,
                eos_ids: vec![2],
                pad_id: 0,
                record_logits: true,
            };
            let (dc, ds) = check_cache_and_score(&model, &opts);
            eprintln!(
                "{} T={temperature} k={top_k} p={top_p}: cache vs no-cache {dc:.3e}, score {ds:.3e}",
                path.display()
            );
            assert!(dc < TOL, "cache changes logits by {dc}");
            assert!(ds < TOL, "score differs by {ds}");
        }
    }
}

#[test]
fn scoring_a_pair_alone_equals_scoring_it_in_a_padded_batch() {
    let model = CausalLm::load(fixture("tiny-llama-f32-3shard"), Device::Cpu).unwrap();
    let pairs = vec![
        (vec![1, 20, 5, 6, 17, 9, 30, 12], vec![7, 8, 2]),
        (vec![1, 7], vec![9, 10, 11, 12, 13, 2]),
    ];
    let both = tch::no_grad(|| score(&model, &pairs, 0).unwrap());
    for (i, p) in pairs.iter().enumerate() {
        let one = tch::no_grad(|| score(&model, std::slice::from_ref(p), 0).unwrap());
        let n = p.1.len() as i64;
        let d = (both.logprobs.get(i as i64).narrow(0, 0, n) - one.logprobs.get(0))
            .abs()
            .max()
            .double_value(&[]);
        assert!(d < 1e-5, "pair {i}: {d}");
        assert!(one.logprobs.max().double_value(&[]) <= 0.0);
    }
}

fn sampling_opts() -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: 40,
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        seed: 42,
        eos_ids: vec![2],
        pad_id: 0,
        record_logits: false,
    }
}

#[test]
fn sampling_is_deterministic_given_the_seed_and_stops_at_eos() {
    let model = CausalLm::load(fixture("tiny-llama-bf16"), Device::Cpu).unwrap();
    let mut opts = sampling_opts();
    let a = generate(&model, &prompts(), &opts).unwrap();
    let b = generate(&model, &prompts(), &opts).unwrap();
    assert_eq!(a.completions, b.completions);
    opts.seed = 43;
    let c = generate(&model, &prompts(), &opts).unwrap();
    assert_ne!(
        a.completions, c.completions,
        "a different seed should sample differently"
    );
    for (comp, fin) in a.completions.iter().zip(&a.finished) {
        assert!(comp.len() <= 40);
        // EOS only ever as the last token, and `finished` says whether it came.
        assert!(!comp[..comp.len().saturating_sub(1)].contains(&2));
        assert_eq!(*fin, comp.last() == Some(&2));
    }
    // The result is as wide as the longest completion: no column where every row has ended.
    let w = a.prompt_len;
    let longest = a.completions.iter().map(Vec::len).max().unwrap() as i64;
    assert_eq!(a.tokens.size()[1], w + longest);
    // Too long for max_position_embeddings (64): an error, not a crash.
    let e = generate(
        &model,
        &prompts(),
        &GenerateOptions {
            max_new_tokens: 60,
            ..opts
        },
    )
    .err()
    .expect("must refuse");
    assert!(e.to_string().contains("max_position_embeddings"), "{e}");
}

#[test]
fn top_k_and_top_p_filter_and_their_limits_are_greedy() {
    let model = CausalLm::load(fixture("tiny-llama-bf16"), Device::Cpu).unwrap();
    let opts = sampling_opts();
    let run = |o: GenerateOptions| generate(&model, &prompts(), &o).unwrap();
    // Top-k: every sampled token is among the k largest logits of its step.
    let k3 = run(GenerateOptions {
        top_k: 3,
        record_logits: true,
        ..opts.clone()
    });
    let logits = k3.logits.as_ref().unwrap();
    for (i, comp) in k3.completions.iter().enumerate() {
        for (s, &tok) in comp.iter().enumerate() {
            let row = logits.get(i as i64).get(s as i64);
            let (top, _) = row.topk(3, -1, true, true);
            assert!(
                row.double_value(&[tok]) >= top.double_value(&[2]),
                "row {i} step {s}"
            );
        }
    }
    // Top-p 1e-6 keeps only the argmax, as top-k 1: both are greedy.
    let greedy = run(GenerateOptions {
        temperature: 0.0,
        ..opts.clone()
    });
    let p_small = run(GenerateOptions {
        top_p: 1e-6,
        ..opts.clone()
    });
    let k1 = run(GenerateOptions {
        top_k: 1,
        ..opts.clone()
    });
    assert_eq!(p_small.completions, greedy.completions);
    assert_eq!(k1.completions, greedy.completions);
}

#[test]
fn save_then_load_gives_the_same_logits_and_a_normal_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (ids, mask, pos) = batch(&prompts(), 0);
    for name in ["tiny-llama-f32-3shard", "tiny-llama-bf16"] {
        let src = fixture(name);
        let model = CausalLm::load(&src, Device::Cpu).unwrap();
        let dest = tmp.path().join(name);
        model
            .save(&dest, Some(&src), None, &WriterOptions::default())
            .unwrap();
        for f in ["config.json", "tokenizer.json", "generation_config.json"] {
            assert!(dest.join(f).is_file(), "{f} not copied");
        }
        // Same names, dtypes, shapes and (weights unchanged) the same bytes as the input.
        let a = Checkpoint::open(&src).unwrap();
        let b = Checkpoint::open(&dest).unwrap();
        let mut na: Vec<_> = a
            .tensors()
            .iter()
            .map(|t| (t.name.clone(), t.dtype, t.shape.clone()))
            .collect();
        let mut nb: Vec<_> = b
            .tensors()
            .iter()
            .map(|t| (t.name.clone(), t.dtype, t.shape.clone()))
            .collect();
        na.sort_by(|x, y| x.0.cmp(&y.0));
        nb.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(na, nb);
        for t in a.tensors() {
            let u = b.get(&t.name).unwrap();
            assert!(
                a.bytes(t, 0..t.nbytes) == b.bytes(u, 0..u.nbytes),
                "{}",
                t.name
            );
        }
        let again = CausalLm::load(&dest, Device::Cpu).unwrap();
        let l1 = tch::no_grad(|| model.forward(&ids, &mask, &pos, None).unwrap());
        let l2 = tch::no_grad(|| again.forward(&ids, &mask, &pos, None).unwrap());
        assert_eq!(max_diff_masked(&l1, &l2, &mask), 0.0);
    }
    // A changed model saves its change: perturb, save as bf16, reload, compare with bf16 rounding.
    let src = fixture("tiny-llama-f32-3shard");
    let model = CausalLm::load(&src, Device::Cpu).unwrap();
    tch::no_grad(|| {
        for (_, mut t) in model.vs.variables() {
            let _ = t.g_add_scalar_(0.01);
        }
    });
    let dest = tmp.path().join("perturbed");
    model
        .save(
            &dest,
            Some(&src),
            Some(DType::BF16),
            &WriterOptions::default(),
        )
        .unwrap();
    let back = CausalLm::load(&dest, Device::Cpu).unwrap();
    let vars = back.vs.variables();
    for (name, t) in model.vs.variables() {
        let rounded = t.to_kind(Kind::BFloat16).to_kind(Kind::Float);
        assert!(vars[&name].equal(&rounded), "{name}");
    }
    // And transformers reads what we wrote.
    compare_with_hf(&dest);
}

#[test]
fn unsupported_configs_and_missing_tensors_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("tiny-llama-bf16");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("model_type", "falcon".into(), "model_type"),
        ("hidden_act", "gelu_pytorch_tanh".into(), "hidden_act"),
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "llama3", "factor": 8.0}),
            "rope_scaling",
        ),
        ("num_key_value_heads", 3.into(), "num_key_value_heads"),
    ];
    for (i, (field, value, named)) in cases.into_iter().enumerate() {
        let dir = tmp.path().join(format!("c{i}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
        let mut c = cfg.clone();
        c[field] = value;
        std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
        let e = CausalLm::load(&dir, Device::Cpu)
            .err()
            .expect("must fail")
            .to_string();
        assert!(
            e.contains(named) && e.contains("config.json"),
            "{field}: {e}"
        );
    }
    // More layers than the file has: refused before any allocation (issue 22), naming the key
    // and the layers the checkpoint holds.
    let dir = tmp.path().join("layers");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let mut c = cfg.clone();
    c["num_hidden_layers"] = 3.into();
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    let e = CausalLm::load(&dir, Device::Cpu)
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        e.contains("config.json")
            && e.contains("num_hidden_layers")
            && e.contains("3")
            && e.contains("2 layer"),
        "{e}"
    );
    // A wrong hidden size: the tensor and both shapes are named.
    let mut c = cfg;
    c["intermediate_size"] = 80.into();
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    let e = CausalLm::load(&dir, Device::Cpu)
        .err()
        .expect("must fail")
        .to_string();
    assert!(e.contains("gate_proj") && e.contains("80"), "{e}");
}

#[test]
fn tokenizer_round_trips_and_knows_its_special_ids() {
    let tok = Tokenizer::from_dir(&fixture("tiny-llama-bf16")).unwrap();
    assert_eq!(tok.bos_id, Some(1));
    assert_eq!(tok.eos_ids, vec![2]);
    assert_eq!(tok.pad_id, 0);
    let text = "Q: 12+7=? A: 19";
    let ids = tok.encode(text).unwrap();
    assert_eq!(ids[0], 1, "BOS first");
    assert_eq!(ids.len(), text.chars().count() + 1);
    assert_eq!(tok.decode(&ids).unwrap(), text);
    assert_eq!(tok.encode_plain("19").unwrap().len(), 2);
    // The tokenizer has fewer tokens than the model's embedding rows (48), as often in HF models.
    assert!(
        tok.vocab_size() > 20 && tok.vocab_size() <= 48,
        "{}",
        tok.vocab_size()
    );
}

#[test]
fn scores_carry_gradients_to_every_parameter() {
    let model = CausalLm::load(fixture("tiny-llama-f32-3shard"), Device::Cpu).unwrap();
    let pairs = vec![(vec![1, 20, 5, 6], vec![7, 8, 2]), (vec![1, 7], vec![9, 2])];
    let s = score(&model, &pairs, 0).unwrap();
    let loss = -(s.logprobs.sum(Kind::Float));
    loss.backward();
    for (name, t) in model.vs.variables() {
        let g = t.grad();
        assert!(g.defined(), "{name}: no gradient");
        let n = g.norm().double_value(&[]);
        assert!(n.is_finite() && n > 0.0, "{name}: gradient norm {n}");
    }
}
