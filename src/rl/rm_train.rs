//! Training a reward model from labelled (prompt, completion) examples, saved as transformers'
//! `LlamaForSequenceClassification` with one label, the format `model:` reads
//! ([`super::reward_model`]).
//!
//! The score of a pair is computed exactly as `model:` computes it: the prompt tokenized with its
//! special tokens (BOS), then the completion without, and the head applied to the final hidden
//! state of the last token. It is fitted to the labels by least squares, so a reward is on the
//! labels' scale (0–1 for a 0/1 rule). During training the head is row 0 of a causal LM's output
//! layer — the same linear map of the last hidden state, and the layer our optimizer already
//! trains —; the other rows get no gradient and are dropped when saving, row 0 becoming
//! `score.weight` `[1, hidden]`.

use std::path::Path;

use serde_json::Value;
use tch::{Device, Kind, Tensor};

use super::f32_checkpoint::write_f32_tensors;
use super::generate::position_ids;
use super::model::CausalLm;
use super::optim::{Adam, AdamConfig};
use super::reward_model::RewardModel;
use super::sft::{fit, Chatter};
use super::tokenizer::Tokenizer;
use crate::error::{Error, IoContext, Result};
use crate::progress::Reporter;

/// One labelled pair.
#[derive(Debug, Clone, PartialEq)]
pub struct RmExample {
    pub prompt: String,
    pub completion: String,
    pub label: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RmTraining {
    pub steps: u64,
    /// Examples per step.
    pub batch: usize,
    pub adam: AdamConfig,
}

/// Files of the init folder the reward model keeps (its config.json is written anew).
const TOKENIZER_FILES: [&str; 3] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

fn backend(e: tch::TchError) -> Error {
    Error::compute("reward model training", e)
}

/// Token ids of a pair, as `model:` encodes it.
fn encode(tok: &Tokenizer, e: &RmExample) -> Result<Vec<i64>> {
    let mut ids = tok.encode(&e.prompt)?;
    ids.extend(tok.encode_plain(&e.completion)?);
    Ok(ids)
}

/// Trains the causal LM at `init` (config, weights, tokenizer) as a reward model on the examples
/// `next(i)` draws (the i-th of the run), and saves it at `out` with `config` (the
/// sequence-classification config.json). Returns the mean loss of the last 100 steps.
pub fn train(
    init: &Path,
    out: &Path,
    config: &Value,
    t: &RmTraining,
    next: &mut dyn FnMut(usize) -> RmExample,
    reporter: &dyn Reporter,
) -> Result<f64> {
    let model = CausalLm::load(init, Device::Cpu)?;
    let tok = Tokenizer::from_dir(init)?;
    let mut opt = Adam::new(&model, t.adam.clone())?;
    let mut drawn = 0;
    let loss = fit(
        "reward model",
        t.steps,
        &mut opt,
        Chatter::Quiet,
        reporter,
        |_| {
            let mut seqs = Vec::with_capacity(t.batch);
            let mut labels = Vec::with_capacity(t.batch);
            for _ in 0..t.batch {
                let e = next(drawn);
                drawn += 1;
                seqs.push(encode(&tok, &e)?);
                labels.push(e.label as f32);
            }
            let scores = scores(&model, &seqs, tok.pad_id)?;
            let target = Tensor::from_slice(&labels);
            Ok((scores - target).square().mean(Kind::Float))
        },
    )?;
    save(&model, init, out, config)?;
    Ok(loss)
}

/// Row 0 of the output layer at the last token of each (left-padded) sequence: `[batch]`.
fn scores(model: &CausalLm, seqs: &[Vec<i64>], pad_id: i64) -> Result<Tensor> {
    let (b, w) = (seqs.len(), seqs.iter().map(Vec::len).max().unwrap_or(0));
    if w == 0 {
        return Err(Error::Internal(
            "reward model training: empty sequences".into(),
        ));
    }
    let mut ids = vec![pad_id; b * w];
    let mut mask = vec![0i64; b * w];
    for (r, s) in seqs.iter().enumerate() {
        let off = r * w + w - s.len();
        ids[off..off + s.len()].copy_from_slice(s);
        mask[off..off + s.len()].fill(1);
    }
    let shape = [b as i64, w as i64];
    let ids = Tensor::from_slice(&ids).view(shape);
    let mask = Tensor::from_slice(&mask).view(shape);
    let logits = model.forward(&ids, &mask, &position_ids(&mask)?, None)?;
    logits
        .f_select(1, w as i64 - 1)
        .and_then(|t| t.f_select(1, 0))
        .map_err(backend)
}

/// Writes the decoder's weights and `score.weight` (row 0 of the output layer) as a
/// `LlamaForSequenceClassification` checkpoint, with `config` and the init's tokenizer files.
fn save(model: &CausalLm, init: &Path, out: &Path, config: &Value) -> Result<()> {
    let vars = model.vs.variables();
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for name in model.parameter_names() {
        let t = vars
            .get(name)
            .ok_or_else(|| Error::Internal(format!("parameter '{name}' not in the var store")))?;
        let t = if name == "lm_head.weight" {
            ("score.weight".to_string(), t.narrow(0, 0, 1))
        } else {
            (name.to_string(), t.shallow_clone())
        };
        named.push(t);
    }
    let mut files = vec![(
        "config.json",
        (serde_json::to_string_pretty(config).unwrap_or_default() + "\n").into_bytes(),
    )];
    for f in TOKENIZER_FILES {
        let p = init.join(f);
        files.push((f, std::fs::read(&p).at(&p)?));
    }
    write_f32_tensors(out, &named, &files)
}

/// The fraction of examples on the right side of 0.5 (score > 0.5 exactly when label > 0.5).
pub fn accuracy(rm: &mut RewardModel, examples: &[RmExample]) -> Result<f64> {
    if examples.is_empty() {
        return Ok(f64::NAN);
    }
    let pairs: Vec<(String, String)> = examples
        .iter()
        .map(|e| (e.prompt.clone(), e.completion.clone()))
        .collect();
    let s = rm.rewards(&pairs)?;
    let right = s
        .iter()
        .zip(examples)
        .filter(|(s, e)| (**s > 0.5) == (e.label > 0.5))
        .count();
    Ok(right as f64 / examples.len() as f64)
}
