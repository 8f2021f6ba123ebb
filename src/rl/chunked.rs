//! Memory-bounded per-token statistics of completions: the log-probability of each sampled token,
//! the KL divergence to other models' distributions and the entropy, computed only at completion
//! positions and a chunk of positions at a time, from final hidden states and a hidden → logits
//! function (the LM head). No `[batch, length, vocab]` tensor is ever built: at most one chunk's
//! `[chunk, vocab]` logits (and a few temporaries of that size) are alive at once.
//!
//! Layout (as `super::generate::score_at`): prompts left-padded to the longest, completions
//! right-padded after them, padding masked out of attention, position ids `cumsum(mask) − 1`. The
//! hidden state at position `width − 1 + j` of a row predicts its completion token `j`; only the
//! real (non-padding) completion tokens are kept, packed into `N` rows in row-major order.
//!
//! Gradients: [`token_stats`] keeps the autograd graph of the log-probabilities when the hidden
//! states carry one (each chunk then keeps its `[chunk, vocab]` log-softmax for the backward pass,
//! so the graph grows with N × vocab). [`backward_logprobs`] is the bounded form for training:
//! given the weight of every token's log-probability in the loss, it recomputes the head a chunk
//! at a time, back-propagates each chunk at once (into the head's parameters and a gradient
//! for the hidden states), then sends the collected hidden-state gradient through the decoder
//! once. Log-probabilities, KL and entropy are in f32 whatever the model's dtype.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// The LM head: final hidden states `[n, hidden]` → logits `[n, vocab]` (any float dtype).
pub type Head<'a> = &'a dyn Fn(&Tensor) -> Result<Tensor>;

/// Bytes of one chunk's f32 logits that [`chunk_positions`] aims at by default.
pub const DEFAULT_CHUNK_BYTES: u64 = 32 << 20;

/// Positions per chunk so that one `[chunk, vocab]` f32 tensor takes about `bytes` (≥ 1).
pub fn chunk_positions(vocab: usize, bytes: u64) -> i64 {
    (bytes / (4 * vocab.max(1) as u64)).max(1) as i64
}

fn be(what: &str, e: tch::TchError) -> Error {
    Error::compute(what.to_string(), e)
}

/// A batch of (prompt, completion) pairs laid out for one forward pass, and where its completion
/// tokens are.
pub struct Completions {
    /// `[batch, width + cmax]` token ids.
    pub ids: Tensor,
    /// `[batch, width + cmax]`, 1 on real tokens.
    pub attention_mask: Tensor,
    /// `[batch, width + cmax]`, `cumsum(mask) − 1` (0 on padding).
    pub position_ids: Tensor,
    /// Width of the left-padded prompt block.
    pub width: i64,
    /// Longest completion.
    pub cmax: i64,
    pub batch: i64,
    /// `[N]` flat indices into `[batch · (width + cmax)]` of the positions whose hidden state
    /// predicts a completion token.
    pub at: Tensor,
    /// `[N]` the completion token predicted at each of those positions.
    pub targets: Tensor,
    /// `[N]` the row (sequence) of each.
    pub seq: Tensor,
    /// `[N]` flat indices into `[batch · cmax]` (the padded completion layout).
    pub padded_at: Tensor,
    /// N, the number of completion tokens.
    pub n_tokens: i64,
    /// Completion tokens per row.
    pub lengths: Vec<i64>,
}

impl Completions {
    /// Lays out `pairs` on `device`. Prompts must be non-empty, every id inside `0..vocab`, and
    /// `width + cmax` within `max_positions`.
    pub fn new(
        pairs: &[(Vec<i64>, Vec<i64>)],
        pad_id: i64,
        vocab: usize,
        max_positions: usize,
        device: Device,
    ) -> Result<Completions> {
        if pairs.is_empty() {
            return Err(Error::Internal(
                "no (prompt, completion) pairs to score".into(),
            ));
        }
        let v = vocab as i64;
        for (i, (p, c)) in pairs.iter().enumerate() {
            if p.is_empty() {
                return Err(Error::Mismatch(format!("prompt {i} is empty")));
            }
            for (what, ids) in [("prompt", p), ("completion", c)] {
                if let Some(t) = ids.iter().find(|&&t| t < 0 || t >= v) {
                    return Err(Error::Mismatch(format!(
                        "{what} {i}: token id {t} outside the vocabulary (0..{v})"
                    )));
                }
            }
        }
        let width = pairs.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
        let cmax = pairs.iter().map(|(_, c)| c.len()).max().unwrap_or(0);
        if width + cmax > max_positions {
            return Err(Error::Mismatch(format!(
                "prompt of {width} tokens + completion of {cmax} exceeds max_position_embeddings \
                 {max_positions}"
            )));
        }
        let b = pairs.len();
        let row = width + cmax;
        let mut ids = vec![pad_id; b * row];
        let mut mask = vec![0i64; b * row];
        let (mut at, mut targets, mut seq, mut padded_at) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut lengths = Vec::with_capacity(b);
        for (i, (p, c)) in pairs.iter().enumerate() {
            let off = i * row + width - p.len();
            ids[off..off + p.len()].copy_from_slice(p);
            mask[off..off + p.len()].fill(1);
            let coff = i * row + width;
            ids[coff..coff + c.len()].copy_from_slice(c);
            mask[coff..coff + c.len()].fill(1);
            for (j, &t) in c.iter().enumerate() {
                at.push((i * row + width - 1 + j) as i64);
                targets.push(t);
                seq.push(i as i64);
                padded_at.push((i * cmax + j) as i64);
            }
            lengths.push(c.len() as i64);
        }
        let shape = [b as i64, row as i64];
        let t = |v: &[i64]| Tensor::from_slice(v).to_device(device);
        let attention_mask = t(&mask).view(shape);
        let position_ids = (attention_mask.cumsum(1, Kind::Int64) - 1).clamp_min(0);
        Ok(Completions {
            ids: t(&ids).view(shape),
            attention_mask,
            position_ids,
            width: width as i64,
            cmax: cmax as i64,
            batch: b as i64,
            n_tokens: at.len() as i64,
            at: t(&at),
            targets: t(&targets),
            seq: t(&seq),
            padded_at: t(&padded_at),
            lengths,
        })
    }

    /// The hidden states `[N, hidden]` at the completion positions of `hidden`
    /// `[batch, width + cmax, hidden]` (differentiable).
    pub fn gather(&self, hidden: &Tensor) -> Result<Tensor> {
        let s = hidden.size();
        let row = self.width + self.cmax;
        if s.len() != 3 || s[0] != self.batch || s[1] != row {
            return Err(Error::Internal(format!(
                "hidden states of shape {s:?}, expected [{}, {row}, hidden]",
                self.batch
            )));
        }
        hidden
            .f_reshape([self.batch * row, s[2]])
            .and_then(|h| h.f_index_select(0, &self.at))
            .map_err(|e| be("gathering completion positions", e))
    }

    /// Per-sequence sums `[batch]` (f32) of per-token values `[N]` (differentiable).
    pub fn per_sequence(&self, x: &Tensor) -> Result<Tensor> {
        Tensor::f_zeros([self.batch], (Kind::Float, x.device()))
            .and_then(|z| z.f_index_add(0, &self.seq, &x.f_to_kind(Kind::Float)?))
            .map_err(|e| be("per-sequence sums", e))
    }

    /// Per-token values `[N]` in the padded completion layout `[batch, cmax]`, 0 on padding.
    pub fn to_padded(&self, x: &Tensor) -> Result<Tensor> {
        Tensor::f_zeros([self.batch * self.cmax], (Kind::Float, x.device()))
            .and_then(|z| z.f_index_add(0, &self.padded_at, &x.f_to_kind(Kind::Float)?))
            .and_then(|z| z.f_reshape([self.batch, self.cmax]))
            .map_err(|e| be("padded layout", e))
    }
}

/// What to compute besides the log-probabilities.
#[derive(Debug, Clone, Copy)]
pub struct StatsOptions {
    /// Statistics of the distribution softmax(logits / temperature), the one sampled from.
    pub temperature: f64,
    /// Positions per chunk (see [`chunk_positions`]).
    pub chunk: i64,
    /// Also the entropy of the policy's distribution at each position.
    pub entropy: bool,
}

/// Another model's hidden states at the same completion positions, and its head.
pub struct Reference<'a> {
    pub hidden: &'a Tensor,
    pub head: Head<'a>,
}

/// Per-token statistics `[N]`, f32.
pub struct TokenStats {
    /// log π(y_t | …) of the sampled tokens; carries the graph when the hidden states did.
    pub logprobs: Tensor,
    /// Entropy of π at each position (no graph), when asked for.
    pub entropy: Option<Tensor>,
    /// Per reference, in order: its log-probabilities of the same tokens and KL(π ‖ ref) over
    /// the vocabulary at each position (no graph).
    pub references: Vec<ReferenceStats>,
}

pub struct ReferenceStats {
    pub logprobs: Tensor,
    pub kl: Tensor,
}

/// Logits of `head(h)` as f32, divided by the temperature.
fn scaled_logits(head: Head, h: &Tensor, temperature: f64) -> Result<Tensor> {
    let z = head(h)?
        .f_to_kind(Kind::Float)
        .map_err(|e| be("LM head", e))?;
    if temperature == 1.0 {
        Ok(z)
    } else {
        z.f_div_scalar(temperature)
            .map_err(|e| be("LM head / temperature", e))
    }
}

/// log-softmax `[c, vocab]` and the log-probabilities `[c]` of `targets` under it.
fn log_softmax_at(z: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let lsm = z
        .f_log_softmax(-1, Kind::Float)
        .map_err(|e| be("log-softmax", e))?;
    let lp = targets
        .f_unsqueeze(-1)
        .and_then(|t| lsm.f_gather(-1, &t, false))
        .and_then(|g| g.f_squeeze_dim(-1))
        .map_err(|e| be("log-probabilities of the sampled tokens", e))?;
    Ok((lsm, lp))
}

fn check_rows(h: &Tensor, targets: &Tensor) -> Result<i64> {
    let n = targets.size().first().copied().unwrap_or(0);
    let s = h.size();
    if s.len() != 2 || s[0] != n {
        return Err(Error::Internal(format!(
            "hidden states of shape {s:?} for {n} target tokens"
        )));
    }
    Ok(n)
}

/// Log-probabilities of `targets` `[N]` under `head(h)` for hidden states `h` `[N, hidden]`, with
/// the entropy and the KL to each reference, chunk by chunk (see the module docs).
pub fn token_stats(
    h: &Tensor,
    head: Head,
    targets: &Tensor,
    references: &[Reference],
    o: &StatsOptions,
) -> Result<TokenStats> {
    if !(o.temperature.is_finite() && o.temperature > 0.0) {
        return Err(Error::setting(
            "temperature",
            format!("scoring needs a temperature > 0, got {}", o.temperature),
        ));
    }
    let n = check_rows(h, targets)?;
    for r in references {
        if r.hidden.size().first() != Some(&n) {
            return Err(Error::Internal(format!(
                "reference hidden states of shape {:?} for {n} target tokens",
                r.hidden.size()
            )));
        }
    }
    let chunk = o.chunk.max(1);
    let mut lps = Vec::new();
    let mut ents = Vec::new();
    let mut refs: Vec<(Vec<Tensor>, Vec<Tensor>)> = references
        .iter()
        .map(|_| (Vec::new(), Vec::new()))
        .collect();
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let rows = |t: &Tensor| t.f_narrow(0, start, len).map_err(|e| be("chunk", e));
        let tc = rows(targets)?;
        let z = scaled_logits(head, &rows(h)?, o.temperature)?;
        let (lsm, lp) = log_softmax_at(&z, &tc)?;
        drop(z);
        lps.push(lp);
        if o.entropy || !references.is_empty() {
            tch::no_grad(|| -> Result<()> {
                let logp = lsm.detach();
                let p = logp.f_exp().map_err(|e| be("softmax", e))?;
                if o.entropy {
                    let e = p
                        .f_mul(&logp)
                        .and_then(|x| x.f_sum_dim_intlist(-1, false, Kind::Float))
                        .and_then(|x| x.f_neg())
                        .map_err(|e| be("entropy", e))?;
                    ents.push(e);
                }
                for (r, acc) in references.iter().zip(refs.iter_mut()) {
                    let zr = scaled_logits(r.head, &rows(r.hidden)?, o.temperature)?;
                    let (lq, lpr) = log_softmax_at(&zr, &tc)?;
                    drop(zr);
                    let kl = logp
                        .f_sub(&lq)
                        .and_then(|d| d.f_mul(&p))
                        .and_then(|x| x.f_sum_dim_intlist(-1, false, Kind::Float))
                        .map_err(|e| be("KL divergence", e))?;
                    acc.0.push(lpr);
                    acc.1.push(kl);
                }
                Ok(())
            })?;
        }
        start += len;
    }
    let dev = h.device();
    let cat = |v: &[Tensor]| -> Result<Tensor> {
        if v.is_empty() {
            Tensor::f_zeros([0], (Kind::Float, dev)).map_err(|e| be("empty statistics", e))
        } else {
            Tensor::f_cat(v, 0).map_err(|e| be("joining chunks", e))
        }
    };
    Ok(TokenStats {
        logprobs: cat(&lps)?,
        entropy: if o.entropy { Some(cat(&ents)?) } else { None },
        references: refs
            .iter()
            .map(|(lp, kl)| {
                Ok(ReferenceStats {
                    logprobs: cat(lp)?,
                    kl: cat(kl)?,
                })
            })
            .collect::<Result<_>>()?,
    })
}

/// The token-level KL penalty of [`backward_weighted`] estimated by top-k KL (EMA-PG, Zhang & Ba,
/// arXiv 2602.04417): at each completion position t, with π the policy's tempered distribution,
/// q the anchor's, S_t the k tokens of largest π and y_t the sampled token,
///
///   KL̂_t = Σ_{v ∈ S_t} π(v)·(log π(v) − log q(v)) + 1[y_t ∉ S_t]·w_t·d_t,   d_t = log π(y_t) − log q(y_t),
///
/// w_t = π(y_t)/π_old(y_t) (the importance weight of a later update; 1 on-policy). Its value is
/// unbiased: E_y[1[y ∉ S]·d(y)] is the KL's sum over the tokens outside S. Its gradient is
/// unbiased too: the surrogate's tail term is 1[y_t ∉ S_t]·w_t·((d_t + 1)·log π(y_t) + …) with
/// d_t and w_t held constant, whose expectation Σ_{v ∉ S} ∇π(v)·(d(v) + 1) is the tail's share of
/// ∇KL = Σ_v ∇π(v)·(d(v) + 1). (The EMA-PG code's tail term has d_t alone, without the + 1; its
/// gradient then misses Σ_{v ∉ S} ∇π(v) = −∇π(S), biased unless k covers the vocabulary.) With k
/// at least the vocabulary size the estimate is the exact KL and its exact gradient; the sum of
/// KL̂_t over a completion's positions is weighted by `scale` (β / batch size).
pub struct TopKl<'a> {
    /// The anchor's hidden states at the same completion positions `[N, hidden]` (no graph).
    pub anchor: Reference<'a>,
    pub k: i64,
    pub scale: f64,
    /// The tokens' log-probabilities when they were sampled `[N]` (a later update); `None`:
    /// on-policy.
    pub old: Option<&'a Tensor>,
}

impl TopKl<'_> {
    /// The chunk's surrogate (a 0-dim tensor with the graph of `lsm` and `lp`): its value is
    /// `scale`·Σ_t KL̂_t, its gradient `scale`·Σ_t ∇KL̂_t (see [`TopKl`]). `lsm` `[len, vocab]` is
    /// the policy's log-softmax, `lp` `[len]` its log-probabilities of `targets`.
    fn chunk_surrogate(
        &self,
        lsm: &Tensor,
        lp: &Tensor,
        targets: &Tensor,
        start: i64,
        len: i64,
        temperature: f64,
    ) -> Result<Tensor> {
        let rows = |t: &Tensor| t.f_narrow(0, start, len).map_err(|e| be("chunk", e));
        let lq = tch::no_grad(|| -> Result<Tensor> {
            let zq = scaled_logits(self.anchor.head, &rows(self.anchor.hidden)?, temperature)?;
            zq.f_log_softmax(-1, Kind::Float)
                .map_err(|e| be("anchor log-softmax", e))
        })?;
        let vocab = lsm.size().last().copied().unwrap_or(0);
        let k = self.k.clamp(1, vocab.max(1));
        let old = match self.old {
            Some(o) => Some(rows(o)?),
            None => None,
        };
        (|| -> Result<Tensor, tch::TchError> {
            let (_, idx) = lsm.f_detach()?.f_topk(k, -1, true, false)?;
            let lp_k = lsm.f_gather(-1, &idx, false)?;
            let lq_k = lq.f_gather(-1, &idx, false)?;
            let head = lp_k
                .f_exp()?
                .f_mul(&lp_k.f_sub(&lq_k)?)?
                .f_sum_dim_intlist(-1, false, Kind::Float)?;
            let y = targets.f_unsqueeze(-1)?;
            let tail = idx
                .f_eq_tensor(&y)?
                .f_any_dim(-1, false)?
                .f_logical_not()?
                .f_to_kind(Kind::Float)?;
            let lp0 = lp.f_detach()?;
            let d = lp0.f_sub(&lq.f_gather(-1, &y, false)?.f_squeeze_dim(-1)?)?;
            let w = match &old {
                Some(o) => tail.f_mul(&lp0.f_sub(o)?.f_exp()?)?,
                None => tail,
            };
            // (d + 1)·(lp − lp₀) has value 0 and gradient (d + 1)·∇lp; + d gives the value.
            let t = d.f_add_scalar(1.0)?.f_mul(&lp.f_sub(&lp0)?)?.f_add(&d)?;
            head.f_add(&w.f_mul(&t)?)?
                .f_sum(Kind::Float)?
                .f_mul_scalar(self.scale)
        })()
        .map_err(|e| be("top-k KL", e))
    }
}

/// The weight of each token's log-probability in [`backward_weighted`]'s objective.
pub enum Weights<'a> {
    /// Constants `[N]` (no graph).
    Fixed(&'a Tensor),
    /// Computed a chunk at a time from the chunk's first row, its length and its tokens'
    /// current log-probabilities `[len]` (f32, no graph): `[len]` weights, e.g. the clipped
    /// importance ratios of PPO/GRPO's later updates.
    Of(&'a mut dyn FnMut(i64, i64, &Tensor) -> Result<Tensor>),
}

/// Adds ∇ Σ_t weights_t · log π(targets_t) to the gradients of everything `h` and `head` depend
/// on ([`backward_weighted`] with fixed weights and nothing between the chunks).
pub fn backward_logprobs(
    h: &Tensor,
    head: Head,
    targets: &Tensor,
    weights: &Tensor,
    temperature: f64,
    chunk: i64,
) -> Result<Tensor> {
    backward_weighted(
        h,
        head,
        targets,
        Weights::Fixed(weights),
        None,
        (temperature, chunk),
        &mut || Ok(()),
    )
}

/// Adds ∇ Σ_t weights_t · log π(targets_t) to the gradients of everything `h` and `head` depend
/// on, with `h` `[N, hidden]` the completion-position hidden states (carrying the decoder's
/// graph), at the sampling temperature, `chunk` positions at a time — in bounded memory: the head is recomputed and back-propagated one chunk at a time
/// (only that chunk's `[chunk, vocab]` tensors are alive), the hidden-state gradients are
/// collected (`[N, hidden]`), and the decoder is back-propagated once. `after_chunk` runs after
/// each chunk's backward pass (the trainer folds the head's bf16 gradients into f32 there, so
/// they are not summed in bf16 across chunks). Returns Σ_t weights_t · log π(targets_t), the
/// objective's value, as a 0-dim f32 tensor on the device (reading it is left to the caller: no
/// host sync here).
// long fn: one chunk loop holds the weights, the optional top-k KL term and the backward pass
// together, so that only one chunk's [chunk, vocab] tensors are ever alive.
pub fn backward_weighted(
    h: &Tensor,
    head: Head,
    targets: &Tensor,
    mut weights: Weights,
    kl: Option<&TopKl>,
    (temperature, chunk): (f64, i64),
    after_chunk: &mut dyn FnMut() -> Result<()>,
) -> Result<Tensor> {
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(Error::setting(
            "temperature",
            format!("scoring needs a temperature > 0, got {temperature}"),
        ));
    }
    let n = check_rows(h, targets)?;
    let fixed = match &weights {
        Weights::Fixed(w) => {
            if w.size() != [n] {
                return Err(Error::Internal(format!(
                    "{:?} weights for {n} target tokens",
                    w.size()
                )));
            }
            Some(
                w.f_detach()
                    .and_then(|w| w.f_to_kind(Kind::Float))
                    .map_err(|e| be("loss weights", e))?,
            )
        }
        Weights::Of(_) => None,
    };
    if n == 0 {
        return Tensor::f_zeros([], (Kind::Float, h.device())).map_err(|e| be("objective", e));
    }
    let chunk = chunk.max(1);
    let hd = h.detach();
    let mut grads = Vec::new();
    let mut total =
        Tensor::f_zeros([], (Kind::Float, h.device())).map_err(|e| be("objective", e))?;
    tch::with_grad(|| -> Result<()> {
        let mut start = 0;
        while start < n {
            let len = chunk.min(n - start);
            // A leaf of its own: its gradient is this chunk's share of ∂objective/∂h.
            let x = hd
                .f_narrow(0, start, len)
                .and_then(|x| x.f_detach())
                .and_then(|x| x.f_set_requires_grad(true))
                .map_err(|e| be("chunk", e))?;
            let tc = targets
                .f_narrow(0, start, len)
                .map_err(|e| be("chunk", e))?;
            let z = scaled_logits(head, &x, temperature)?;
            let (lsm, lp) = log_softmax_at(&z, &tc)?;
            drop(z);
            let wc = match (&fixed, &mut weights) {
                (Some(w), _) => w.f_narrow(0, start, len).map_err(|e| be("chunk", e))?,
                (None, Weights::Fixed(_)) => {
                    return Err(Error::Internal("fixed weights not prepared".into()))
                }
                (None, Weights::Of(f)) => {
                    let wc = tch::no_grad(|| f(start, len, &lp.detach()))?;
                    if wc.size() != [len] {
                        return Err(Error::Internal(format!(
                            "{:?} weights for a chunk of {len} tokens",
                            wc.size()
                        )));
                    }
                    wc.f_detach()
                        .and_then(|w| w.f_to_kind(Kind::Float))
                        .map_err(|e| be("loss weights", e))?
                }
            };
            let mut obj = lp
                .f_mul(&wc)
                .and_then(|x| x.f_sum(Kind::Float))
                .map_err(|e| be("weighted log-probabilities", e))?;
            if let Some(kl) = kl {
                let term = kl.chunk_surrogate(&lsm, &lp, &tc, start, len, temperature)?;
                obj = obj.f_add(&term).map_err(|e| be("top-k KL", e))?;
            }
            drop(lsm);
            obj.f_backward()
                .map_err(|e| be("backward through the LM head", e))?;
            after_chunk()?;
            total = total.f_add(&obj.detach()).map_err(|e| be("objective", e))?;
            let g = x.grad();
            grads.push(if g.defined() {
                g
            } else {
                x.f_zeros_like().map_err(|e| be("chunk gradient", e))?
            });
            start += len;
        }
        if h.requires_grad() {
            let g = Tensor::f_cat(&grads, 0).map_err(|e| be("hidden-state gradient", e))?;
            h.f_mul(&g)
                .and_then(|x| x.f_sum(Kind::Float))
                .and_then(|s| s.f_backward())
                .map_err(|e| be("backward through the decoder", e))?;
        }
        Ok(())
    })?;
    Ok(total)
}
