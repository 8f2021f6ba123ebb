//! Batched sampling with a KV cache over left-padded prompts, and exact per-token scoring of
//! (prompt, completion) pairs in one forward pass.
//!
//! Layout shared by both: prompts are left-padded to the longest, completions follow (right-padded
//! when scoring); the attention mask is 0 on padding and position ids are `cumsum(mask) - 1`, so
//! every sequence sees exactly its own tokens at positions 0, 1, 2, … as if it were alone.

use tch::{Device, Kind, TchError, Tensor};

use super::model::CausalLm;
use crate::error::{Error, Result};
use crate::rng::SplitMix64;

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
fn left_pad(
    prompts: &[Vec<i64>],
    width: usize,
    pad: i64,
    device: Device,
) -> Result<(Tensor, Tensor), TchError> {
    let b = prompts.len();
    let mut ids = vec![pad; b * width];
    let mut mask = vec![0i64; b * width];
    for (i, p) in prompts.iter().enumerate() {
        let off = i * width + width - p.len();
        ids[off..off + p.len()].copy_from_slice(p);
        mask[off..off + p.len()].fill(1);
    }
    let shape = [b as i64, width as i64];
    Ok((
        Tensor::f_from_slice(&ids)?
            .f_view(shape)?
            .f_to_device(device)?,
        Tensor::f_from_slice(&mask)?
            .f_view(shape)?
            .f_to_device(device)?,
    ))
}

/// Position ids of a left-padded batch: `cumsum(mask) - 1`, 0 on padding.
pub fn position_ids(mask: &Tensor) -> Result<Tensor> {
    f_position_ids(mask).map_err(|e| Error::compute("position ids", e))
}

fn f_position_ids(mask: &Tensor) -> Result<Tensor, TchError> {
    mask.f_cumsum(1, Kind::Int64)?
        .f_sub_scalar(1)?
        .f_clamp_min(0)
}

fn check_prompts(model: &CausalLm, prompts: &[Vec<i64>], extra: usize) -> Result<usize> {
    if prompts.is_empty() {
        return Err(Error::Mismatch("no prompts".into()));
    }
    let vocab = model.config.vocab_size as i64;
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(Error::Mismatch(format!("prompt {i} is empty")));
        }
        if let Some(t) = p.iter().find(|&&t| t < 0 || t >= vocab) {
            return Err(Error::Mismatch(format!(
                "prompt {i}: token id {t} outside the vocabulary (0..{vocab})"
            )));
        }
    }
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let max_pos = model.config.max_position_embeddings;
    if width + extra > max_pos {
        return Err(Error::Mismatch(format!(
            "prompt of {width} tokens + {extra} more exceeds max_position_embeddings {max_pos}"
        )));
    }
    Ok(width)
}

/// Draws one token per row of `logits` `[batch, vocab]`: greedy without `uniforms`, else
/// filters, then inverse-CDF sampling with the row's uniform from `uniforms` `[batch]` (a token
/// of probability 0 is never drawn).
fn sample(
    logits: &Tensor,
    o: &GenerateOptions,
    uniforms: Option<&Tensor>,
) -> Result<Tensor, TchError> {
    let Some(u) = uniforms else {
        return logits.f_argmax(-1, false);
    };
    let mut l = logits.f_div_scalar(o.temperature)?;
    let vocab = l.size().last().copied().unwrap_or(0);
    if o.top_k > 0 && (o.top_k as i64) < vocab {
        let (top, _) = l.f_topk(o.top_k as i64, -1, true, true)?;
        let kth = top.f_narrow(-1, o.top_k as i64 - 1, 1)?;
        l = l.f_masked_fill(&l.f_lt_tensor(&kth)?, f64::NEG_INFINITY)?;
    }
    if o.top_p < 1.0 {
        let (sorted, idx) = l.f_sort(-1, true)?;
        let probs = sorted.f_softmax(-1, Kind::Float)?;
        // Drop a token when the tokens ranked above it already hold top_p of the mass (the top
        // token always stays).
        let above = probs.f_cumsum(-1, Kind::Float)?.f_sub(&probs)?;
        let drop_sorted = above.f_gt(o.top_p)?;
        let drop = drop_sorted.f_scatter(-1, &idx, &drop_sorted)?;
        l = l.f_masked_fill(&drop, f64::NEG_INFINITY)?;
    }
    let probs = l.f_softmax(-1, Kind::Float)?;
    let cdf = probs.f_cumsum(-1, Kind::Double)?;
    let target = u.f_unsqueeze(1)?.f_mul(&cdf.f_narrow(-1, vocab - 1, 1)?)?;
    // Index of the first cdf entry >= target = the number of entries below it.
    cdf.f_lt_tensor(&target)?
        .f_sum_dim_intlist(-1, false, Kind::Int64)?
        .f_clamp_max(vocab - 1)
}

/// Steps between checks whether every sequence has ended: reading the flag waits for the device,
/// which on CUDA would stall the queue of kernels at every step; on the CPU it costs nothing,
/// and checking every step avoids decoding past the end.
fn finish_check_interval(device: Device) -> usize {
    match device {
        Device::Cpu => 1,
        _ => 8,
    }
}

/// Samples up to `max_new_tokens` for each prompt (token ids, BOS included if wanted), all in
/// one batch with a KV cache. Runs without gradients.
pub fn generate(model: &CausalLm, prompts: &[Vec<i64>], o: &GenerateOptions) -> Result<Generation> {
    let width = check_prompts(model, prompts, o.max_new_tokens)?;
    if !(o.top_p > 0.0 && o.top_p <= 1.0) {
        return Err(Error::setting(
            "top_p",
            format!("must be in (0, 1], got {}", o.top_p),
        ));
    }
    if !o.temperature.is_finite() || o.temperature < 0.0 {
        return Err(Error::setting(
            "temperature",
            format!("must be ≥ 0, got {}", o.temperature),
        ));
    }
    let every = finish_check_interval(model.device);
    tch::no_grad(|| Decoder::start(model, prompts, width, o)?.run(every))
}

/// The state of one [`generate`] call: buffers preallocated for every step, so a step appends
/// nothing; the only values read back on the host are the "all finished" flag (see
/// [`finish_check_interval`]) and the results.
struct Decoder<'a> {
    model: &'a CausalLm,
    o: &'a GenerateOptions,
    width: i64,
    batch: i64,
    prompt_ids: Tensor,
    /// `[batch, width + max_new_tokens]`: the prompt mask, then ones (every decoded position
    /// is attended to; finished rows are ignored).
    mask: Tensor,
    cache: super::model::KvCache,
    /// `[max_new_tokens, batch]` uniforms of the sampling stream (none when greedy).
    uniforms: Option<Tensor>,
    /// `[batch, max_new_tokens]` sampled tokens (pad after the end) and their liveness.
    tokens: Tensor,
    live: Tensor,
    recorded: Vec<Tensor>,
}

impl<'a> Decoder<'a> {
    fn start(
        model: &'a CausalLm,
        prompts: &[Vec<i64>],
        width: usize,
        o: &'a GenerateOptions,
    ) -> Result<Decoder<'a>> {
        let dev = model.device;
        let b = prompts.len() as i64;
        let (w, n) = (width as i64, o.max_new_tokens as i64);
        let mut rng = SplitMix64(o.seed);
        // The same stream, in the same order, as one draw per row and step.
        let draws: Vec<f64> = match o.temperature > 0.0 {
            true => (0..n * b).map(|_| rng.next_open01()).collect(),
            false => Vec::new(),
        };
        let setup = || -> Result<_, TchError> {
            let (ids, pmask) = left_pad(prompts, width, o.pad_id, dev)?;
            let mask = Tensor::f_ones([b, w + n], (Kind::Int64, dev))?;
            mask.f_narrow(1, 0, w)?.f_copy_(&pmask)?;
            let uniforms = match draws.is_empty() {
                true => None,
                false => Some(
                    Tensor::f_from_slice(&draws)?
                        .f_view([n, b])?
                        .f_to_device(dev)?,
                ),
            };
            let tokens = Tensor::f_full([b, n], o.pad_id, (Kind::Int64, dev))?;
            let live = Tensor::f_zeros([b, n], (Kind::Int64, dev))?;
            Ok((ids, mask, uniforms, tokens, live))
        };
        let (prompt_ids, mask, uniforms, tokens, live) = setup()
            .map_err(|e| Error::compute(format!("model {}: generation", model.name()), e))?;
        Ok(Decoder {
            model,
            o,
            width: w,
            batch: b,
            prompt_ids,
            mask,
            cache: model.new_cache(b, w + n)?,
            uniforms,
            tokens,
            live,
            recorded: Vec::new(),
        })
    }

    fn backend(&self) -> impl Fn(TchError) -> Error + '_ {
        move |e| Error::compute(format!("model {}: generation", self.model.name()), e)
    }

    /// Decodes, checking whether every sequence ended every `every` steps.
    fn run(mut self, every: usize) -> Result<Generation> {
        let (b, w, n) = (self.batch, self.width, self.o.max_new_tokens as i64);
        let dev = self.model.device;
        let prompt_mask = self.mask.f_narrow(1, 0, w).map_err(self.backend())?;
        let pos = f_position_ids(&prompt_mask).map_err(self.backend())?;
        let ids = self.prompt_ids.shallow_clone();
        let first = self.next_logits(&ids, &prompt_mask, &pos)?;
        let init = || -> Result<_, TchError> {
            let eos = Tensor::f_from_slice(&self.o.eos_ids)?.f_to_device(dev)?;
            let pad = Tensor::from(self.o.pad_id).f_to_device(dev)?;
            let finished = Tensor::f_zeros([b], (Kind::Bool, dev))?;
            Ok((
                first,
                pos.f_select(1, -1)?.f_add_scalar(1)?,
                eos,
                pad,
                finished,
            ))
        };
        let (mut last, mut next_pos, eos, pad, mut finished) = init().map_err(self.backend())?;
        let recompute_at = self.model.config.cache_recompute_at().map(|n| n as i64);
        for step in 0..n {
            let tok = self.step(step, &last, &pad, &eos, &mut finished)?;
            let all_done = || -> Result<bool, TchError> {
                Ok(bool::try_from(finished.f_all()?).unwrap_or(false))
            };
            if step + 1 == n
                || ((step + 1) as usize % every == 0 && all_done().map_err(self.backend())?)
            {
                break;
            }
            let total = w + step + 1;
            let mask = self.mask.f_narrow(1, 0, total).map_err(self.backend())?;
            last = if recompute_at == Some(self.cache.len()) {
                self.recompute(step, &mask)?
            } else {
                let ids = tok.f_view([b, 1]).map_err(self.backend())?;
                let p = next_pos.f_view([b, 1]).map_err(self.backend())?;
                self.next_logits(&ids, &mask, &p)?
            };
            next_pos = next_pos.f_add_scalar(1).map_err(self.backend())?;
        }
        self.finish(prompt_mask)
    }

    /// Runs the whole sequence so far (prompts and the tokens of steps 0..=`step`) again into an
    /// emptied cache (see `ModelConfig::cache_recompute_at`); returns the last position's logits.
    fn recompute(&mut self, step: i64, mask: &Tensor) -> Result<Tensor> {
        let inputs = || -> Result<_, TchError> {
            let ids = Tensor::f_cat(
                &[&self.prompt_ids, &self.tokens.f_narrow(1, 0, step + 1)?],
                1,
            )?;
            Ok((ids, f_position_ids(mask)?))
        };
        let (ids, pos) = inputs().map_err(self.backend())?;
        self.cache.clear();
        self.next_logits(&ids, mask, &pos)
    }

    /// Runs `ids` through the model into the cache; the logits `[batch, vocab]` of the last
    /// position (the LM head only there: a prompt's other positions need no logits).
    fn next_logits(&mut self, ids: &Tensor, mask: &Tensor, pos: &Tensor) -> Result<Tensor> {
        let hidden = self
            .model
            .hidden_states_cached(ids, mask, pos, &mut self.cache)?;
        let last = hidden.f_select(1, -1).map_err(self.backend())?;
        self.model.logits_from_hidden(&last)
    }

    /// Samples step `step` from `last` and records it; returns the tokens `[batch]`.
    fn step(
        &mut self,
        step: i64,
        last: &Tensor,
        pad: &Tensor,
        eos: &Tensor,
        finished: &mut Tensor,
    ) -> Result<Tensor> {
        if self.o.record_logits {
            self.recorded.push(last.shallow_clone());
        }
        let b = self.batch;
        let mut run = |d: &mut Self| -> Result<Tensor, TchError> {
            let u = d.uniforms.as_ref().map(|u| u.f_get(step)).transpose()?;
            let tok = sample(last, d.o, u.as_ref())?;
            let live = finished.f_logical_not()?;
            let tok = tok.f_where_self(&live, pad)?;
            d.tokens
                .f_narrow(1, step, 1)?
                .f_copy_(&tok.f_view([b, 1])?)?;
            d.live
                .f_narrow(1, step, 1)?
                .f_copy_(&live.f_to_kind(Kind::Int64)?.f_view([b, 1])?)?;
            if !d.o.eos_ids.is_empty() {
                *finished = finished.f_logical_or(&Tensor::f_isin(&tok, eos, false, false)?)?;
            }
            Ok(tok)
        };
        let r = run(self);
        r.map_err(self.backend())
    }

    /// Reads the results back; drops trailing steps in which every sequence had already ended
    /// (decoded only because the end is checked every few steps).
    fn finish(self, prompt_mask: Tensor) -> Result<Generation> {
        let (b, n) = (self.batch as usize, self.o.max_new_tokens);
        let host = |t: &Tensor| -> Result<Vec<i64>, TchError> {
            Vec::<i64>::try_from(t.f_to_device(Device::Cpu)?.f_flatten(0, -1)?)
        };
        let flat_t = host(&self.tokens).map_err(self.backend())?;
        let flat_m = host(&self.live).map_err(self.backend())?;
        let mut completions = Vec::with_capacity(b);
        let mut done = Vec::with_capacity(b);
        for i in 0..b {
            let row: Vec<i64> = (0..n)
                .filter(|&j| flat_m[i * n + j] == 1)
                .map(|j| flat_t[i * n + j])
                .collect();
            done.push(row.last().is_some_and(|t| self.o.eos_ids.contains(t)));
            completions.push(row);
        }
        let used = completions.iter().map(Vec::len).max().unwrap_or(0) as i64;
        let assemble = || -> Result<_, TchError> {
            let tokens = Tensor::f_cat(&[&self.prompt_ids, &self.tokens.f_narrow(1, 0, used)?], 1)?;
            let mask = Tensor::f_cat(&[&prompt_mask, &self.live.f_narrow(1, 0, used)?], 1)?;
            let logits = match self.o.record_logits && used > 0 {
                true => Some(Tensor::f_stack(&self.recorded, 1)?.f_narrow(1, 0, used)?),
                false => None,
            };
            Ok((tokens, mask, logits))
        };
        let (tokens, attention_mask, logits) = assemble().map_err(self.backend())?;
        Ok(Generation {
            prompt_len: self.width,
            tokens,
            attention_mask,
            completions,
            finished: done,
            logits,
        })
    }
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
pub fn score(model: &CausalLm, pairs: &[(Vec<i64>, Vec<i64>)], pad_id: i64) -> Result<Scores> {
    score_at(model, pairs, pad_id, 1.0)
}

/// As [`score`], with log-probs of the distribution sampled at `temperature` (softmax of
/// logits / temperature); `Scores::logits` stay raw.
pub fn score_at(
    model: &CausalLm,
    pairs: &[(Vec<i64>, Vec<i64>)],
    pad_id: i64,
    temperature: f64,
) -> Result<Scores> {
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(Error::setting(
            "temperature",
            format!("scoring needs a temperature > 0, got {temperature}"),
        ));
    }
    let prompts: Vec<Vec<i64>> = pairs.iter().map(|(p, _)| p.clone()).collect();
    let cmax = pairs.iter().map(|(_, c)| c.len()).max().unwrap_or(0);
    let width = check_prompts(model, &prompts, cmax)?;
    let vocab = model.config.vocab_size as i64;
    for (i, (_, c)) in pairs.iter().enumerate() {
        if let Some(t) = c.iter().find(|&&t| t < 0 || t >= vocab) {
            return Err(Error::Mismatch(format!(
                "completion {i}: token id {t} outside the vocabulary (0..{vocab})"
            )));
        }
    }
    let dev = model.device;
    let b = pairs.len();
    let mut cids = vec![pad_id; b * cmax];
    let mut cm = vec![0i64; b * cmax];
    for (i, (_, c)) in pairs.iter().enumerate() {
        cids[i * cmax..i * cmax + c.len()].copy_from_slice(c);
        cm[i * cmax..i * cmax + c.len()].fill(1);
    }
    let backend = |e: TchError| Error::compute(format!("model {}: scoring", model.name()), e);
    let inputs = || -> Result<_, TchError> {
        let (pids, pmask) = left_pad(&prompts, width, pad_id, dev)?;
        let shape = [b as i64, cmax as i64];
        let cids = Tensor::f_from_slice(&cids)?
            .f_view(shape)?
            .f_to_device(dev)?;
        let cmask = Tensor::f_from_slice(&cm)?.f_view(shape)?.f_to_device(dev)?;
        let ids = Tensor::f_cat(&[&pids, &cids], 1)?;
        let mask = Tensor::f_cat(&[&pmask, &cmask], 1)?;
        let pos = f_position_ids(&mask)?;
        Ok((ids, mask, pos, cids, cmask))
    };
    let (ids, mask, pos, cids, cmask) = inputs().map_err(backend)?;
    // The LM head only where a completion token is predicted: the last prompt position and
    // every completion position but the last.
    let hidden = model.hidden_states(&ids, &mask, &pos)?;
    let at = hidden
        .f_narrow(1, width as i64 - 1, cmax as i64)
        .map_err(backend)?;
    let logits = model.logits_from_hidden(&at)?;
    let logprobs = || -> Result<_, TchError> {
        let lp = match temperature == 1.0 {
            true => logits.f_log_softmax(-1, Kind::Float)?,
            false => logits
                .f_div_scalar(temperature)?
                .f_log_softmax(-1, Kind::Float)?,
        };
        let fmask = cmask.f_to_kind(Kind::Float)?;
        let picked = lp
            .f_gather(2, &cids.f_unsqueeze(-1)?, false)?
            .f_squeeze_dim(-1)?;
        Ok((picked.f_mul(&fmask)?, fmask))
    };
    let (logprobs, fmask) = logprobs().map_err(backend)?;
    Ok(Scores {
        logprobs,
        mask: fmask,
        logits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checking the end every 8 steps (CUDA's interval) decodes past the end but returns what
    /// checking every step returns, here on the CPU.
    #[test]
    fn sparse_end_checks_give_the_same_result() {
        // The built-in task's model answers in a few tokens, then EOS.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/arith/model");
        let model = CausalLm::load(&dir, Device::Cpu).unwrap();
        let tok = crate::rl::Tokenizer::from_dir(&dir).unwrap();
        let prompts: Vec<Vec<i64>> = ["37+58=", "1+2=", "99+99="]
            .iter()
            .map(|p| tok.encode(p).unwrap())
            .collect();
        for temperature in [0.0, 1.0] {
            let o = GenerateOptions {
                max_new_tokens: 20,
                temperature,
                seed: 7,
                eos_ids: tok.eos_ids.clone(),
                pad_id: tok.pad_id,
                record_logits: true,
                ..GenerateOptions::default()
            };
            let width = check_prompts(&model, &prompts, o.max_new_tokens).unwrap();
            let run = |every| {
                tch::no_grad(|| Decoder::start(&model, &prompts, width, &o)?.run(every)).unwrap()
            };
            let (a, b) = (run(1), run(8));
            assert!(
                a.finished.iter().all(|&f| f),
                "want every sequence to end early"
            );
            assert_eq!(a.completions, b.completions);
            assert_eq!(a.finished, b.finished);
            assert!(a.tokens.equal(&b.tokens) && a.attention_mask.equal(&b.attention_mask));
            let (la, lb) = (a.logits.unwrap(), b.logits.unwrap());
            assert!(la.equal(&lb), "recorded logits differ");
        }
    }
}
