//! One decoder layer of any supported family, assembled by name from the loaded parameters.

use std::collections::HashMap;

use tch::{Kind, TchError, Tensor};

use super::attention::{self, Masks, Scoring};
use super::lora::LoraPart;
use super::rope;
use crate::error::{Error, Result};
use crate::rl::config::{Activation, LayerType, ModelConfig};

type TchResult<T> = std::result::Result<T, TchError>;

pub(super) struct Linear {
    /// The module's path ("model.layers.0.self_attn.q_proj").
    pub module: String,
    w: Tensor,
    b: Option<Tensor>,
    /// A LoRA adapter on this module (`super::lora`).
    pub lora: Option<LoraPart>,
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> TchResult<Tensor> {
        let y = x.f_linear(&self.w, self.b.as_ref())?;
        match &self.lora {
            None => Ok(y),
            Some(l) => l.add_to(x, y),
        }
    }

    /// The same weights (shared storage), with `lora` as its adapter.
    fn share(&self, lora: &dyn Fn(&str) -> Option<LoraPart>) -> Linear {
        Linear {
            module: self.module.clone(),
            w: self.w.shallow_clone(),
            b: self.b.as_ref().map(Tensor::shallow_clone),
            lora: lora(&self.module),
        }
    }
}

enum Qkv {
    Split {
        q: Linear,
        k: Linear,
        v: Linear,
    },
    /// Phi-3's `qkv_proj`: rows q, then k, then v.
    Fused(Linear),
}

enum GateUp {
    Split {
        gate: Linear,
        up: Linear,
    },
    /// Phi-3's `gate_up_proj`: rows gate, then up.
    Fused(Linear),
}

/// RMSNorm over the last dimension, in f32: Llama style `w · x̂` (x̂ cast back first), or Gemma
/// style `x̂ · (1 + w)` (cast back after).
#[derive(Clone, Copy)]
pub(super) struct Norm {
    pub eps: f64,
    pub gemma: bool,
}

impl Norm {
    pub fn apply(&self, x: &Tensor, w: &Tensor) -> TchResult<Tensor> {
        let kind = x.kind();
        let xf = x.f_to_kind(Kind::Float)?;
        let var = xf
            .f_pow_tensor_scalar(2)?
            .f_mean_dim(-1, true, Kind::Float)?;
        let y = xf.f_mul(&var.f_add_scalar(self.eps)?.f_rsqrt()?)?;
        if self.gemma {
            y.f_mul(&w.f_to_kind(Kind::Float)?.f_add_scalar(1.0)?)?
                .f_to_kind(kind)
        } else {
            w.f_mul(&y.f_to_kind(kind)?)
        }
    }
}

pub(super) struct Layer {
    input_norm: Tensor,
    qkv: Qkv,
    o: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    post_attention_norm: Tensor,
    /// Gemma 2/3: (pre-, post-feed-forward) norms; `post_attention_norm` then normalises the
    /// attention output instead of the MLP input.
    ff_norms: Option<(Tensor, Tensor)>,
    gate_up: GateUp,
    down: Linear,
    pub window: Option<i64>,
    /// Index of the layer's rotary embedding (0 global, 1 Gemma 3's local).
    pub rope: usize,
}

/// What every layer shares in one forward pass.
pub(super) struct Pass<'a> {
    pub config: &'a ModelConfig,
    pub norm: Norm,
    pub masks: &'a Masks,
    /// (cos, sin) per rotary embedding.
    pub tables: &'a [(Tensor, Tensor)],
    pub scoring: Scoring,
    pub batch: i64,
    pub t: i64,
}

/// Key/value buffers of one layer and where this pass writes in them.
pub(super) struct CacheSlot<'a> {
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub past: i64,
}

/// Takes the parameters of layer `i` out of `params` (loaded by name).
pub(super) struct Assembler<'a> {
    pub params: &'a mut HashMap<String, Tensor>,
}

impl Assembler<'_> {
    pub fn take(&mut self, name: &str) -> Result<Tensor> {
        self.params
            .remove(name)
            .ok_or_else(|| Error::Internal(format!("parameter '{name}' not in the loaded layout")))
    }

    fn linear(&mut self, name: &str, bias: bool) -> Result<Linear> {
        Ok(Linear {
            module: name.to_string(),
            lora: None,
            w: self.take(&format!("{name}.weight"))?,
            b: match bias {
                true => Some(self.take(&format!("{name}.bias"))?),
                false => None,
            },
        })
    }

    pub fn layer(&mut self, c: &ModelConfig, i: usize) -> Result<Layer> {
        let p = format!("model.layers.{i}");
        let fused = c.family.fused_projections();
        let qkv = if fused {
            Qkv::Fused(self.linear(&format!("{p}.self_attn.qkv_proj"), false)?)
        } else {
            Qkv::Split {
                q: self.linear(&format!("{p}.self_attn.q_proj"), c.qkv_bias)?,
                k: self.linear(&format!("{p}.self_attn.k_proj"), c.qkv_bias)?,
                v: self.linear(&format!("{p}.self_attn.v_proj"), c.qkv_bias)?,
            }
        };
        let (q_norm, k_norm) = if c.family.qk_norm() {
            (
                Some(self.take(&format!("{p}.self_attn.q_norm.weight"))?),
                Some(self.take(&format!("{p}.self_attn.k_norm.weight"))?),
            )
        } else {
            (None, None)
        };
        let ff_norms = if c.family.sandwich_norms() {
            Some((
                self.take(&format!("{p}.pre_feedforward_layernorm.weight"))?,
                self.take(&format!("{p}.post_feedforward_layernorm.weight"))?,
            ))
        } else {
            None
        };
        let gate_up = if fused {
            GateUp::Fused(self.linear(&format!("{p}.mlp.gate_up_proj"), false)?)
        } else {
            GateUp::Split {
                gate: self.linear(&format!("{p}.mlp.gate_proj"), c.mlp_bias)?,
                up: self.linear(&format!("{p}.mlp.up_proj"), c.mlp_bias)?,
            }
        };
        Ok(Layer {
            input_norm: self.take(&format!("{p}.input_layernorm.weight"))?,
            qkv,
            o: self.linear(&format!("{p}.self_attn.o_proj"), c.o_bias)?,
            q_norm,
            k_norm,
            post_attention_norm: self.take(&format!("{p}.post_attention_layernorm.weight"))?,
            ff_norms,
            gate_up,
            down: self.linear(&format!("{p}.mlp.down_proj"), c.mlp_bias)?,
            window: c.window(i).map(|w| w as i64),
            rope: usize::from(
                c.local_rope.is_some() && c.layer_types.get(i) == Some(&LayerType::Sliding),
            ),
        })
    }
}

fn activate(x: &Tensor, a: Activation) -> TchResult<Tensor> {
    match a {
        Activation::Silu => x.f_silu(),
        Activation::GeluTanh => x.f_gelu("tanh"),
        Activation::Gelu => x.f_gelu("none"),
    }
}

impl Layer {
    /// The same weights (shared storage), with the adapters `lora` gives per module path.
    pub fn share(&self, lora: &dyn Fn(&str) -> Option<LoraPart>) -> Layer {
        let t = |x: &Tensor| x.shallow_clone();
        Layer {
            input_norm: t(&self.input_norm),
            qkv: match &self.qkv {
                Qkv::Split { q, k, v } => Qkv::Split {
                    q: q.share(lora),
                    k: k.share(lora),
                    v: v.share(lora),
                },
                Qkv::Fused(qkv) => Qkv::Fused(qkv.share(lora)),
            },
            o: self.o.share(lora),
            q_norm: self.q_norm.as_ref().map(t),
            k_norm: self.k_norm.as_ref().map(t),
            post_attention_norm: t(&self.post_attention_norm),
            ff_norms: self.ff_norms.as_ref().map(|(a, b)| (t(a), t(b))),
            gate_up: match &self.gate_up {
                GateUp::Split { gate, up } => GateUp::Split {
                    gate: gate.share(lora),
                    up: up.share(lora),
                },
                GateUp::Fused(gu) => GateUp::Fused(gu.share(lora)),
            },
            down: self.down.share(lora),
            window: self.window,
            rope: self.rope,
        }
    }

    /// `x` `[b, t, hidden]` → the layer's output, same shape.
    pub fn forward(&self, x: &Tensor, pass: &Pass, cache: Option<CacheSlot>) -> TchResult<Tensor> {
        let h = pass.norm.apply(x, &self.input_norm)?;
        let a = self.attention(&h, pass, cache)?;
        match &self.ff_norms {
            None => {
                let x = x.f_add(&a)?;
                let h = pass.norm.apply(&x, &self.post_attention_norm)?;
                x.f_add(&self.mlp(&h, pass.config.activation)?)
            }
            Some((pre, post)) => {
                let a = pass.norm.apply(&a, &self.post_attention_norm)?;
                let x = x.f_add(&a)?;
                let h = pass.norm.apply(&x, pre)?;
                let m = pass
                    .norm
                    .apply(&self.mlp(&h, pass.config.activation)?, post)?;
                x.f_add(&m)
            }
        }
    }

    fn mlp(&self, x: &Tensor, act: Activation) -> TchResult<Tensor> {
        let (gate, up) = match &self.gate_up {
            GateUp::Split { gate, up } => (gate.forward(x)?, up.forward(x)?),
            GateUp::Fused(gu) => {
                let both = gu.forward(x)?;
                let n = both.size().last().copied().unwrap_or(0) / 2;
                (both.f_narrow(-1, 0, n)?, both.f_narrow(-1, n, n)?)
            }
        };
        self.down.forward(&activate(&gate, act)?.f_mul(&up)?)
    }

    /// q, k, v as `[b, t, heads, head_dim]`.
    fn project(&self, h: &Tensor, c: &ModelConfig, b: i64, t: i64) -> TchResult<[Tensor; 3]> {
        let hd = c.head_dim as i64;
        let (nh, nkv) = (c.num_attention_heads as i64, c.num_key_value_heads as i64);
        let (q, k, v) = match &self.qkv {
            Qkv::Split { q, k, v } => (q.forward(h)?, k.forward(h)?, v.forward(h)?),
            Qkv::Fused(qkv) => {
                let all = qkv.forward(h)?;
                (
                    all.f_narrow(-1, 0, nh * hd)?,
                    all.f_narrow(-1, nh * hd, nkv * hd)?,
                    all.f_narrow(-1, (nh + nkv) * hd, nkv * hd)?,
                )
            }
        };
        Ok([
            q.f_reshape([b, t, nh, hd])?,
            k.f_reshape([b, t, nkv, hd])?,
            v.f_reshape([b, t, nkv, hd])?,
        ])
    }

    fn attention(&self, h: &Tensor, pass: &Pass, cache: Option<CacheSlot>) -> TchResult<Tensor> {
        let [mut q, mut k, v] = self.project(h, pass.config, pass.batch, pass.t)?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = pass.norm.apply(&q, qn)?;
            k = pass.norm.apply(&k, kn)?;
        }
        let (cos, sin) = &pass.tables[self.rope];
        let q = rope::apply(&q.f_transpose(1, 2)?, cos, sin)?;
        let k = rope::apply(&k.f_transpose(1, 2)?, cos, sin)?;
        let v = v.f_transpose(1, 2)?;
        let (k, v) = match cache {
            Some(slot) => {
                let total = slot.past + pass.t;
                slot.k.f_narrow(2, slot.past, pass.t)?.f_copy_(&k)?;
                slot.v.f_narrow(2, slot.past, pass.t)?.f_copy_(&v)?;
                (slot.k.f_narrow(2, 0, total)?, slot.v.f_narrow(2, 0, total)?)
            }
            None => (k, v),
        };
        let out = attention::attend(&q, &k, &v, pass.masks.get(self.window), &pass.scoring)?;
        self.o.forward(&out)
    }
}
