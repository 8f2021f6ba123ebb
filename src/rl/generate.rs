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

/// Checks the sampling settings (errors name the setting).
fn check_options(o: &GenerateOptions) -> Result<()> {
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
    Ok(())
}

/// Samples up to `max_new_tokens` for each prompt (token ids, BOS included if wanted), all in
/// one batch with a KV cache. Runs without gradients. Sequence i draws from its own stream,
/// `SplitMix64::stream(seed, i)`, one uniform per step, so [`generate_batched`] with the same
/// seed gives the same tokens whatever its batching.
pub fn generate(model: &CausalLm, prompts: &[Vec<i64>], o: &GenerateOptions) -> Result<Generation> {
    let width = check_prompts(model, prompts, o.max_new_tokens)?;
    check_options(o)?;
    let every = finish_check_interval(model.device);
    let plain = Batching {
        batch: 0,
        share_prompts: false,
        compact: false,
    };
    tch::no_grad(|| Decoder::start(model, prompts, 0, width, o, plain)?.run(every)).map(|(g, _)| g)
}

/// How [`generate_batched`] splits and shrinks its work. No choice changes the sampled tokens
/// (each sequence has its own random stream); the recorded logits agree to rounding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Sequences decoded together, in order (0: all of them).
    pub batch: usize,
    /// Prefill each distinct prompt of a batch once and copy its KV cache to every sequence
    /// that starts with it (a prompt's n samples).
    pub share_prompts: bool,
    /// Drop the sequences that ended from the batch (their KV cache rows included) once a
    /// quarter of its rows have ended, so that late steps decode live rows only.
    pub compact: bool,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            batch: 0,
            share_prompts: true,
            compact: true,
        }
    }
}

/// What a [`generate_batched`] call did, beside its samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Prompt rows run through the model (prefill), over every batch.
    pub prefill_rows: usize,
    /// Rows decoded, summed over the decoding steps (one token each).
    pub decoded_rows: usize,
    /// Times ended rows were dropped from a batch.
    pub compactions: usize,
    /// Bytes of the largest decoding KV cache, and of the largest prompt-only cache (the
    /// distinct prompts' prefill when prompts are shared; 0 when none was).
    pub cache_bytes: u64,
    pub prompt_cache_bytes: u64,
}

impl DecodeStats {
    fn add(&mut self, o: &DecodeStats) {
        self.prefill_rows += o.prefill_rows;
        self.decoded_rows += o.decoded_rows;
        self.compactions += o.compactions;
        self.cache_bytes = self.cache_bytes.max(o.cache_bytes);
        self.prompt_cache_bytes = self.prompt_cache_bytes.max(o.prompt_cache_bytes);
    }
}

/// The samples of [`generate_batched`], in the order of its prompts.
pub struct Samples {
    /// The sampled tokens of each sequence, up to and including its EOS when it emitted one.
    pub completions: Vec<Vec<i64>>,
    /// Whether each sequence ended with an EOS (else it hit `max_new_tokens`).
    pub finished: Vec<bool>,
    /// With `record_logits`: per sequence, `[completion length, vocab]` raw f32 logits that its
    /// tokens were drawn from.
    pub logits: Option<Vec<Tensor>>,
    pub stats: DecodeStats,
}

/// Samples up to `max_new_tokens` for each of `prompts` as [`generate`] does (same seed, same
/// tokens), `how.batch` sequences at a time, with the prompt sharing and compaction `how` asks
/// for. The prompts of a GRPO/RLOO step repeat each prompt n times: sharing prefills it once.
pub fn generate_batched(
    model: &CausalLm,
    prompts: &[Vec<i64>],
    o: &GenerateOptions,
    how: &Batching,
) -> Result<Samples> {
    check_prompts(model, prompts, o.max_new_tokens)?;
    check_options(o)?;
    let every = finish_check_interval(model.device);
    let size = match how.batch {
        0 => prompts.len(),
        b => b.min(prompts.len()),
    };
    let mut out = Samples {
        completions: Vec::with_capacity(prompts.len()),
        finished: Vec::with_capacity(prompts.len()),
        logits: o.record_logits.then(Vec::new),
        stats: DecodeStats::default(),
    };
    for (i, chunk) in prompts.chunks(size).enumerate() {
        let width = chunk.iter().map(Vec::len).max().unwrap_or(0);
        let first = (i * size) as u64;
        let (g, stats) =
            tch::no_grad(|| Decoder::start(model, chunk, first, width, o, *how)?.run(every))?;
        if let (Some(all), Some(l)) = (out.logits.as_mut(), g.logits.as_ref()) {
            for (r, c) in g.completions.iter().enumerate() {
                let row = l
                    .f_get(r as i64)
                    .and_then(|t| t.f_narrow(0, 0, c.len() as i64))
                    .map_err(|e| Error::compute("recorded logits", e))?;
                all.push(row);
            }
        }
        out.completions.extend(g.completions);
        out.finished.extend(g.finished);
        out.stats.add(&stats);
    }
    Ok(out)
}

/// The state of one batch of a [`generate`] call: buffers preallocated for every step, so a
/// step appends nothing; the only values read back on the host are the finished flags (see
/// [`finish_check_interval`]) and the results. After a compaction the batch holds fewer rows
/// than it started with: `rows` maps each current row to its row of the batch.
struct Decoder<'a> {
    model: &'a CausalLm,
    o: &'a GenerateOptions,
    how: Batching,
    width: i64,
    batch: i64,
    prompts: &'a [Vec<i64>],
    /// `[batch, width]` left-padded prompts and their mask.
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    /// `[rows, width + max_new_tokens]`: the prompt mask, then ones (every decoded position
    /// is attended to; finished rows are ignored).
    mask: Tensor,
    cache: super::model::KvCache,
    /// `[rows, max_new_tokens]` uniforms of each row's own stream (none when greedy).
    uniforms: Option<Tensor>,
    /// `[rows]` (int64): the batch row of each current row.
    rows: Tensor,
    /// `[batch, max_new_tokens]` sampled tokens (pad after the end) and their liveness.
    tokens: Tensor,
    live: Tensor,
    /// With `record_logits`: each step's rows and their logits.
    recorded: Vec<(Tensor, Tensor)>,
    stats: DecodeStats,
}

impl<'a> Decoder<'a> {
    /// A batch of `prompts`, the first of them sequence `first` of the call (its random
    /// stream's index).
    fn start(
        model: &'a CausalLm,
        prompts: &'a [Vec<i64>],
        first: u64,
        width: usize,
        o: &'a GenerateOptions,
        how: Batching,
    ) -> Result<Decoder<'a>> {
        let dev = model.device;
        let b = prompts.len() as i64;
        let (w, n) = (width as i64, o.max_new_tokens as i64);
        // Row i draws from the stream of sequence first + i, one uniform per step.
        let draws: Vec<f64> = match o.temperature > 0.0 {
            true => (0..b as u64)
                .flat_map(|i| {
                    let mut rng = SplitMix64::stream(o.seed, first + i);
                    (0..n).map(move |_| rng.next_open01())
                })
                .collect(),
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
                        .f_view([b, n])?
                        .f_to_device(dev)?,
                ),
            };
            let tokens = Tensor::f_full([b, n], o.pad_id, (Kind::Int64, dev))?;
            let live = Tensor::f_zeros([b, n], (Kind::Int64, dev))?;
            let rows = Tensor::f_arange(b, (Kind::Int64, dev))?;
            Ok((ids, pmask, mask, uniforms, tokens, live, rows))
        };
        let (prompt_ids, prompt_mask, mask, uniforms, tokens, live, rows) = setup()
            .map_err(|e| Error::compute(format!("model {}: generation", model.name()), e))?;
        let cache = model.new_cache(b, w + n)?;
        let stats = DecodeStats {
            cache_bytes: cache.bytes(),
            ..DecodeStats::default()
        };
        Ok(Decoder {
            model,
            o,
            how,
            width: w,
            batch: b,
            prompts,
            prompt_ids,
            prompt_mask,
            mask,
            cache,
            uniforms,
            rows,
            tokens,
            live,
            recorded: Vec::new(),
            stats,
        })
    }

    fn backend(&self) -> impl Fn(TchError) -> Error + '_ {
        move |e| Error::compute(format!("model {}: generation", self.model.name()), e)
    }

    /// Runs the prompts into the cache; returns the last prompt position's logits
    /// `[batch, vocab]`. With `share_prompts`, each distinct prompt runs once, into a cache of
    /// the prompt block only, whose rows are then copied to each sequence that starts with it.
    fn prefill(&mut self, pos: &Tensor) -> Result<Tensor> {
        let mut distinct: Vec<&Vec<i64>> = Vec::new();
        let mut seen = std::collections::HashMap::new();
        let map: Vec<i64> = self
            .prompts
            .iter()
            .map(|p| {
                *seen.entry(p.as_slice()).or_insert_with(|| {
                    distinct.push(p);
                    distinct.len() as i64 - 1
                })
            })
            .collect();
        if !self.how.share_prompts || distinct.len() as i64 == self.batch {
            self.stats.prefill_rows += self.batch as usize;
            let (ids, mask) = (
                self.prompt_ids.shallow_clone(),
                self.prompt_mask.shallow_clone(),
            );
            return self.next_logits(&ids, &mask, pos);
        }
        let dev = self.model.device;
        let owned: Vec<Vec<i64>> = distinct.iter().map(|p| (*p).clone()).collect();
        let inputs = || -> Result<_, TchError> {
            let (ids, mask) = left_pad(&owned, self.width as usize, self.o.pad_id, dev)?;
            let pos = f_position_ids(&mask)?;
            let map = Tensor::f_from_slice(&map)?.f_to_device(dev)?;
            Ok((ids, mask, pos, map))
        };
        let (ids, mask, upos, map) = inputs().map_err(self.backend())?;
        let mut shared = self.model.new_cache(owned.len() as i64, self.width)?;
        let hidden = self
            .model
            .hidden_states_cached(&ids, &mask, &upos, &mut shared)?;
        let last = hidden.f_select(1, -1).map_err(self.backend())?;
        let logits = self.model.logits_from_hidden(&last)?;
        self.cache
            .fill_from(&shared, &map)
            .map_err(self.backend())?;
        self.stats.prefill_rows += owned.len();
        self.stats.prompt_cache_bytes = shared.bytes();
        logits.f_index_select(0, &map).map_err(self.backend())
    }

    /// Decodes, checking whether every sequence ended (and compacting) every `every` steps.
    fn run(mut self, every: usize) -> Result<(Generation, DecodeStats)> {
        let (w, n) = (self.width, self.o.max_new_tokens as i64);
        let dev = self.model.device;
        let pos = f_position_ids(&self.prompt_mask).map_err(self.backend())?;
        let first = self.prefill(&pos)?;
        let init = || -> Result<_, TchError> {
            let eos = Tensor::f_from_slice(&self.o.eos_ids)?.f_to_device(dev)?;
            let pad = Tensor::from(self.o.pad_id).f_to_device(dev)?;
            let finished = Tensor::f_zeros([self.batch], (Kind::Bool, dev))?;
            Ok((pos.f_select(1, -1)?.f_add_scalar(1)?, eos, pad, finished))
        };
        let (mut next_pos, eos, pad, mut finished) = init().map_err(self.backend())?;
        let mut last = first;
        let recompute_at = self.model.config.cache_recompute_at().map(|n| n as i64);
        for step in 0..n {
            let mut tok = self.step(step, &last, &pad, &eos, &mut finished)?;
            if step + 1 == n {
                break;
            }
            if (step + 1) as usize % every == 0 {
                let ended = finished
                    .f_to_device(Device::Cpu)
                    .and_then(|t| Vec::<bool>::try_from(&t))
                    .map_err(self.backend())?;
                let done = ended.iter().filter(|&&e| e).count();
                if done == ended.len() {
                    break;
                }
                if self.how.compact && done > 0 && 4 * done >= ended.len() {
                    let keep: Vec<i64> = (0..ended.len() as i64)
                        .filter(|&i| !ended[i as usize])
                        .collect();
                    self.compact(&keep, &mut [&mut tok, &mut next_pos, &mut finished])?;
                }
            }
            let total = w + step + 1;
            let mask = self.mask.f_narrow(1, 0, total).map_err(self.backend())?;
            last = if recompute_at == Some(self.cache.len()) {
                self.recompute(step, &mask)?
            } else {
                let m = self.cache.batch();
                let ids = tok.f_view([m, 1]).map_err(self.backend())?;
                let p = next_pos.f_view([m, 1]).map_err(self.backend())?;
                self.next_logits(&ids, &mask, &p)?
            };
            next_pos = next_pos.f_add_scalar(1).map_err(self.backend())?;
        }
        self.finish()
    }

    /// Keeps only the current rows `keep` (the live ones) in the cache, the masks, the random
    /// streams and the per-row `state` tensors.
    fn compact(&mut self, keep: &[i64], state: &mut [&mut Tensor]) -> Result<()> {
        let dev = self.model.device;
        let mut run = |d: &mut Self| -> Result<(), TchError> {
            let idx = Tensor::f_from_slice(keep)?.f_to_device(dev)?;
            d.cache.select_rows(&idx)?;
            d.mask = d.mask.f_index_select(0, &idx)?;
            d.rows = d.rows.f_index_select(0, &idx)?;
            if let Some(u) = &d.uniforms {
                d.uniforms = Some(u.f_index_select(0, &idx)?);
            }
            for t in state.iter_mut() {
                **t = t.f_index_select(0, &idx)?;
            }
            Ok(())
        };
        let r = run(self);
        r.map_err(self.backend())?;
        self.stats.compactions += 1;
        Ok(())
    }

    /// Runs the whole sequence so far (prompts and the tokens of steps 0..=`step`) again into an
    /// emptied cache (see `ModelConfig::cache_recompute_at`); returns the last position's logits.
    fn recompute(&mut self, step: i64, mask: &Tensor) -> Result<Tensor> {
        let inputs = || -> Result<_, TchError> {
            let ids = Tensor::f_cat(
                &[
                    &self.prompt_ids.f_index_select(0, &self.rows)?,
                    &self
                        .tokens
                        .f_narrow(1, 0, step + 1)?
                        .f_index_select(0, &self.rows)?,
                ],
                1,
            )?;
            Ok((ids, f_position_ids(mask)?))
        };
        let (ids, pos) = inputs().map_err(self.backend())?;
        self.cache.clear();
        self.next_logits(&ids, mask, &pos)
    }

    /// Runs `ids` through the model into the cache; the logits `[rows, vocab]` of the last
    /// position (the LM head only there: a prompt's other positions need no logits).
    fn next_logits(&mut self, ids: &Tensor, mask: &Tensor, pos: &Tensor) -> Result<Tensor> {
        let hidden = self
            .model
            .hidden_states_cached(ids, mask, pos, &mut self.cache)?;
        let last = hidden.f_select(1, -1).map_err(self.backend())?;
        self.model.logits_from_hidden(&last)
    }

    /// Samples step `step` from `last` for the current rows and records it; returns their
    /// tokens `[rows]`.
    fn step(
        &mut self,
        step: i64,
        last: &Tensor,
        pad: &Tensor,
        eos: &Tensor,
        finished: &mut Tensor,
    ) -> Result<Tensor> {
        if self.o.record_logits {
            self.recorded
                .push((self.rows.shallow_clone(), last.shallow_clone()));
        }
        let m = self.cache.batch();
        self.stats.decoded_rows += m as usize;
        let mut run = |d: &mut Self| -> Result<Tensor, TchError> {
            let u = d
                .uniforms
                .as_ref()
                .map(|u| u.f_select(1, step))
                .transpose()?;
            let tok = sample(last, d.o, u.as_ref())?;
            let live = finished.f_logical_not()?;
            let tok = tok.f_where_self(&live, pad)?;
            // In place, into the step's column of the rows' batch rows.
            let _ =
                d.tokens
                    .f_narrow(1, step, 1)?
                    .f_index_copy_(0, &d.rows, &tok.f_view([m, 1])?)?;
            let _ = d.live.f_narrow(1, step, 1)?.f_index_copy_(
                0,
                &d.rows,
                &live.f_to_kind(Kind::Int64)?.f_view([m, 1])?,
            )?;
            if !d.o.eos_ids.is_empty() {
                *finished = finished.f_logical_or(&Tensor::f_isin(&tok, eos, false, false)?)?;
            }
            Ok(tok)
        };
        let r = run(self);
        r.map_err(self.backend())
    }

    /// Reads the results back; drops trailing steps in which every sequence had already ended
    /// (decoded only because the end is checked every few steps). Recorded logits of rows that
    /// a compaction had dropped are 0.
    fn finish(self) -> Result<(Generation, DecodeStats)> {
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
            let mask = Tensor::f_cat(&[&self.prompt_mask, &self.live.f_narrow(1, 0, used)?], 1)?;
            let logits = match (self.o.record_logits && used > 0, self.recorded.first()) {
                (true, Some((_, l0))) => {
                    let vocab = l0.size()[1];
                    let all = Tensor::f_zeros([self.batch, used, vocab], (l0.kind(), l0.device()))?;
                    for (s, (rows, l)) in self.recorded.iter().take(used as usize).enumerate() {
                        let _ = all.f_select(1, s as i64)?.f_index_copy_(0, rows, l)?;
                    }
                    Some(all)
                }
                _ => None,
            };
            Ok((tokens, mask, logits))
        };
        let (tokens, attention_mask, logits) = assemble().map_err(self.backend())?;
        Ok((
            Generation {
                prompt_len: self.width,
                tokens,
                attention_mask,
                completions,
                finished: done,
                logits,
            },
            self.stats,
        ))
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

    fn arith() -> (std::path::PathBuf, CausalLm, crate::rl::Tokenizer) {
        // The built-in task's model (f32) answers in a few tokens, then EOS.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/arith/model");
        let model = CausalLm::load(&dir, Device::Cpu).unwrap();
        let tok = crate::rl::Tokenizer::from_dir(&dir).unwrap();
        (dir, model, tok)
    }

    /// Each prompt repeated `n` times, as a training step lays out its samples.
    fn grouped(tok: &crate::rl::Tokenizer, texts: &[&str], n: usize) -> Vec<Vec<i64>> {
        texts
            .iter()
            .flat_map(|p| std::iter::repeat(tok.encode(p).unwrap()).take(n))
            .collect()
    }

    /// Generation batches of 1, 3 and all, with prompt sharing and compaction, sample exactly
    /// the tokens of the plain path (one batch, every prompt prefilled, no row dropped); the
    /// logits each token was drawn from agree within 1e-4 (they differ by the rounding of other
    /// batch shapes only).
    #[test]
    fn batching_prompt_sharing_and_compaction_keep_the_samples() {
        let (_, model, tok) = arith();
        let n = 4;
        let texts = ["37+58=", "1+2=", "99+99=", "5+5=", "12+345="];
        let prompts = grouped(&tok, &texts, n);
        for temperature in [1.0, 0.0] {
            let o = GenerateOptions {
                max_new_tokens: 12,
                temperature,
                seed: 11,
                eos_ids: tok.eos_ids.clone(),
                pad_id: tok.pad_id,
                record_logits: true,
                ..GenerateOptions::default()
            };
            let plain = generate(&model, &prompts, &o).unwrap();
            let plain_logits = plain.logits.as_ref().unwrap();
            let lens: Vec<usize> = plain.completions.iter().map(Vec::len).collect();
            let longest = *lens.iter().max().unwrap();
            // What makes the comparison bite: sequences end at different steps.
            assert!(
                *lens.iter().min().unwrap() < longest,
                "temperature {temperature}: every sequence has {longest} tokens"
            );
            if temperature > 0.0 {
                // A prompt's samples draw from their own streams.
                assert!(
                    (0..texts.len())
                        .any(|g| plain.completions[g * n] != plain.completions[g * n + 1]),
                    "samples of a prompt all equal"
                );
            }
            for batch in [1, 3, 0] {
                for (share_prompts, compact) in [(true, true), (false, true), (true, false)] {
                    let how = Batching {
                        batch,
                        share_prompts,
                        compact,
                    };
                    let s = generate_batched(&model, &prompts, &o, &how).unwrap();
                    assert_eq!(s.completions, plain.completions, "{how:?} t {temperature}");
                    assert_eq!(s.finished, plain.finished, "{how:?}");
                    let mut worst = 0f64;
                    for (i, l) in s.logits.as_ref().unwrap().iter().enumerate() {
                        let want = plain_logits.get(i as i64).narrow(0, 0, lens[i] as i64);
                        let d = (l - &want).abs().max().double_value(&[]);
                        worst = worst.max(d);
                    }
                    eprintln!("{how:?} temperature {temperature}: max |Δ logit| {worst:.3e}");
                    assert!(worst <= 1e-4, "{how:?}: logits differ by {worst}");
                    let st = s.stats;
                    // Each live token is decoded once; fewer rows than the plain path's.
                    let live: usize = lens.iter().sum();
                    assert!(st.decoded_rows >= live, "{st:?}");
                    if batch == 0 && share_prompts {
                        assert_eq!(st.prefill_rows, texts.len(), "{st:?}");
                    }
                    if !share_prompts {
                        assert_eq!(st.prefill_rows, prompts.len(), "{st:?}");
                    }
                    if batch == 0 && compact {
                        assert!(st.compactions > 0, "{st:?}");
                        assert!(st.decoded_rows < prompts.len() * longest, "{st:?}");
                    }
                    if !compact {
                        assert_eq!(st.compactions, 0);
                    }
                }
            }
        }
    }

    /// The memory plan's generation caches are what a generation batch allocates: its KV cache
    /// (`[batch, kv heads, prompt + new tokens, head dim]` per layer, keys and values) and the
    /// shared prompts' cache.
    #[test]
    fn the_memory_plan_counts_the_generation_caches_exactly() {
        use crate::rl::memory::{plan, ModelShape, PlanInput, Precision, Target};
        let (dir, model, tok) = arith();
        // 3 prompts × 4 samples in generation batches of 8: the first holds 2 prompts (the
        // longest among them), the second 1.
        let prompts = grouped(&tok, &["99+99=", "1+2=", "5+5="], 4);
        let width = prompts.iter().map(Vec::len).max().unwrap() as u64;
        let o = GenerateOptions {
            max_new_tokens: 12,
            seed: 3,
            eos_ids: tok.eos_ids.clone(),
            pad_id: tok.pad_id,
            ..GenerateOptions::default()
        };
        let how = Batching {
            batch: 8,
            ..Batching::default()
        };
        let s = generate_batched(&model, &prompts, &o, &how).unwrap();
        let p = plan(&PlanInput {
            model: ModelShape::from_path(&dir).unwrap(),
            target: Target::Cpu,
            precision: Precision::F32,
            prompts: 3,
            n: 4,
            prompt_tokens: width,
            max_new_tokens: 12,
            micro_batch: 4,
            gen_batch: 8,
            init: false,
            ema_anchor: true,
            reward_model: None,
            chunk_bytes: 1 << 20,
            lora: None,
        });
        let item = |what: &str| p.items.iter().find(|i| i.what == what).map(|i| i.bytes);
        assert!(s.stats.cache_bytes > 0 && s.stats.prompt_cache_bytes > 0);
        assert_eq!(item("KV cache"), Some(s.stats.cache_bytes));
        assert_eq!(
            item("shared prompts' KV cache"),
            Some(s.stats.prompt_cache_bytes)
        );
    }

    /// Checking the end every 8 steps (CUDA's interval) decodes past the end but returns what
    /// checking every step returns, here on the CPU.
    #[test]
    fn sparse_end_checks_give_the_same_result() {
        let (_, model, tok) = arith();
        let prompts = grouped(&tok, &["37+58=", "1+2=", "99+99="], 1);
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
                let plain = Batching {
                    batch: 0,
                    share_prompts: false,
                    compact: false,
                };
                tch::no_grad(|| Decoder::start(&model, &prompts, 0, width, &o, plain)?.run(every))
                    .unwrap()
                    .0
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
