//! `warp sft` (the default task): the built-in supervised model. A tiny Llama trained from
//! scratch on the noisy addition corpus of [`crate::tasks::arith`], so that every tool has a
//! default policy whose sampled answers are right only about as often as the corpus (≈ 65 %) —
//! room for a reward to help.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};
use tch::{Device, Kind};

use super::{adam_schedule, char_tokenizer_files, fit, llama_config, write_random_init};
use super::{Chatter, Dims, SftConfig};
use crate::error::{Error, IoContext, Result};
use crate::io::writer::{Staging, WriterOptions};
use crate::progress::Reporter;
use crate::rl::data::{write_prompts, Prompt, PromptRecord};
use crate::rl::eval::{evaluate, SampleOptions};
use crate::rl::generate::score;
use crate::rl::model::CausalLm;
use crate::rl::optim::Adam;
use crate::rl::reward::Verify;
use crate::rl::tokenizer::Tokenizer;
use crate::rng::SplitMix64;
use crate::tasks::arith as task;

/// Characters of the built-in tokenizer (one token each), after the four specials.
const CHARS: &str = "0123456789+-*=?: QA";
/// Vocabulary (32: the specials, the characters, room to spare) and positions.
const VOCAB: usize = 32;
const MAX_POSITIONS: usize = 32;

fn dims(c: &SftConfig) -> Dims {
    Dims {
        hidden: c.hidden,
        layers: c.layers,
        heads: c.heads,
        kv_heads: c.kv_heads,
        intermediate: c.intermediate,
    }
}

/// `config.json` of the built-in model (a transformers LlamaForCausalLM).
pub fn model_config(c: &SftConfig) -> Value {
    llama_config(&dims(c), VOCAB, MAX_POSITIONS, false)
}

/// The tokenizer and generation files of the built-in model (see [`char_tokenizer_files`]).
pub fn tokenizer_files() -> Vec<(&'static str, String)> {
    char_tokenizer_files(CHARS, MAX_POSITIONS)
}

/// Writes randomly initialised weights (from `seed`, stream 1) and the companion files.
fn write_init(dir: &Path, c: &SftConfig) -> Result<()> {
    let rng = SplitMix64::stream(c.seed, 1);
    write_random_init(
        dir,
        &dims(c),
        VOCAB,
        &model_config(c),
        &tokenizer_files(),
        rng,
    )
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
    model: &CausalLm,
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
    let prompts: Vec<Prompt> = prompts.iter().map(|p| Prompt::Text(p.clone())).collect();
    let mut verify = Verify::of(task::TASK.name)
        .ok_or_else(|| Error::Internal("the arith task has no verifier".into()))?;
    let sampled = evaluate(model, tok, &prompts, &mut verify, None, &o)?;
    let greedy = evaluate(
        model,
        tok,
        &prompts,
        &mut verify,
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
    let model = CausalLm::load(&init, Device::Cpu)?;
    let tok = Tokenizer::from_dir(&init)?;
    let (train_set, heldout) = task::splits();
    let started = Instant::now();
    let final_loss = fit_corpus(&model, &tok, c, &train_set, &init, reporter)?;
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
fn fit_corpus(
    model: &CausalLm,
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
    let mut opt = Adam::new(model, adam_schedule(c.lr, c.warmup, c.steps))?;
    let mut rng = SplitMix64::stream(c.seed, 2);
    fit("sft", c.steps, &mut opt, Chatter::Loss, reporter, |_| {
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
        let s = score(model, &pairs, tok.pad_id)?;
        Ok(-s.logprobs.sum(Kind::Float) / s.mask.sum(Kind::Float))
    })
}
