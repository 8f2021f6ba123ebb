//! Every supported family against transformers 5.24.0 (feature `rl`; reference:
//! tests/ref/hf_family.py run with `$WARP_TORCH_PYTHON` from `source scripts/setup-torch.sh`).
//!
//! Per family, transformers makes a tiny random model from a config (the odd cases switched on:
//! GQA/MQA, tied and untied heads, soft-capping at caps small enough to bend the values, sliding
//! windows shorter than the sequences, Phi-3's fused projections, rope scaling, Gemma 3's layer
//! pattern) and saves it; then, on that folder:
//! - our logits equal transformers' (f32, tolerance 1e-4 as the Llama tests), and in bf16
//!   within the bf16 tolerance below;
//! - logits recorded during cached sampling equal an uncached forward over the samples, and
//!   `score` equals their log-softmax;
//! - greedy `generate` returns transformers' greedy `generate` tokens (f32, one left-padded batch),
//!   and so does the `warp generate --greedy` command (given a character-level tokenizer);
//! - a perturbed copy saved by us (in the other dtype) loads in transformers with equal logits
//!   and the same tensor names and shapes;
//! - the family's `…ForSequenceClassification` scores equal our `RewardModel`'s;
//! - forward and backward with bf16 parameters work on the bf16 and the f32 checkpoint.
#![cfg(feature = "rl")]

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};
use warp::io::{Checkpoint, DType, WriterOptions};
use warp::rl::reward_model::RewardModel;
use warp::rl::{generate, score, CausalLm, GenerateOptions};

/// f32: as the Llama tests (tests/rl_model.rs).
const TOL: f64 = 1e-4;
/// bf16 against transformers in bf16, relative to the largest |logit|: both round every
/// activation to 8 significant bits, in a different order of operations (fused attention
/// kernel here, eager matmuls there), so they differ by a few bf16 steps (2^-8 relative).
const TOL_BF16_REL: f64 = 0.05;

/// One transformers process serving a test's requests (tests/ref/hf_family.py).
struct Reference {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Reference {
    fn start() -> Reference {
        let mut child = Command::new(common::torch_python())
            .arg(common::repo_root().join("tests/ref/hf_family.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot run $WARP_TORCH_PYTHON (see scripts/setup-torch.sh)");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Reference {
            child,
            stdin,
            stdout,
        }
    }

    fn call(&mut self, req: Value) -> Value {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{req}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("hf_family.py answered {line:?} ({e})"));
        assert!(
            v["ok"] == true,
            "hf_family.py {}: {}",
            req["op"],
            v["error"]
        );
        v
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

struct Case {
    class: &'static str,
    seqcls: &'static str,
    config: Value,
    save_dtype: &'static str,
    /// New tokens in the cache check (Phi-3 LongRoPE switches factors past its original
    /// context, in transformers too, so cached and uncached agree only below it).
    cache_new_tokens: usize,
    /// Extra prompts longer than the LongRoPE original context.
    long_prompts: Vec<Vec<i64>>,
}

fn base(model_type: &str, extra: Value) -> Value {
    let mut c = json!({
        "model_type": model_type, "vocab_size": 64, "hidden_size": 32,
        "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 64, "rms_norm_eps": 1e-6,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": false
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn prompts() -> Vec<Vec<i64>> {
    vec![
        vec![1, 20, 5, 6, 17, 9, 30, 12, 44, 61, 33],
        vec![1, 7, 8, 50],
        vec![1, 33, 4, 4, 4, 21, 58, 13],
    ]
}

/// Left-padded batch: ids, mask, position ids (cumsum - 1, as transformers' generate).
fn batch(prompts: &[Vec<i64>]) -> (Tensor, Tensor, Tensor) {
    let w = prompts.iter().map(Vec::len).max().unwrap();
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for p in prompts {
        ids.extend(vec![0; w - p.len()].into_iter().chain(p.iter().copied()));
        mask.extend(vec![0i64; w - p.len()].into_iter().chain(vec![1; p.len()]));
    }
    let shape = [prompts.len() as i64, w as i64];
    let ids = Tensor::from_slice(&ids).view(shape);
    let mask = Tensor::from_slice(&mask).view(shape);
    let pos = (mask.cumsum(1, Kind::Int64) - 1).clamp_min(0);
    (ids, mask, pos)
}

fn to_json(t: &Tensor) -> Value {
    let v: Vec<Vec<i64>> = Vec::try_from(t).unwrap();
    json!(v)
}

fn batch_json(prompts: &[Vec<i64>]) -> Value {
    let (ids, mask, pos) = batch(prompts);
    json!({"input_ids": to_json(&ids), "attention_mask": to_json(&mask),
           "position_ids": to_json(&pos)})
}

/// `[b, t, v]` from nested JSON lists.
fn tensor3(v: &Value) -> Tensor {
    let rows: Vec<Vec<Vec<f32>>> = serde_json::from_value(v.clone()).unwrap();
    let (b, t, n) = (rows.len(), rows[0].len(), rows[0][0].len());
    let flat: Vec<f32> = rows.into_iter().flatten().flatten().collect();
    Tensor::from_slice(&flat).view([b as i64, t as i64, n as i64])
}

/// transformers' logits for each batch of `prompt_sets`.
fn hf_logits(
    r: &mut Reference,
    dir: &Path,
    dtype: &str,
    prompt_sets: &[&[Vec<i64>]],
) -> Vec<Tensor> {
    let batches: Vec<Value> = prompt_sets.iter().map(|p| batch_json(p)).collect();
    let v = r.call(json!({"op": "logits", "dir": dir, "dtype": dtype, "batches": batches}));
    v["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(tensor3)
        .collect()
}

fn ours(model: &CausalLm, prompts: &[Vec<i64>]) -> Tensor {
    let (ids, mask, pos) = batch(prompts);
    tch::no_grad(|| model.forward(&ids, &mask, &pos, None).unwrap()).to_kind(Kind::Float)
}

/// (max |a − b| over real tokens, max |b| over real tokens).
fn compare(a: &Tensor, b: &Tensor, prompts: &[Vec<i64>]) -> (f64, f64) {
    assert_eq!(a.size(), b.size());
    let (_, mask, _) = batch(prompts);
    let m = mask.to_kind(Kind::Float).unsqueeze(-1);
    let d = ((a - b).abs() * &m).max().double_value(&[]);
    let mag = (b.abs() * m).max().double_value(&[]);
    (d, mag)
}

/// The f32 and bf16 logit checks on `dir`.
fn check_logits(r: &mut Reference, name: &str, dir: &Path, case: &Case) {
    let p = prompts();
    let mut sets: Vec<&[Vec<i64>]> = vec![&p];
    if !case.long_prompts.is_empty() {
        sets.push(&case.long_prompts);
    }
    let model = CausalLm::load(dir, Device::Cpu).unwrap();
    for (set, theirs) in sets.iter().zip(hf_logits(r, dir, "float32", &sets)) {
        let (d, mag) = compare(&ours(&model, set), &theirs, set);
        eprintln!("{name} f32: max |ours - transformers| = {d:.3e} (max |logit| {mag:.3})");
        assert!(d < TOL, "{name}: f32 logits differ by {d}");
        assert!(
            mag > 1.0,
            "{name}: random model too flat to be a test ({mag})"
        );
    }
    let hf32 = &hf_logits(r, dir, "float32", &[&p])[0];
    let hf16 = &hf_logits(r, dir, "bfloat16", &[&p])[0];
    let model16 = CausalLm::load_with_kind(dir, Device::Cpu, Kind::BFloat16).unwrap();
    let ours16 = ours(&model16, &p);
    let (d, mag) = compare(&ours16, hf16, &p);
    let (d_hf, _) = compare(hf16, hf32, &p);
    let (d_ours, _) = compare(&ours16, hf32, &p);
    eprintln!(
        "{name} bf16: max |ours - transformers| = {d:.3e}; vs transformers f32: ours {d_ours:.3e}, \
         transformers' own {d_hf:.3e} (max |logit| {mag:.3})"
    );
    assert!(
        d < TOL_BF16_REL * mag,
        "{name}: bf16 logits differ by {d} (max |logit| {mag})"
    );
}

/// Cached sampling vs uncached forward vs `score`, sampled and greedy (f32).
fn check_cache(name: &str, model: &CausalLm, new_tokens: usize) {
    for (temperature, top_k, top_p) in [(1.0, 0, 1.0), (0.9, 10, 0.9), (0.0, 0, 1.0)] {
        let opts = GenerateOptions {
            max_new_tokens: new_tokens,
            temperature,
            top_k,
            top_p,
            seed: 5,
            eos_ids: vec![2],
            pad_id: 0,
            record_logits: true,
        };
        let g = generate(model, &prompts(), &opts).unwrap();
        let steps = g.logits.as_ref().unwrap().size()[1];
        let w = g.prompt_len;
        let pos = (g.attention_mask.cumsum(1, Kind::Int64) - 1).clamp_min(0);
        let full = tch::no_grad(|| {
            model
                .forward(&g.tokens, &g.attention_mask, &pos, None)
                .unwrap()
        });
        let at = full.narrow(1, w - 1, steps);
        let live = g
            .attention_mask
            .narrow(1, w, steps)
            .to_kind(Kind::Float)
            .unsqueeze(-1);
        let d_cache = ((g.logits.as_ref().unwrap() - &at).abs() * &live)
            .max()
            .double_value(&[]);
        let pairs: Vec<(Vec<i64>, Vec<i64>)> =
            prompts().into_iter().zip(g.completions.clone()).collect();
        let s = tch::no_grad(|| score(model, &pairs, 0).unwrap());
        let lp = at.log_softmax(-1, Kind::Float);
        let tokens = g.tokens.narrow(1, w, steps);
        let expect = lp.gather(2, &tokens.unsqueeze(-1), false).squeeze_dim(-1);
        let expect = expect.narrow(1, 0, s.mask.size()[1]) * &s.mask;
        let d_score = (&s.logprobs - expect).abs().max().double_value(&[]);
        eprintln!(
            "{name} T={temperature} k={top_k} p={top_p}: cache vs no cache {d_cache:.3e}, \
             score {d_score:.3e}"
        );
        assert!(
            d_cache < TOL,
            "{name}: the cache changes logits by {d_cache}"
        );
        assert!(d_score < TOL, "{name}: score differs by {d_score}");
    }
}

fn check_greedy(r: &mut Reference, name: &str, dir: &Path, model: &CausalLm) -> Vec<Vec<i64>> {
    let n = 10;
    let theirs = r.call(json!({"op": "generate", "dir": dir, "prompts": prompts(),
        "max_new_tokens": n, "eos_token_id": 2, "pad_token_id": 0}));
    let theirs: Vec<Vec<i64>> = serde_json::from_value(theirs["tokens"].clone()).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: n,
        temperature: 0.0,
        eos_ids: vec![2],
        pad_id: 0,
        ..GenerateOptions::default()
    };
    let g = generate(model, &prompts(), &opts).unwrap();
    eprintln!("{name} greedy: {:?}", g.completions);
    assert_eq!(
        g.completions, theirs,
        "{name}: greedy tokens differ from transformers'"
    );
    theirs
}

/// One character per token id 4..63 (the tiny configs' vocabulary of 64), so that text prompts
/// encode to exactly the ids of `prompts()`.
const CHARS: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWX";

/// A character-level tokenizer over CHARS (BOS added to every text) into `dir`.
fn write_char_tokenizer(dir: &Path) {
    let mut vocab = serde_json::Map::new();
    for (i, c) in CHARS.chars().enumerate() {
        vocab.insert(c.to_string(), json!(i + 4));
    }
    let special = |id: usize, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<pad>"), special(1, "<s>"), special(2, "</s>"),
            special(3, "<unk>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "."}, "behavior": "Isolated",
            "invert": false},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 0}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        json!({"add_bos_token": true, "bos_token": "<s>", "eos_token": "</s>",
            "pad_token": "<pad>", "unk_token": "<unk>",
            "tokenizer_class": "PreTrainedTokenizerFast"})
        .to_string(),
    )
    .unwrap();
}

/// `warp generate --greedy` (the binary, f32) on a copy of the family's model with a
/// character-level tokenizer (BOS added, as the prompts start with it) returns transformers'
/// greedy tokens: the same ids up to its first EOS, then only transformers' padding.
fn check_generate_command(name: &str, dir: &Path, tmp: &Path, theirs: &[Vec<i64>]) {
    let gen = tmp.join("generate-model");
    std::fs::create_dir(&gen).unwrap();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), gen.join(e.file_name())).unwrap();
        }
    }
    write_char_tokenizer(&gen);
    let chars: Vec<char> = CHARS.chars().collect();
    let mut lines = String::new();
    for p in prompts() {
        assert_eq!(p[0], 1);
        let text: String = p[1..].iter().map(|&t| chars[t as usize - 4]).collect();
        lines += &json!({ "prompt": text }).to_string();
        lines.push('\n');
    }
    let file = tmp.join("generate-prompts.jsonl");
    std::fs::write(&file, lines).unwrap();
    let out = common::ok(
        "warp",
        &[
            "generate",
            gen.to_str().unwrap(),
            "--prompts",
            file.to_str().unwrap(),
            "--greedy",
            "--max-new-tokens",
            "10",
            "--device",
            "cpu",
            "--threads",
            "1",
            "-q",
        ],
        tmp,
    );
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), theirs.len(), "{name}: {out}");
    for (i, (row, theirs)) in rows.iter().zip(theirs).enumerate() {
        assert_eq!(row["index"], json!(i), "{name}");
        assert_eq!(
            row["prompt_tokens"],
            json!(prompts()[i].len()),
            "{name}: prompt {i}"
        );
        let ours: Vec<i64> = serde_json::from_value(row["token_ids"].clone()).unwrap();
        let (head, tail) = theirs.split_at(ours.len().min(theirs.len()));
        assert_eq!(ours, head, "{name}: warp generate, prompt {i}");
        let eos = ours.last() == Some(&2);
        assert_eq!(
            row["finish_reason"],
            if eos { "eos" } else { "length" },
            "{name}"
        );
        assert!(
            (eos && tail.iter().all(|&t| t == 0)) || (!eos && tail.is_empty()),
            "{name}: prompt {i}: transformers went on after ours stopped: {theirs:?}"
        );
    }
    eprintln!("{name}: warp generate --greedy equals transformers' greedy generate");
}

fn layout(dir: &Path) -> Vec<(String, Vec<usize>)> {
    let ck = Checkpoint::open(dir).unwrap();
    let mut v: Vec<_> = ck
        .tensors()
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect();
    v.sort();
    v
}

/// Perturbs, saves in the other dtype, and checks transformers reads what we wrote. Returns the
/// saved folder.
fn check_save(r: &mut Reference, name: &str, src: &Path, case: &Case, tmp: &Path) -> PathBuf {
    let model = CausalLm::load(src, Device::Cpu).unwrap();
    tch::no_grad(|| {
        for (_, mut t) in model.vs.variables() {
            let _ = t.g_add_scalar_(0.01);
        }
    });
    let (dtype, hf_dtype) = match case.save_dtype {
        "bfloat16" => (DType::F32, "float32"),
        _ => (DType::BF16, "bfloat16"),
    };
    let dest = tmp.join(format!("saved-{hf_dtype}"));
    model
        .save(&dest, Some(src), Some(dtype), &WriterOptions::default())
        .unwrap();
    assert_eq!(
        layout(&dest),
        layout(src),
        "{name}: tensor names or shapes differ"
    );
    let back = CausalLm::load(&dest, Device::Cpu).unwrap();
    let p = prompts();
    let theirs = &hf_logits(r, &dest, "float32", &[&p])[0];
    let (d, mag) = compare(&ours(&back, &p), theirs, &p);
    let (moved, _) = compare(
        &ours(&back, &p),
        &ours(&CausalLm::load(src, Device::Cpu).unwrap(), &p),
        &p,
    );
    eprintln!(
        "{name} saved as {hf_dtype}: max |ours - transformers| = {d:.3e} (max |logit| {mag:.3}; \
         the perturbation moved logits by {moved:.3})"
    );
    assert!(d < TOL, "{name}: logits of the saved copy differ by {d}");
    assert!(
        moved > 1e-3,
        "{name}: the saved copy is not the perturbed model"
    );
    dest
}

fn check_seqcls(r: &mut Reference, name: &str, case: &Case, tmp: &Path) {
    let dir = tmp.join("seqcls");
    let tok = common::repo_root().join("fixtures/tiny-llama-bf16");
    let mut config = case.config.clone();
    config["num_labels"] = 1.into();
    r.call(
        json!({"op": "make", "dir": dir, "class": case.seqcls, "config": config,
        "seed": 3, "std": 0.2, "save_dtype": case.save_dtype, "tokenizer_dir": tok}),
    );
    let mut seqs = prompts();
    seqs.push(vec![1, 9, 10, 0]); // ends in the pad id: pooled at the token before
    seqs.push(vec![5]);
    let theirs: Vec<f64> = serde_json::from_value(
        r.call(json!({"op": "seqcls", "dir": dir, "seqs": seqs}))["scores"].clone(),
    )
    .unwrap();
    let rm = RewardModel::load(&dir, Device::Cpu, 2).unwrap();
    let ours = rm.score_ids(&seqs).unwrap();
    let d = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let mag = theirs.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    eprintln!("{name} seqcls: max |ours - transformers| = {d:.3e} (max |score| {mag:.3})");
    assert!(
        d < TOL,
        "{name}: scores {ours:?} vs transformers {theirs:?}"
    );
    assert!(
        theirs.iter().any(|s| (s - theirs[0]).abs() > 1e-3),
        "{name}: flat scores"
    );
}

/// bf16 parameters: forward and backward, finite non-zero gradients for every parameter.
fn check_bf16_backward(name: &str, dir: &Path) {
    let model = CausalLm::load_with_kind(dir, Device::Cpu, Kind::BFloat16).unwrap();
    let pairs: Vec<(Vec<i64>, Vec<i64>)> = prompts()
        .into_iter()
        .zip([vec![7, 8, 2], vec![9, 10, 11, 2], vec![12]])
        .collect();
    let s = score(&model, &pairs, 0).unwrap();
    assert!(bool::try_from(s.logprobs.isfinite().all()).unwrap());
    (-s.logprobs.sum(Kind::Float)).backward();
    for (p, t) in model.vs.variables() {
        assert_eq!(t.kind(), Kind::BFloat16, "{name}: {p} is not bf16");
        let g = t.grad();
        assert!(g.defined(), "{name}: {p} has no gradient");
        let n = g.to_kind(Kind::Float).norm().double_value(&[]);
        assert!(n.is_finite() && n > 0.0, "{name}: {p} gradient norm {n}");
    }
}

fn run(name: &str, case: Case) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    let mut r = Reference::start();
    r.call(
        json!({"op": "make", "dir": dir, "class": case.class, "config": case.config,
        "seed": 1, "std": 0.15, "save_dtype": case.save_dtype}),
    );
    check_logits(&mut r, name, &dir, &case);
    let model = CausalLm::load(&dir, Device::Cpu).unwrap();
    check_cache(name, &model, case.cache_new_tokens);
    let greedy = check_greedy(&mut r, name, &dir, &model);
    check_generate_command(name, &dir, tmp.path(), &greedy);
    let saved = check_save(&mut r, name, &dir, &case, tmp.path());
    check_seqcls(&mut r, name, &case, tmp.path());
    check_bf16_backward(name, &dir);
    check_bf16_backward(name, &saved);
}

fn case(
    class: &'static str,
    seqcls: &'static str,
    config: Value,
    save_dtype: &'static str,
) -> Case {
    Case {
        class,
        seqcls,
        config,
        save_dtype,
        cache_new_tokens: 10,
        long_prompts: Vec::new(),
    }
}

#[test]
fn llama3_rope_gqa_untied() {
    let config = base(
        "llama",
        json!({"num_attention_heads": 8, "head_dim": 8, "hidden_size": 32,
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8}}),
    );
    run(
        "llama3",
        case(
            "LlamaForCausalLM",
            "LlamaForSequenceClassification",
            config,
            "float32",
        ),
    );
}

#[test]
fn mistral_sliding_window_shorter_than_the_sequence() {
    let config = base("mistral", json!({"sliding_window": 4}));
    run(
        "mistral",
        case(
            "MistralForCausalLM",
            "MistralForSequenceClassification",
            config,
            "bfloat16",
        ),
    );
}

#[test]
fn qwen2_biases_tied_and_sliding_upper_layers() {
    let config = base(
        "qwen2",
        json!({"tie_word_embeddings": true, "use_sliding_window": true, "sliding_window": 4,
            "max_window_layers": 1, "rope_theta": 1000000.0}),
    );
    run(
        "qwen2",
        case(
            "Qwen2ForCausalLM",
            "Qwen2ForSequenceClassification",
            config,
            "bfloat16",
        ),
    );
}

#[test]
fn qwen3_qk_norm_explicit_head_dim() {
    let config = base("qwen3", json!({"head_dim": 16}));
    run(
        "qwen3",
        case(
            "Qwen3ForCausalLM",
            "Qwen3ForSequenceClassification",
            config,
            "float32",
        ),
    );
}

#[test]
fn gemma_mqa_tied_wide_heads() {
    let config = base(
        "gemma",
        json!({"num_key_value_heads": 1, "head_dim": 16, "tie_word_embeddings": true,
            "hidden_act": "gelu_pytorch_tanh"}),
    );
    run(
        "gemma",
        case(
            "GemmaForCausalLM",
            "GemmaForSequenceClassification",
            config,
            "bfloat16",
        ),
    );
}

#[test]
fn gemma2_softcapping_alternating_windows() {
    let config = base(
        "gemma2",
        json!({"head_dim": 16, "tie_word_embeddings": true, "sliding_window": 4,
            "attn_logit_softcapping": 2.0, "final_logit_softcapping": 3.0,
            "query_pre_attn_scalar": 12, "num_hidden_layers": 3}),
    );
    run(
        "gemma2",
        case(
            "Gemma2ForCausalLM",
            "Gemma2ForSequenceClassification",
            config,
            "float32",
        ),
    );
}

#[test]
fn gemma3_pattern_local_global_rope() {
    let config = base(
        "gemma3_text",
        json!({"head_dim": 16, "tie_word_embeddings": true, "sliding_window": 4,
            "num_hidden_layers": 4, "sliding_window_pattern": 2, "query_pre_attn_scalar": 24,
            "final_logit_softcapping": 5.0,
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}}}),
    );
    run(
        "gemma3",
        case(
            "Gemma3ForCausalLM",
            "Gemma3TextForSequenceClassification",
            config,
            "bfloat16",
        ),
    );
}

#[test]
fn phi3_fused_longrope_partial_rotary() {
    let config = base(
        "phi3",
        json!({"original_max_position_embeddings": 16, "partial_rotary_factor": 0.5,
            "rope_scaling": {"type": "longrope", "short_factor": [1.0, 1.25],
                "long_factor": [2.0, 3.5]}}),
    );
    let mut c = case(
        "Phi3ForCausalLM",
        "Phi3ForSequenceClassification",
        config,
        "float32",
    );
    // Positions 0..15 use the short factors; these reach 19 and 21.
    c.long_prompts = vec![
        (0..20).map(|i| 3 + (i * 7) % 60).collect(),
        (0..22).map(|i| 3 + (i * 11) % 60).collect(),
    ];
    c.cache_new_tokens = 4;
    run("phi3-longrope", c);
}

#[test]
fn phi3_tied_window_partial_rotary() {
    let config = base(
        "phi3",
        json!({"tie_word_embeddings": true, "sliding_window": 5, "partial_rotary_factor": 0.75,
            "num_key_value_heads": 4, "hidden_size": 64, "num_attention_heads": 4}),
    );
    run(
        "phi3-window",
        case(
            "Phi3ForCausalLM",
            "Phi3ForSequenceClassification",
            config,
            "bfloat16",
        ),
    );
}

/// End to end: `warp run` (two iterations, two runs each, a `cmd:` reward) on a tiny
/// Gemma-2-shaped model made by transformers (soft-capping, alternating sliding windows, tied
/// head), then the merged outputs and a trained policy load in transformers with logits equal
/// to ours.
#[test]
fn gemma2_pipeline_with_a_cmd_reward_loads_in_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let tok = t.join("tokenizer");
    std::fs::create_dir(&tok).unwrap();
    write_char_tokenizer(&tok);
    std::fs::write(tok.join("special_tokens_map.json"), "{}").unwrap();
    let model = t.join("gemma2");
    let config = base(
        "gemma2",
        json!({"head_dim": 16, "tie_word_embeddings": true, "sliding_window": 4,
            "attn_logit_softcapping": 2.0, "final_logit_softcapping": 3.0,
            "query_pre_attn_scalar": 12, "num_hidden_layers": 2}),
    );
    let mut r = Reference::start();
    r.call(
        json!({"op": "make", "dir": model, "class": "Gemma2ForCausalLM", "config": config,
        "seed": 5, "std": 0.15, "save_dtype": "float32", "tokenizer_dir": tok}),
    );
    let chars: Vec<char> = CHARS.chars().collect();
    let mut lines = String::new();
    for i in 0..12 {
        let text: String = (0..5)
            .map(|j| chars[(7 * i + 3 * j) % chars.len()])
            .collect();
        lines += &json!({ "prompt": text }).to_string();
        lines.push('\n');
    }
    let prompts = t.join("prompts.jsonl");
    std::fs::write(&prompts, lines).unwrap();
    // The reward: the share of digits in the completion (read as JSONL {prompt, completion}).
    let reward = t.join("reward.py");
    std::fs::write(
        &reward,
        format!(
            "#!{}\nimport json, sys\nfor line in sys.stdin:\n    c = json.loads(line)['completion']\n    \
             print(sum(ch.isdigit() for ch in c) / max(len(c), 1), flush=True)\n",
            common::python()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&reward, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cfg = t.join("gemma2.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"model = "{}"
prompts = "{}"
heldout = "{}"
reward = "cmd:{}"
iterations = 2
runs = 2
steps = 2
checkpoints = 1
init_anchor_runs = false
etas = [0.0, 0.5, 1.0]
eta = 0.5
rl_args = ["--batch", "4", "-n", "2", "--max-new-tokens", "6", "--lr", "1e-3"]
eval_prompts = 4
eval_samples = 1
threads = 1
"#,
            model.display(),
            prompts.display(),
            prompts.display(),
            reward.display()
        ),
    )
    .unwrap();
    let out = t.join("run");
    let table = common::ok(
        "warp",
        &["run", cfg.to_str().unwrap(), "-o", out.to_str().unwrap()],
        t,
    );
    eprintln!("{table}");
    assert!(table.contains("liti it2"), "{table}");
    let p = self::prompts();
    for dir in [
        out.join("iter-2/slerp/eta-0.50"),
        out.join("iter-2/slerp/eta-1.00"),
        out.join("iter-2/lerp"),
        out.join("iter-2/run-1/final/policy"),
    ] {
        assert!(dir.join("config.json").is_file(), "{}", dir.display());
        let theirs = &hf_logits(&mut r, &dir, "float32", &[&p])[0];
        let m = CausalLm::load(&dir, Device::Cpu).unwrap();
        let (d, mag) = compare(&ours(&m, &p), theirs, &p);
        eprintln!(
            "{}: max |ours - transformers| = {d:.3e} (max |logit| {mag:.3})",
            dir.display()
        );
        assert!(d < TOL, "{}: logits differ by {d}", dir.display());
    }
    // Training moved the weights: the iteration-2 SLERP is not the SFT model.
    let sft = CausalLm::load(&model, Device::Cpu).unwrap();
    let merged = CausalLm::load(out.join("iter-2/slerp/eta-1.00"), Device::Cpu).unwrap();
    let (d, _) = compare(&ours(&sft, &p), &ours(&merged, &p), &p);
    assert!(d > 1e-4, "the pipeline left the model unchanged ({d})");
}
