//! Rotary position embeddings, computed as transformers computes them (inverse frequencies in
//! f32 with the same operations, angles in f32, cos/sin scaled then cast to the activation dtype,
//! rotate-half convention, only the first `rotary_dim` dimensions of a head rotated).

use tch::{Device, Kind, TchError, Tensor};

use crate::rl::config::{Rope, RopeScaling};

type TchResult<T> = std::result::Result<T, TchError>;

enum Freqs {
    Fixed(Tensor),
    /// LongRoPE: the long set when a forward pass's largest position reaches `original`.
    Long {
        short: Tensor,
        long: Tensor,
        original: i64,
    },
}

/// The inverse frequencies of one rotary embedding, `[rotary_dim / 2]` f32 on the device.
pub(super) struct RopeFreqs {
    freqs: Freqs,
    /// Multiplies cos and sin (LongRoPE's attention factor; 1 otherwise).
    scale: f64,
}

/// `base^(2i/dim)` for i < dim/2, in f32, as `base ** (arange(0, dim, 2).float() / dim)`.
fn powers(theta: f64, dim: i64, device: Device) -> TchResult<Tensor> {
    let exponent = Tensor::f_arange_start_step(0, dim, 2, (Kind::Int64, device))?
        .f_to_kind(Kind::Float)?
        .f_div_scalar(dim as f64)?;
    Tensor::from(theta as f32)
        .f_to_device(device)?
        .f_pow(&exponent)
}

/// Llama 3.x: frequencies whose wavelength exceeds original/low_freq_factor are divided by
/// `factor`, those below original/high_freq_factor kept, a linear ramp in between (the same f32
/// operations as transformers' `_compute_llama3_parameters`, whose scalar-over-tensor divisions
/// are reciprocal-then-multiply).
fn llama3(inv: Tensor, factor: f64, low: f64, high: f64, original: f64) -> TchResult<Tensor> {
    let low_wavelen = original / low;
    let high_wavelen = original / high;
    let wavelen = inv
        .f_reciprocal()?
        .f_mul_scalar(2.0 * std::f64::consts::PI)?;
    let divided = inv.f_div_scalar(factor)?;
    let inv_llama = divided.f_where_self(&wavelen.f_gt(low_wavelen)?, &inv)?;
    let smooth = wavelen
        .f_reciprocal()?
        .f_mul_scalar(original)?
        .f_sub_scalar(low)?
        .f_div_scalar(high - low)?;
    let smoothed = smooth
        .f_neg()?
        .f_add_scalar(1.0)?
        .f_mul(&inv_llama)?
        .f_div_scalar(factor)?
        .f_add(&smooth.f_mul(&inv_llama)?)?;
    let medium = wavelen
        .f_lt(high_wavelen)?
        .f_logical_not()?
        .f_logical_and(&wavelen.f_gt(low_wavelen)?.f_logical_not()?)?;
    smoothed.f_where_self(&medium, &inv_llama)
}

impl RopeFreqs {
    pub fn new(rope: &Rope, rotary_dim: usize, device: Device) -> TchResult<RopeFreqs> {
        let dim = rotary_dim as i64;
        let pow = powers(rope.theta, dim, device)?;
        let inv = pow.f_reciprocal()?;
        let (freqs, scale) = match &rope.scaling {
            RopeScaling::None => (Freqs::Fixed(inv), 1.0),
            RopeScaling::Linear(f) => (Freqs::Fixed(inv.f_div_scalar(*f)?), 1.0),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let inv = llama3(
                    inv,
                    *factor,
                    *low_freq_factor,
                    *high_freq_factor,
                    *original_max_position_embeddings,
                )?;
                (Freqs::Fixed(inv), 1.0)
            }
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                attention_factor,
                original_max_position_embeddings,
            } => {
                // 1 / (factors · base^(2i/dim)), the factors as f32.
                let scaled = |f: &[f64]| -> TchResult<Tensor> {
                    let f: Vec<f32> = f.iter().map(|&x| x as f32).collect();
                    Tensor::f_from_slice(&f)?
                        .f_to_device(device)?
                        .f_mul(&pow)?
                        .f_reciprocal()
                };
                let freqs = Freqs::Long {
                    short: scaled(short_factor)?,
                    long: scaled(long_factor)?,
                    original: *original_max_position_embeddings as i64,
                };
                (freqs, *attention_factor)
            }
        };
        Ok(RopeFreqs { freqs, scale })
    }

    /// cos and sin `[batch, 1, t, rotary_dim]` in `kind` for `position_ids` `[batch, t]`.
    pub fn tables(&self, position_ids: &Tensor, kind: Kind) -> TchResult<(Tensor, Tensor)> {
        let inv = match &self.freqs {
            Freqs::Fixed(inv) => inv.shallow_clone(),
            Freqs::Long {
                short,
                long,
                original,
            } => {
                // transformers picks the set from max(position_ids) + 1 of this forward pass;
                // on the device, without a host sync.
                let beyond = position_ids.f_max()?.f_add_scalar(1)?.f_gt(*original)?;
                long.f_where_self(&beyond, short)?
            }
        };
        let freqs = position_ids
            .f_to_kind(Kind::Float)?
            .f_unsqueeze(-1)?
            .f_mul(&inv.f_view([1, 1, -1])?)?;
        let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?;
        let (mut cos, mut sin) = (emb.f_cos()?, emb.f_sin()?);
        if self.scale != 1.0 {
            cos = cos.f_mul_scalar(self.scale)?;
            sin = sin.f_mul_scalar(self.scale)?;
        }
        Ok((
            cos.f_to_kind(kind)?.f_unsqueeze(1)?,
            sin.f_to_kind(kind)?.f_unsqueeze(1)?,
        ))
    }
}

fn rotate_half(x: &Tensor) -> TchResult<Tensor> {
    let d = x.size().last().copied().unwrap_or(0);
    let x1 = x.f_narrow(-1, 0, d / 2)?;
    let x2 = x.f_narrow(-1, d / 2, d / 2)?;
    Tensor::f_cat(&[&x2.f_neg()?, &x1], -1)
}

/// Rotates the first `cos.size(-1)` dimensions of `x` `[batch, heads, t, head_dim]`.
pub(super) fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> TchResult<Tensor> {
    let hd = x.size().last().copied().unwrap_or(0);
    let rd = cos.size().last().copied().unwrap_or(0);
    let rotate =
        |r: &Tensor| -> TchResult<Tensor> { r.f_mul(cos)?.f_add(&rotate_half(r)?.f_mul(sin)?) };
    if rd == hd {
        return rotate(x);
    }
    let rotated = rotate(&x.f_narrow(-1, 0, rd)?)?;
    Tensor::f_cat(&[&rotated, &x.f_narrow(-1, rd, hd - rd)?], -1)
}
