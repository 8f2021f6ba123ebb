//! `warp-sft`: the built-in supervised model. A tiny Llama trained from scratch on the noisy
//! addition corpus of [`super::task`], so that every tool has a default policy whose sampled
//! answers are right only about as often as the corpus (≈ 65 %) — room for a reward to help.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};
use tch::{Device, Kind};

use super::data::{write_prompts, PromptRecord};
use super::eval::{evaluate, SampleOptions};
use super::generate::score;
use super::model::LlamaModel;
use super::optim::{Adam, AdamConfig};
use super::reward::VerifyArith;
use super::rng::SplitMix64;
use super::task;
use super::tokenizer::Tokenizer;
use crate::error::{Error, IoContext, Result};
use crate::io::writer::{CheckpointWriter, OutTensor, Staging, WriterOptions};
use crate::io::DType;
use crate::progress::Reporter;

/// Characters of the built-in tokenizer (one token each), after the four specials.
const CHARS: &str = "0123456789+-*=?: QA";
const SPECIALS: [&str; 4] = ["<pad>", "<s>", "</s>", "<unk>"];

pub use super::settings::SftConfig;

/// `config.json` of the built-in model (a transformers LlamaForCausalLM).
pub fn model_config(c: &SftConfig) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 32,
        "hidden_size": c.hidden,
        "intermediate_size": c.intermediate,
        "num_hidden_layers": c.layers,
        "num_attention_heads": c.heads,
        "num_key_value_heads": c.kv_heads,
        "head_dim": c.hidden / c.heads,
        "hidden_act": "silu",
        "max_position_embeddings": 32,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": null,
        "attention_bias": false,
        "mlp_bias": false,
        "tie_word_embeddings": false,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "torch_dtype": "float32",
    })
}

/// The tokenizer and generation files of the built-in model (see [`char_tokenizer_files`]).
pub fn tokenizer_files() -> Vec<(&'static str, String)> {
    char_tokenizer_files(CHARS, 32)
}

/// The tokenizer and generation files of a built-in task: a character-level WordLevel
/// tokenizer.json over the specials and `chars` (BOS prepended by the post-processor), readable by
/// `tokenizers` and transformers' `PreTrainedTokenizerFast`.
pub(crate) fn char_tokenizer_files(chars: &str, max_length: usize) -> Vec<(&'static str, String)> {
    let mut vocab = serde_json::Map::new();
    for (i, t) in SPECIALS
        .iter()
        .map(|s| s.to_string())
        .chain(chars.chars().map(String::from))
        .enumerate()
    {
        vocab.insert(t, json!(i));
    }
    let added: Vec<Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let bos = json!({"SpecialToken": {"id": "<s>", "type_id": 0}});
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "."}, "behavior": "Isolated",
                          "invert": false},
        "post_processor": {"type": "TemplateProcessing",
            "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, bos,
                     {"Sequence": {"id": "B", "type_id": 0}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    });
    let tok_cfg = json!({
        "add_bos_token": true, "add_eos_token": false, "bos_token": "<s>", "eos_token": "</s>",
        "pad_token": "<pad>", "unk_token": "<unk>", "model_max_length": max_length,
        "clean_up_tokenization_spaces": false, "tokenizer_class": "PreTrainedTokenizerFast",
    });
    let special = json!({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
                         "unk_token": "<unk>"});
    let gen = json!({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0});
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
    vec![
        ("tokenizer.json", pretty(&tokenizer)),
        ("tokenizer_config.json", pretty(&tok_cfg)),
        ("special_tokens_map.json", pretty(&special)),
        ("generation_config.json", pretty(&gen)),
    ]
}

/// Writes randomly initialised weights (N(0, 0.02) matrices, unit norms; from `seed` through
/// our own generator, so the start does not depend on libtorch) and the companion files.
fn write_init(dir: &Path, c: &SftConfig) -> Result<()> {
    let cfg = model_config(c);
    let (h, i, v) = (c.hidden, c.intermediate, 32usize);
    let kv = c.kv_heads * (c.hidden / c.heads);
    let mut tensors = vec![OutTensor {
        name: "model.embed_tokens.weight".into(),
        dtype: DType::F32,
        shape: vec![v, h],
    }];
    for l in 0..c.layers {
        let p = format!("model.layers.{l}");
        for (n, shape) in [
            ("input_layernorm.weight", vec![h]),
            ("self_attn.q_proj.weight", vec![h, h]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.o_proj.weight", vec![h, h]),
            ("post_attention_layernorm.weight", vec![h]),
            ("mlp.gate_proj.weight", vec![i, h]),
            ("mlp.up_proj.weight", vec![i, h]),
            ("mlp.down_proj.weight", vec![h, i]),
        ] {
            tensors.push(OutTensor {
                name: format!("{p}.{n}"),
                dtype: DType::F32,
                shape,
            });
        }
    }
    for (n, shape) in [
        ("model.norm.weight", vec![h]),
        ("lm_head.weight", vec![v, h]),
    ] {
        tensors.push(OutTensor {
            name: n.into(),
            dtype: DType::F32,
            shape,
        });
    }
    let mut w = CheckpointWriter::create(dir, tensors.clone(), &WriterOptions::default())?;
    let mut rng = SplitMix64::stream(c.seed, 1);
    for t in &tensors {
        let n: usize = t.shape.iter().product();
        let norm = t.name.ends_with("norm.weight");
        let bytes: Vec<u8> = (0..n)
            .flat_map(|_| {
                let x = if norm {
                    1.0
                } else {
                    0.02 * rng.normal() as f32
                };
                x.to_le_bytes()
            })
            .collect();
        w.write(&bytes)?;
    }
    let pretty = serde_json::to_string_pretty(&cfg).unwrap_or_default() + "\n";
    w.add_file("config.json", pretty.as_bytes())?;
    for (name, text) in tokenizer_files() {
        w.add_file(name, text.as_bytes())?;
    }
    w.finish()?;
    Ok(())
}

/// What training measured.
#[derive(Debug, Clone)]
pub struct SftReport {
    /// Mean loss (nats per answer token, EOS included) over the last 100 steps.
    pub final_loss: f64,
    /// Sampled (temperature 1) accuracy on the held-out prompts, and its standard error.
    pub heldout_accuracy: (f64, f64),
    /// Greedy accuracy on the held-out prompts.
    pub greedy_accuracy: f64,
    pub train_seconds: f64,
}

/// Measures a model on the built-in task: sampled accuracy at temperature 1 (`samples` per
/// prompt) with its standard error, and greedy accuracy.
pub fn measure(
    model: &LlamaModel,
    tok: &Tokenizer,
    prompts: &[String],
    samples: usize,
    seed: u64,
) -> Result<((f64, f64), f64)> {
    let o = SampleOptions {
        samples,
        temperature: 1.0,
        max_new_tokens: 6,
        batch: 1024,
        seed,
    };
    let prompts: Vec<super::data::Prompt> = prompts
        .iter()
        .map(|p| super::data::Prompt::Text(p.clone()))
        .collect();
    let sampled = evaluate(model, tok, &prompts, &mut VerifyArith, None, &o)?;
    let greedy = evaluate(
        model,
        tok,
        &prompts,
        &mut VerifyArith,
        None,
        &SampleOptions {
            samples: 1,
            temperature: 0.0,
            ..o
        },
    )?;
    Ok(((sampled.reward, sampled.reward_se), greedy.reward))
}

/// Trains the built-in model and writes `out/` (all or nothing): `model/` (HF layout),
/// `train.jsonl`, `heldout.jsonl` and `sft.json` (settings and measured accuracy).
pub fn train(
    c: &SftConfig,
    out: &Path,
    force: bool,
    reporter: &dyn Reporter,
) -> Result<(PathBuf, SftReport)> {
    c.check()?;
    let staging = Staging::new(out, force)?;
    let init = staging.path().join("init");
    write_init(&init, c)?;
    let model = LlamaModel::load(&init, Device::Cpu)?;
    let tok = Tokenizer::from_dir(&init)?;
    let (train_set, heldout) = task::splits();
    let started = Instant::now();
    let final_loss = fit(&model, &tok, c, &train_set, &init, reporter)?;
    let train_seconds = started.elapsed().as_secs_f64();
    let prompts: Vec<String> = heldout.iter().map(|r| r.prompt.clone()).collect();
    reporter.message("measuring held-out accuracy");
    let (heldout_accuracy, greedy_accuracy) =
        measure(&model, &tok, &prompts, c.eval_samples, c.seed)?;
    let model_dir = staging.path().join("model");
    model.save(&model_dir, Some(&init), None, &WriterOptions::default())?;
    std::fs::remove_dir_all(&init).at(&init)?;
    write_prompts(&staging.path().join("train.jsonl"), &train_set)?;
    write_prompts(&staging.path().join("heldout.jsonl"), &heldout)?;
    let report = SftReport {
        final_loss,
        heldout_accuracy,
        greedy_accuracy,
        train_seconds,
    };
    let summary = json!({
        "task": "addition a+b= with a, b in 0..=99; corpus answers right with probability p_correct",
        "settings": c.to_json(),
        "final_loss": final_loss,
        "heldout_sampled_accuracy": heldout_accuracy.0,
        "heldout_sampled_accuracy_se": heldout_accuracy.1,
        "heldout_greedy_accuracy": greedy_accuracy,
        "eval": format!("temperature 1, {} samples per held-out prompt, seed {}", c.eval_samples, c.seed),
        "train_seconds": train_seconds,
        "torch_threads": tch::get_num_threads(),
        "warp_version": env!("CARGO_PKG_VERSION"),
    });
    let text = serde_json::to_string_pretty(&summary).unwrap_or_default() + "\n";
    crate::io::write_file_atomic(&staging.path().join("sft.json"), text.as_bytes())?;
    let done = staging.commit()?;
    Ok((done, report))
}

/// The supervised training loop on the noisy corpus over `train_set`'s operands; returns the
/// mean loss of the last 100 steps. `init` (the model's folder) names it in errors.
fn fit(
    model: &LlamaModel,
    tok: &Tokenizer,
    c: &SftConfig,
    train_set: &[PromptRecord],
    init: &Path,
    reporter: &dyn Reporter,
) -> Result<f64> {
    let eos = *tok
        .eos_ids
        .first()
        .ok_or_else(|| Error::format(init, "no EOS id"))?;
    let operands: Vec<(u64, u64)> = train_set
        .iter()
        .filter_map(|r| task::parse_prompt(&r.prompt))
        .collect();
    let prompt_ids: Vec<Vec<i64>> = train_set
        .iter()
        .map(|r| tok.encode(&r.prompt))
        .collect::<Result<_>>()?;
    let mut opt = Adam::new(
        model,
        AdamConfig {
            lr: c.lr,
            weight_decay: 0.01,
            warmup: c.warmup,
            grad_clip: 1.0,
            decay_steps: c.steps.saturating_sub(c.warmup),
            ..AdamConfig::default()
        },
    )?;
    let mut rng = SplitMix64::stream(c.seed, 2);
    let started = Instant::now();
    let mut recent = std::collections::VecDeque::with_capacity(100);
    reporter.start_steps("sft", c.steps);
    for step in 1..=c.steps {
        crate::cancel::check()?;
        let pairs: Vec<(Vec<i64>, Vec<i64>)> = (0..c.batch)
            .map(|_| {
                let k = rng.below(operands.len() as u64) as usize;
                let (a, b) = operands[k];
                let ans = task::noisy_answer(a, b, c.p_correct, &mut rng).to_string();
                let mut ids = tok.encode_plain(&ans)?;
                ids.push(eos);
                Ok((prompt_ids[k].clone(), ids))
            })
            .collect::<Result<_>>()?;
        opt.zero_grad();
        let s = score(model, &pairs, tok.pad_id)?;
        let loss = -s.logprobs.sum(Kind::Float) / s.mask.sum(Kind::Float);
        loss.backward();
        opt.step()?;
        let l = loss.double_value(&[]);
        if recent.len() == 100 {
            recent.pop_front();
        }
        recent.push_back(l);
        reporter.advance(1);
        if step % 50 == 0 || step == c.steps {
            reporter.status(&format!("loss {l:.4}"));
        }
        if step % 500 == 0 {
            let mean = recent.iter().sum::<f64>() / recent.len() as f64;
            reporter.message(&format!(
                "step {step}/{}: loss {mean:.4} (mean of the last {}), {:.0} s",
                c.steps,
                recent.len(),
                started.elapsed().as_secs_f64()
            ));
        }
    }
    reporter.finish();
    Ok(recent.iter().sum::<f64>() / recent.len().max(1) as f64)
}

/// The prompts of a prompt file as plain strings.
pub fn prompt_texts(records: &[PromptRecord]) -> Vec<String> {
    records.iter().map(|r| r.prompt.clone()).collect()
}
