//! Batched sampling with a KV cache over left-padded prompts, and exact per-token scoring of
//! (prompt, completion) pairs in one forward pass.
//!
//! Layout shared by both: prompts are left-padded to the longest, completions follow (right-padded
//! when scoring); the attention mask is 0 on padding and position ids are `cumsum(mask) - 1`, so
//! every sequence sees exactly its own tokens at positions 0, 1, 2, … as if it were alone.

use tch::{Device, Kind, Tensor};

use super::model::LlamaModel;
use super::rng::SplitMix64;
use crate::error::{Error, Result};

/// Sampling settings. `temperature` 0 is greedy; `top_k` 0 and `top_p` 1 switch those filters off.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub top_k: usize,
    pub top_p: f64,
    /// Seed of this call's own random stream (not libtorch's global generator, so concurrent
    /// calls do not disturb each other): same seed, prompts and model, same samples.
    pub seed: u64,
    /// Generation of a sequence stops after any of these.
    pub eos_ids: Vec<i64>,
    /// Left padding of prompts, and filler after a sequence ended.
    pub pad_id: i64,
    /// Keep the raw logits of every step (`Generation::logits`), e.g. to check the cache.
    pub record_logits: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 32,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            eos_ids: Vec::new(),
            pad_id: 0,
            record_logits: false,
        }
    }
}

pub struct Generation {
    /// Width of the left-padded prompt block in `tokens`.
    pub prompt_len: i64,
    /// `[batch, prompt_len + steps]`: padded prompts then the sampled tokens (pad after EOS).
    pub tokens: Tensor,
    /// `[batch, prompt_len + steps]`: 1 on prompt tokens and on completion tokens up to and
    /// including EOS, 0 elsewhere.
    pub attention_mask: Tensor,
    /// The sampled tokens of each sequence, up to and including its EOS when it emitted one.
    pub completions: Vec<Vec<i64>>,
    /// Whether each sequence ended with an EOS (else it hit `max_new_tokens`).
    pub finished: Vec<bool>,
    /// `[batch, steps, vocab]` raw logits that each sampled token was drawn from (f32), when
    /// `record_logits`.
    pub logits: Option<Tensor>,
}

/// Left-pads `prompts` into `[batch, width]` ids and mask, with `width` ≥ every prompt's length.
fn left_pad(prompts: &[Vec<i64>], width: usize, pad: i64, device: Device) -> (Tensor, Tensor) {
    let b = prompts.len();
    let mut ids = vec![pad; b * width];
    let mut mask = vec![0i64; b * width];
    for (i, p) in prompts.iter().enumerate() {
        let off = i * width + width - p.len();
        ids[off..off + p.len()].copy_from_slice(p);
        mask[off..off + p.len()].fill(1);
    }
    let shape = [b as i64, width as i64];
    (
        Tensor::from_slice(&ids).view(shape).to_device(device),
        Tensor::from_slice(&mask).view(shape).to_device(device),
    )
}

/// Position ids of a left-padded batch: `cumsum(mask) - 1`, 0 on padding.
pub fn position_ids(mask: &Tensor) -> Tensor {
    (mask.cumsum(1, Kind::Int64) - 1).clamp_min(0)
}

fn check_prompts(model: &LlamaModel, prompts: &[Vec<i64>], extra: usize) -> Result<usize> {
    if prompts.is_empty() {
        return Err(Error::Usage("no prompts".into()));
    }
    let vocab = model.config.vocab_size as i64;
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(Error::Usage(format!("prompt {i} is empty")));
        }
        if let Some(t) = p.iter().find(|&&t| t < 0 || t >= vocab) {
            return Err(Error::Usage(format!(
                "prompt {i}: token id {t} outside the vocabulary (0..{vocab})"
            )));
        }
    }
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let max_pos = model.config.max_position_embeddings;
    if width + extra > max_pos {
        return Err(Error::Usage(format!(
            "prompt of {width} tokens + {extra} more exceeds max_position_embeddings {max_pos}"
        )));
    }
    Ok(width)
}

/// Draws one token per row of `logits` `[batch, vocab]`: filters, then inverse-CDF sampling with
/// one uniform per row from `rng` (a token of probability 0 is never drawn).
fn sample(logits: &Tensor, o: &GenerateOptions, rng: &mut SplitMix64) -> Tensor {
    if o.temperature <= 0.0 {
        return logits.argmax(-1, false);
    }
    let mut l = logits / o.temperature;
    let vocab = *l.size().last().expect("2-D");
    if o.top_k > 0 && (o.top_k as i64) < vocab {
        let (top, _) = l.topk(o.top_k as i64, -1, true, true);
        let kth = top.narrow(-1, o.top_k as i64 - 1, 1);
        l = l.masked_fill(&l.lt_tensor(&kth), f64::NEG_INFINITY);
    }
    if o.top_p < 1.0 {
        let (sorted, idx) = l.sort(-1, true);
        let probs = sorted.softmax(-1, Kind::Float);
        // Drop a token when the tokens ranked above it already hold top_p of the mass (the top
        // token always stays).
        let above = probs.cumsum(-1, Kind::Float) - &probs;
        let drop_sorted = above.gt(o.top_p);
        let drop = drop_sorted.scatter(-1, &idx, &drop_sorted);
        l = l.masked_fill(&drop, f64::NEG_INFINITY);
    }
    let probs = l.softmax(-1, Kind::Float);
    let cdf = probs.cumsum(-1, Kind::Double);
    let b = probs.size()[0];
    let u: Vec<f64> = (0..b).map(|_| rng.next_open01()).collect();
    let u = Tensor::from_slice(&u)
        .to_device(probs.device())
        .view([b, 1]);
    let target = u * cdf.narrow(-1, vocab - 1, 1);
    // Index of the first cdf entry >= target = the number of entries below it.
    cdf.lt_tensor(&target)
        .sum_dim_intlist(-1, false, Kind::Int64)
        .clamp_max(vocab - 1)
}

/// Samples up to `max_new_tokens` for each prompt (token ids, BOS included if wanted), all in
/// one batch with a KV cache. Runs without gradients.
pub fn generate(
    model: &LlamaModel,
    prompts: &[Vec<i64>],
    o: &GenerateOptions,
) -> Result<Generation> {
    let width = check_prompts(model, prompts, o.max_new_tokens)?;
    if !(o.top_p > 0.0 && o.top_p <= 1.0) {
        return Err(Error::Usage(format!(
            "top_p must be in (0, 1], got {}",
            o.top_p
        )));
    }
    if !o.temperature.is_finite() || o.temperature < 0.0 {
        return Err(Error::Usage(format!(
            "temperature must be ≥ 0, got {}",
            o.temperature
        )));
    }
    let dev = model.device;
    let mut rng = SplitMix64(o.seed);
    tch::no_grad(|| {
        let b = prompts.len() as i64;
        let (ids, mut mask) = left_pad(prompts, width, o.pad_id, dev);
        let pos = position_ids(&mask);
        let mut cache = model.new_cache(b, (width + o.max_new_tokens) as i64);
        let mut logits = model.forward(&ids, &mask, &pos, Some(&mut cache))?;
        let mut last = logits.select(1, -1);
        let mut next_pos = pos.select(1, -1) + 1;
        let eos = Tensor::from_slice(&o.eos_ids).to_device(dev);
        let mut finished = Tensor::zeros([b], (Kind::Bool, dev));
        let mut steps: Vec<Tensor> = Vec::new();
        let mut step_mask: Vec<Tensor> = Vec::new();
        let mut recorded: Vec<Tensor> = Vec::new();
        // `next_pos` is a tensor of per-row positions, not a loop counter.
        #[allow(clippy::explicit_counter_loop)]
        for step in 0..o.max_new_tokens {
            if o.record_logits {
                recorded.push(last.shallow_clone());
            }
            let tok = sample(&last, o, &mut rng);
            let tok = tok.where_self(
                &finished.logical_not(),
                &Tensor::from(o.pad_id).to_device(dev),
            );
            // 1 for live tokens (EOS included), 0 after the end.
            step_mask.push(finished.logical_not().to_kind(Kind::Int64));
            steps.push(tok.shallow_clone());
            if !o.eos_ids.is_empty() {
                finished = finished.logical_or(&Tensor::isin(&tok, &eos, false, false));
            }
            if step + 1 == o.max_new_tokens || bool::try_from(finished.all()).unwrap_or(false) {
                break;
            }
            mask = Tensor::cat(&[&mask, &Tensor::ones([b, 1], (Kind::Int64, dev))], 1);
            logits = model.forward(
                &tok.view([b, 1]),
                &mask,
                &next_pos.view([b, 1]),
                Some(&mut cache),
            )?;
            last = logits.select(1, -1);
            next_pos += 1;
        }
        let (new_tokens, new_mask) = if steps.is_empty() {
            (
                Tensor::zeros([b, 0], (Kind::Int64, dev)),
                Tensor::zeros([b, 0], (Kind::Int64, dev)),
            )
        } else {
            (Tensor::stack(&steps, 1), Tensor::stack(&step_mask, 1))
        };
        let prompt_mask = mask.narrow(1, 0, width as i64);
        let tokens = Tensor::cat(&[&ids, &new_tokens], 1);
        let attention_mask = Tensor::cat(&[&prompt_mask, &new_mask], 1);
        let n = new_tokens.size()[1] as usize;
        let flat_t: Vec<i64> = Vec::try_from(new_tokens.to_device(Device::Cpu).flatten(0, -1))
            .map_err(|e| Error::Usage(format!("libtorch: {e}")))?;
        let flat_m: Vec<i64> = Vec::try_from(new_mask.to_device(Device::Cpu).flatten(0, -1))
            .map_err(|e| Error::Usage(format!("libtorch: {e}")))?;
        let mut completions = Vec::with_capacity(prompts.len());
        let mut done = Vec::with_capacity(prompts.len());
        for i in 0..prompts.len() {
            let row: Vec<i64> = (0..n)
                .filter(|&j| flat_m[i * n + j] == 1)
                .map(|j| flat_t[i * n + j])
                .collect();
            done.push(row.last().is_some_and(|t| o.eos_ids.contains(t)));
            completions.push(row);
        }
        let logits = (o.record_logits && !recorded.is_empty()).then(|| Tensor::stack(&recorded, 1));
        Ok(Generation {
            prompt_len: width as i64,
            tokens,
            attention_mask,
            completions,
            finished: done,
            logits,
        })
    })
}

/// Per-token log-probabilities of completions given prompts.
pub struct Scores {
    /// `[batch, max completion length]`, f32: log π(y_t | x, y_<t), 0 on padding. Carries
    /// gradients when computed with gradients on.
    pub logprobs: Tensor,
    /// `[batch, max completion length]`, f32: 1 on completion tokens, 0 on padding.
    pub mask: Tensor,
    /// `[batch, max completion length, vocab]` logits behind `logprobs` (f32).
    pub logits: Tensor,
}

/// Scores (prompt, completion) pairs in one forward pass: prompts left-padded, completions
/// right-padded after them, padding masked out of attention. Gradients flow if enabled.
pub fn score(model: &LlamaModel, pairs: &[(Vec<i64>, Vec<i64>)], pad_id: i64) -> Result<Scores> {
    score_at(model, pairs, pad_id, 1.0)
}

/// As [`score`], with log-probs of the distribution sampled at `temperature` (softmax of
/// logits / temperature); `Scores::logits` stay raw.
pub fn score_at(
    model: &LlamaModel,
    pairs: &[(Vec<i64>, Vec<i64>)],
    pad_id: i64,
    temperature: f64,
) -> Result<Scores> {
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(Error::Usage(format!(
            "scoring temperature must be > 0, got {temperature}"
        )));
    }
    let prompts: Vec<Vec<i64>> = pairs.iter().map(|(p, _)| p.clone()).collect();
    let cmax = pairs.iter().map(|(_, c)| c.len()).max().unwrap_or(0);
    let width = check_prompts(model, &prompts, cmax)?;
    let vocab = model.config.vocab_size as i64;
    for (i, (_, c)) in pairs.iter().enumerate() {
        if let Some(t) = c.iter().find(|&&t| t < 0 || t >= vocab) {
            return Err(Error::Usage(format!(
                "completion {i}: token id {t} outside the vocabulary (0..{vocab})"
            )));
        }
    }
    let dev = model.device;
    let b = pairs.len();
    let (pids, pmask) = left_pad(&prompts, width, pad_id, dev);
    let mut cids = vec![pad_id; b * cmax];
    let mut cm = vec![0i64; b * cmax];
    for (i, (_, c)) in pairs.iter().enumerate() {
        cids[i * cmax..i * cmax + c.len()].copy_from_slice(c);
        cm[i * cmax..i * cmax + c.len()].fill(1);
    }
    let shape = [b as i64, cmax as i64];
    let cids = Tensor::from_slice(&cids).view(shape).to_device(dev);
    let cmask = Tensor::from_slice(&cm).view(shape).to_device(dev);
    let ids = Tensor::cat(&[&pids, &cids], 1);
    let mask = Tensor::cat(&[&pmask, &cmask], 1);
    let logits = model.forward(&ids, &mask, &position_ids(&mask), None)?;
    let logits = logits.narrow(1, width as i64 - 1, cmax as i64);
    let lp = if temperature == 1.0 {
        logits.log_softmax(-1, Kind::Float)
    } else {
        (&logits / temperature).log_softmax(-1, Kind::Float)
    };
    let fmask = cmask.to_kind(Kind::Float);
    let logprobs = lp.gather(2, &cids.unsqueeze(-1), false).squeeze_dim(-1) * &fmask;
    Ok(Scores {
        logprobs,
        mask: fmask,
        logits,
    })
}
