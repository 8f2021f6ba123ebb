//! Supervised training of the built-in tasks' models (`warp sft`): the pieces every task's
//! builder shares — a character-level tokenizer, a tiny Llama's config and its random init, the
//! Adam schedule and the training loop — and the builders: [`arith`] here (re-exported: it is
//! the default task), cipher in [`super::cipher`]. The tasks' data is [`crate::tasks`].

pub mod arith;

use std::collections::VecDeque;
use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};
use tch::Tensor;

use super::data::PromptRecord;
use super::optim::{Adam, AdamConfig};
use crate::error::Result;
use crate::io::writer::{CheckpointWriter, OutTensor, WriterOptions};
use crate::io::DType;
use crate::progress::Reporter;
use crate::rng::SplitMix64;

pub use super::settings::SftConfig;
pub use arith::{measure, model_config, tokenizer_files, train, SftReport};

/// The special tokens of the character-level tokenizers, ids 0–3.
const SPECIALS: [&str; 4] = ["<pad>", "<s>", "</s>", "<unk>"];

/// The sizes of a tiny Llama.
#[derive(Debug, Clone, PartialEq)]
pub struct Dims {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
}

/// The vocabulary size of a character-level tokenizer over `chars`.
pub fn char_vocab_size(chars: &str) -> usize {
    SPECIALS.len() + chars.chars().count()
}

/// `config.json` of a tiny Llama of a built-in task: a causal LM (`LlamaForCausalLM`), or
/// (`reward_model`) a `LlamaForSequenceClassification` with one label.
pub fn llama_config(d: &Dims, vocab: usize, max_positions: usize, reward_model: bool) -> Value {
    let mut v = json!({
        "architectures": [if reward_model { "LlamaForSequenceClassification" } else { "LlamaForCausalLM" }],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": d.hidden,
        "intermediate_size": d.intermediate,
        "num_hidden_layers": d.layers,
        "num_attention_heads": d.heads,
        "num_key_value_heads": d.kv_heads,
        "head_dim": d.hidden / d.heads,
        "hidden_act": "silu",
        "max_position_embeddings": max_positions,
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
    });
    if reward_model {
        v["id2label"] = json!({"0": "LABEL_0"});
        v["label2id"] = json!({"LABEL_0": 0});
    }
    v
}

/// The tokenizer and generation files of a built-in task: a character-level WordLevel
/// tokenizer.json over the specials and `chars` (BOS prepended by the post-processor), readable by
/// `tokenizers` and transformers' `PreTrainedTokenizerFast`.
pub fn char_tokenizer_files(chars: &str, max_length: usize) -> Vec<(&'static str, String)> {
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

/// Writes a randomly initialised tiny Llama causal LM at `dir`: N(0, 0.02) matrices and unit
/// norms drawn from `rng` (our own generator, so the start does not depend on libtorch), its
/// `config` and its tokenizer files.
pub fn write_random_init(
    dir: &Path,
    d: &Dims,
    vocab: usize,
    config: &Value,
    tokenizer_files: &[(&'static str, String)],
    mut rng: SplitMix64,
) -> Result<()> {
    let (h, i, v) = (d.hidden, d.intermediate, vocab);
    let kv = d.kv_heads * (d.hidden / d.heads);
    let mut shapes = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
    for l in 0..d.layers {
        for (n, s) in [
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
            shapes.push((format!("model.layers.{l}.{n}"), s));
        }
    }
    shapes.push(("model.norm.weight".into(), vec![h]));
    shapes.push(("lm_head.weight".into(), vec![v, h]));
    let tensors: Vec<OutTensor> = shapes
        .into_iter()
        .map(|(name, shape)| OutTensor {
            name,
            dtype: DType::F32,
            shape,
        })
        .collect();
    let mut w = CheckpointWriter::create(dir, tensors.clone(), &WriterOptions::default())?;
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
    let cfg = serde_json::to_string_pretty(config).unwrap_or_default() + "\n";
    w.add_file("config.json", cfg.as_bytes())?;
    for (name, text) in tokenizer_files {
        w.add_file(name, text.as_bytes())?;
    }
    w.finish()?;
    Ok(())
}

/// The Adam schedule of the built-in models: `warmup` steps of warm-up, then cosine decay to
/// 10 % over the rest of `steps`; weight decay 0.01, gradient clip 1.
pub fn adam_schedule(lr: f64, warmup: u64, steps: u64) -> AdamConfig {
    AdamConfig {
        lr,
        weight_decay: 0.01,
        warmup,
        grad_clip: 1.0,
        decay_steps: steps.saturating_sub(warmup),
        ..AdamConfig::default()
    }
}

/// How much [`fit`] reports beyond the progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chatter {
    /// The bar only.
    Quiet,
    /// The loss as the bar's status every 50 steps, and a line every 500 steps.
    Loss,
}

/// The training loop of the built-in models: `steps` optimizer steps, each minimising the
/// scalar `loss(step)` (1-based; it draws its own batch); checks for cancellation before each.
/// Returns the mean loss of the last 100 steps.
pub fn fit(
    name: &str,
    steps: u64,
    opt: &mut Adam,
    chatter: Chatter,
    reporter: &dyn Reporter,
    mut loss: impl FnMut(u64) -> Result<Tensor>,
) -> Result<f64> {
    const WINDOW: usize = 100;
    let started = Instant::now();
    let mut recent = VecDeque::with_capacity(WINDOW);
    reporter.start_steps(name, steps);
    for step in 1..=steps {
        crate::interrupt::check()?;
        opt.zero_grad();
        let loss = loss(step)?;
        loss.backward();
        opt.step()?;
        let l = loss.double_value(&[]);
        if recent.len() == WINDOW {
            recent.pop_front();
        }
        recent.push_back(l);
        reporter.advance(1);
        if chatter == Chatter::Loss {
            if step % 50 == 0 || step == steps {
                reporter.status(&format!("loss {l:.4}"));
            }
            if step % 500 == 0 {
                let mean = recent.iter().sum::<f64>() / recent.len() as f64;
                reporter.message(&format!(
                    "step {step}/{steps}: loss {mean:.4} (mean of the last {}), {:.0} s",
                    recent.len(),
                    started.elapsed().as_secs_f64()
                ));
            }
        }
    }
    reporter.finish();
    Ok(recent.iter().sum::<f64>() / recent.len().max(1) as f64)
}

/// The prompts of a prompt file as plain strings.
pub fn prompt_texts(records: &[PromptRecord]) -> Vec<String> {
    records.iter().map(|r| r.prompt.clone()).collect()
}
