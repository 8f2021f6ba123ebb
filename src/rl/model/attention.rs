//! Masks and the attention kernel.
//!
//! Grouped-query heads are never materialised: the `rep = heads / kv_heads` query heads that
//! share a key/value head are folded into that head's query rows (`[b, kv, rep·t, d]`), so one
//! attention call per key/value head serves them all, on any kernel. Scores go through libtorch's
//! fused `scaled_dot_product_attention` (flash / memory-efficient on CUDA); Gemma 2's soft-capping
//! (tanh of the scores before the mask) cannot be expressed there and takes the eager path, which
//! is transformers' eager attention (scores and cap in the activation dtype, softmax in f32).
//!
//! Masks are boolean, `true` = may attend: causal on absolute indices, the padding mask, the
//! sliding window (`key > query − window`, transformers' rule), and always the diagonal, so that
//! a padding query (which attends to nothing real) still has one finite row instead of a NaN that
//! would leak into later layers through its keys and values.

use tch::{Kind, TchError, Tensor};

type TchResult<T> = std::result::Result<T, TchError>;

/// Allowed (query, key) pairs for one forward pass, folded for grouped queries.
pub(super) struct Masks {
    full: Tensor,
    sliding: Option<(i64, Tensor)>,
}

/// `[b, 1, t, total]` → `[b, 1, rep·t, total]` (each query row repeated for its `rep` heads).
fn fold(mask: Tensor, rep: i64) -> TchResult<Tensor> {
    if rep == 1 {
        return Ok(mask);
    }
    let s = mask.size();
    let (b, t, total) = (s[0], s[2], s[3]);
    mask.f_unsqueeze(2)?
        .f_expand([b, 1, rep, t, total], false)?
        .f_reshape([b, 1, rep * t, total])
}

impl Masks {
    /// `attention_mask` `[b, past + t]` (1 = real token); queries are the `t` positions after
    /// `past`; `window`: the sliding window some layers use.
    pub fn new(
        attention_mask: &Tensor,
        past: i64,
        t: i64,
        window: Option<i64>,
        rep: i64,
    ) -> TchResult<Masks> {
        let dev = attention_mask.device();
        let b = attention_mask.size()[0];
        let total = past + t;
        let qi = Tensor::f_arange_start(past, total, (Kind::Int64, dev))?.f_view([t, 1])?;
        let kj = Tensor::f_arange(total, (Kind::Int64, dev))?.f_view([1, total])?;
        let causal = kj.f_le_tensor(&qi)?;
        let diagonal = kj.f_eq_tensor(&qi)?;
        let keep = attention_mask.f_ne(0)?.f_view([b, 1, 1, total])?;
        let allowed = |extra: Option<&Tensor>| -> TchResult<Tensor> {
            let c = match extra {
                Some(e) => causal.f_logical_and(e)?,
                None => causal.shallow_clone(),
            };
            let m = c.f_view([1, 1, t, total])?.f_logical_and(&keep)?;
            fold(m.f_logical_or(&diagonal.f_view([1, 1, t, total])?)?, rep)
        };
        let full = allowed(None)?;
        let sliding = match window {
            Some(w) => {
                let inside = kj.f_gt_tensor(&qi.f_sub_scalar(w)?)?;
                Some((w, allowed(Some(&inside))?))
            }
            None => None,
        };
        Ok(Masks { full, sliding })
    }

    /// The mask of a layer with this window.
    pub fn get(&self, window: Option<i64>) -> &Tensor {
        match (&self.sliding, window) {
            (Some((w, m)), Some(x)) if *w == x => m,
            _ => &self.full,
        }
    }
}

/// How scores are turned into weights.
pub(super) struct Scoring {
    pub scale: f64,
    /// tanh soft-capping of the scores (forces the eager path).
    pub softcap: Option<f64>,
}

/// Attention of `q` `[b, heads, t, d]` over `k`, `v` `[b, kv_heads, total, d]` with the folded
/// `allowed` mask; returns `[b, t, heads·d]`.
pub(super) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    allowed: &Tensor,
    scoring: &Scoring,
) -> TchResult<Tensor> {
    let (b, heads, t, d) = match q.size()[..] {
        [b, h, t, d] => (b, h, t, d),
        _ => return Err(TchError::Shape(format!("queries of shape {:?}", q.size()))),
    };
    let kv_heads = k.size()[1];
    let rep = heads / kv_heads;
    let qf = q.f_reshape([b, kv_heads, rep * t, d])?;
    let out = match scoring.softcap {
        None => Tensor::f_scaled_dot_product_attention(
            &qf,
            k,
            v,
            Some(allowed),
            0.0,
            false,
            scoring.scale,
            false,
        )?,
        Some(cap) => eager(&qf, k, v, allowed, scoring.scale, cap)?,
    };
    out.f_reshape([b, heads, t, d])?
        .f_transpose(1, 2)?
        .f_reshape([b, t, heads * d])
}

/// transformers' eager attention with soft-capping: scores and cap in the activation dtype,
/// masked entries set to the dtype's minimum, softmax in f32, weights back in the dtype.
fn eager(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    allowed: &Tensor,
    scale: f64,
    cap: f64,
) -> TchResult<Tensor> {
    let kind = q.kind();
    let scores = q.f_matmul(&k.f_transpose(-2, -1)?)?.f_mul_scalar(scale)?;
    let capped = scores.f_div_scalar(cap)?.f_tanh()?.f_mul_scalar(cap)?;
    let masked = capped.f_masked_fill(&allowed.f_logical_not()?, min_of(kind))?;
    masked
        .f_softmax(-1, Kind::Float)?
        .f_to_kind(kind)?
        .f_matmul(v)
}

/// The most negative finite value of `kind` (transformers' `torch.finfo(dtype).min`).
fn min_of(kind: Kind) -> f64 {
    match kind {
        Kind::BFloat16 => -3.389_531_389_251_535e38,
        Kind::Half => -65504.0,
        Kind::Double => f64::MIN,
        _ => f32::MIN as f64,
    }
}
