//! Llama-family decoder in tch: RMSNorm, RoPE (`rope_theta`, linear scaling), grouped-query
//! attention, SwiGLU MLP, tied or untied embeddings. Weights come from our checkpoint reader and
//! go back out through our writer under the same Hugging Face names, so a trained policy is a
//! normal checkpoint.
//!
//! Parameters live in a [`nn::VarStore`] under their HF names ("model.layers.0.self_attn.q_proj.
//! weight", …), ready for a tch optimizer. Compute follows `transformers`' eager Llama: RMSNorm
//! and softmax in f32, RoPE angles in f32, masked scores filled with the dtype's minimum (so a
//! fully masked row, e.g. a left-padding query, stays finite).

use std::path::Path;

use tch::{nn, Device, Kind, Tensor};

use super::config::{LlamaConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::io::{companion, Checkpoint, CheckpointWriter, DType, OutTensor, WriterOptions};

struct Linear {
    w: Tensor,
    b: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.w, self.b.as_ref())
    }
}

struct Layer {
    input_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// Keys and values of past positions, per layer, in preallocated buffers of `capacity`
/// positions: `[batch, kv_heads, capacity, head_dim]`.
pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    len: i64,
    capacity: i64,
}

impl KvCache {
    /// Positions already in the cache.
    pub fn len(&self) -> i64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> i64 {
        self.capacity
    }
}

/// The output projection to the vocabulary.
enum LmHead {
    /// Tied to the input embedding.
    Tied,
    Own(Tensor),
    /// Loaded as a backbone ([`LlamaModel::backbone_from_checkpoint`]): hidden states only.
    Absent,
}

/// A loaded policy: config, parameters, and where each tensor came from on disk.
pub struct LlamaModel {
    pub config: LlamaConfig,
    pub vs: nn::VarStore,
    pub device: Device,
    /// Compute dtype of the parameters (`Kind::Float` unless changed).
    pub kind: Kind,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: LmHead,
    inv_freq: Tensor,
    /// (HF name, on-disk dtype) of every parameter, in the order they are saved.
    names: Vec<(String, DType)>,
}

fn kind_of(dtype: DType) -> Option<Kind> {
    match dtype {
        DType::F32 => Some(Kind::Float),
        DType::BF16 => Some(Kind::BFloat16),
        DType::F16 => Some(Kind::Half),
        DType::F64 => Some(Kind::Double),
        _ => None,
    }
}

/// Reads one tensor of a checkpoint into a tch tensor of `kind` on `device`.
pub fn read_tensor(ck: &Checkpoint, name: &str, kind: Kind, device: Device) -> Result<Tensor> {
    let info = ck.get(name).ok_or_else(|| {
        Error::format(
            &ck.path,
            format!("tensor '{name}' is missing from the checkpoint"),
        )
    })?;
    let shard = &ck.shards[info.shard].path;
    let src = kind_of(info.dtype).ok_or_else(|| {
        Error::tensor(
            shard,
            name,
            format!(
                "dtype {} is not supported for model weights (F32, BF16, F16, F64)",
                info.dtype
            ),
        )
    })?;
    let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
    let bytes = ck.bytes(info, 0..info.nbytes);
    // Safetensors data is little-endian, as is every target libtorch runs on here.
    let t = Tensor::f_from_data_size(bytes, &shape, src)
        .map_err(|e| Error::tensor(shard, name, format!("libtorch: {e}")))?;
    Ok(t.to_device(device).to_kind(kind))
}

/// Reads parameters by HF name into the var store, checking shapes against the config.
struct Loader<'a> {
    ck: &'a Checkpoint,
    root: nn::Path<'a>,
    kind: Kind,
    device: Device,
    names: Vec<(String, DType)>,
}

impl Loader<'_> {
    fn param(&mut self, name: String, shape: &[i64]) -> Result<Tensor> {
        let t = read_tensor(self.ck, &name, self.kind, self.device)?;
        let info = self.ck.get(&name).expect("read_tensor found it");
        if t.size() != shape {
            return Err(Error::tensor(
                &self.ck.shards[info.shard].path,
                &name,
                format!("shape {:?}, config.json implies {shape:?}", t.size()),
            ));
        }
        self.names.push((name.clone(), info.dtype));
        // tch names nest by path ("a.b.c" is sub("a").sub("b"), variable "c"): the var store
        // then lists the parameter under its HF name.
        let mut parts: Vec<&str> = name.split('.').collect();
        let leaf = parts.pop().expect("split yields one part");
        let mut path = self.root.sub(parts.first().copied().unwrap_or("_"));
        for p in parts.iter().skip(1) {
            path = path.sub(*p);
        }
        Ok(path.var_copy(leaf, &t))
    }

    fn linear(&mut self, prefix: &str, out: i64, inp: i64, bias: bool) -> Result<Linear> {
        let w = self.param(format!("{prefix}.weight"), &[out, inp])?;
        let b = if bias {
            Some(self.param(format!("{prefix}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Linear { w, b })
    }
}

/// RoPE inverse frequencies, computed in f32 as `transformers` does (linear scaling divides
/// them by the factor, i.e. divides the positions).
fn inv_freq(c: &LlamaConfig, device: Device) -> Tensor {
    let d = c.head_dim as i64;
    let exponent =
        Tensor::arange_start_step(0, d, 2, (Kind::Int64, device)).to_kind(Kind::Float) / (d as f64);
    let base = Tensor::from(c.rope_theta as f32).to_device(device);
    let inv = base.pow(&exponent).reciprocal();
    match c.rope_scaling {
        RopeScaling::None => inv,
        RopeScaling::Linear(f) => inv / f,
    }
}

fn rotate_half(x: &Tensor) -> Tensor {
    let d = *x.size().last().expect("rank >= 1");
    let x1 = x.narrow(-1, 0, d / 2);
    let x2 = x.narrow(-1, d / 2, d / 2);
    Tensor::cat(&[x2.neg(), x1], -1)
}

impl LlamaModel {
    /// Loads `config.json` and the weights of a checkpoint folder (single file or shards), in
    /// f32 on `device`.
    pub fn load(path: impl AsRef<Path>, device: Device) -> Result<LlamaModel> {
        Self::load_with_kind(path, device, Kind::Float)
    }

    /// As [`load`](Self::load), with the parameters in `kind` (Float, BFloat16, Half).
    pub fn load_with_kind(
        path: impl AsRef<Path>,
        device: Device,
        kind: Kind,
    ) -> Result<LlamaModel> {
        let ck = Checkpoint::open(path.as_ref())?;
        let config = LlamaConfig::from_dir(&ck.dir)?;
        Self::from_checkpoint(&ck, config, device, kind)
    }

    /// Builds the model from an open checkpoint and its (validated) config.
    pub fn from_checkpoint(
        ck: &Checkpoint,
        config: LlamaConfig,
        device: Device,
        kind: Kind,
    ) -> Result<LlamaModel> {
        Self::build(ck, config, device, kind, true)
    }

    /// Loads the decoder without its LM head, in f32 on `device`: for checkpoints that carry
    /// another head (a reward model's `score`, see `super::reward_model`). `lm_head.weight` is
    /// neither needed nor read; [`forward`](Self::forward) is then an error and
    /// [`hidden_states`](Self::hidden_states) the output.
    pub fn load_backbone(path: impl AsRef<Path>, device: Device) -> Result<LlamaModel> {
        let ck = Checkpoint::open(path.as_ref())?;
        let config = LlamaConfig::from_dir(&ck.dir)?;
        Self::backbone_from_checkpoint(&ck, config, device, Kind::Float)
    }

    /// As [`load_backbone`](Self::load_backbone), from an open checkpoint.
    pub fn backbone_from_checkpoint(
        ck: &Checkpoint,
        config: LlamaConfig,
        device: Device,
        kind: Kind,
    ) -> Result<LlamaModel> {
        Self::build(ck, config, device, kind, false)
    }

    fn build(
        ck: &Checkpoint,
        config: LlamaConfig,
        device: Device,
        kind: Kind,
        with_head: bool,
    ) -> Result<LlamaModel> {
        let c = &config;
        let vs = nn::VarStore::new(device);
        let h = c.hidden_size as i64;
        let q_out = (c.num_attention_heads * c.head_dim) as i64;
        let kv_out = (c.num_key_value_heads * c.head_dim) as i64;
        let inter = c.intermediate_size as i64;
        let vocab = c.vocab_size as i64;
        let mut l = Loader {
            ck,
            root: vs.root(),
            kind,
            device,
            names: Vec::new(),
        };
        let embed = l.param("model.embed_tokens.weight".into(), &[vocab, h])?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            layers.push(Layer {
                input_norm: l.param(format!("{p}.input_layernorm.weight"), &[h])?,
                q: l.linear(&format!("{p}.self_attn.q_proj"), q_out, h, c.qkv_bias)?,
                k: l.linear(&format!("{p}.self_attn.k_proj"), kv_out, h, c.qkv_bias)?,
                v: l.linear(&format!("{p}.self_attn.v_proj"), kv_out, h, c.qkv_bias)?,
                o: l.linear(&format!("{p}.self_attn.o_proj"), h, q_out, c.o_bias)?,
                post_norm: l.param(format!("{p}.post_attention_layernorm.weight"), &[h])?,
                gate: l.linear(&format!("{p}.mlp.gate_proj"), inter, h, c.mlp_bias)?,
                up: l.linear(&format!("{p}.mlp.up_proj"), inter, h, c.mlp_bias)?,
                down: l.linear(&format!("{p}.mlp.down_proj"), h, inter, c.mlp_bias)?,
            });
        }
        let norm = l.param("model.norm.weight".into(), &[h])?;
        // Tied: `lm_head.weight` is the embedding (a copy in the file, if any, is ignored).
        let lm_head = if !with_head {
            LmHead::Absent
        } else if c.tie_word_embeddings {
            LmHead::Tied
        } else {
            LmHead::Own(l.param("lm_head.weight".into(), &[vocab, h])?)
        };
        let names = l.names;
        let inv_freq = inv_freq(c, device);
        Ok(LlamaModel {
            config,
            vs,
            device,
            kind,
            embed,
            layers,
            norm,
            lm_head,
            inv_freq,
            names,
        })
    }

    /// The HF names of the parameters, in the order they are saved.
    pub fn parameter_names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|(n, _)| n.as_str())
    }

    /// An empty KV cache for `batch` sequences of up to `capacity` positions.
    pub fn new_cache(&self, batch: i64, capacity: i64) -> KvCache {
        let c = &self.config;
        let shape = [
            batch,
            c.num_key_value_heads as i64,
            capacity,
            c.head_dim as i64,
        ];
        let mk = || Tensor::zeros(shape, (self.kind, self.device));
        KvCache {
            k: (0..c.num_hidden_layers).map(|_| mk()).collect(),
            v: (0..c.num_hidden_layers).map(|_| mk()).collect(),
            len: 0,
            capacity,
        }
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> Tensor {
        let xf = x.to_kind(Kind::Float);
        let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let y = xf * (var + self.config.rms_norm_eps).rsqrt();
        w * y.to_kind(self.kind)
    }

    /// Logits `[batch, t, vocab]` (f32) for `input_ids` `[batch, t]`.
    ///
    /// `attention_mask` `[batch, past + t]`: 1 for real tokens, 0 for padding (left padding in
    /// the prompt, or positions after a sequence ended); it covers the cached positions too.
    /// `position_ids` `[batch, t]`: each token's position in its own sequence (with left padding,
    /// `cumsum(mask) - 1`). With a cache, `input_ids` are appended after its `len()` positions
    /// and the cache grows by `t`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        position_ids: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let head = match &self.lm_head {
            LmHead::Tied => &self.embed,
            LmHead::Own(w) => w,
            LmHead::Absent => {
                return Err(Error::Usage(
                    "this model was loaded as a backbone, without its LM head: it has hidden \
                     states, not logits"
                        .into(),
                ))
            }
        };
        let x = self.decode(input_ids, attention_mask, position_ids, cache)?;
        Ok(x.linear::<Tensor>(head, None).to_kind(Kind::Float))
    }

    /// Final hidden states `[batch, t, hidden]` (after the last RMSNorm, in the model's `kind`)
    /// for `input_ids` `[batch, t]`, without a cache: what the LM head, or a reward model's
    /// `score` head, is applied to. Masks and positions as in [`forward`](Self::forward).
    pub fn hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        position_ids: &Tensor,
    ) -> Result<Tensor> {
        self.decode(input_ids, attention_mask, position_ids, None)
    }

    /// The decoder: embedding, layers, final norm (see [`forward`](Self::forward)).
    // `x = x + y`, not `x += y`: tch's `+=` is in place, which autograd refuses for tensors that
    // the backward pass still needs.
    #[allow(clippy::assign_op_pattern)]
    fn decode(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        position_ids: &Tensor,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (b, t) = input_ids
            .size2()
            .map_err(|e| Error::Usage(format!("input_ids: {e}")))?;
        let past = cache.as_ref().map_or(0, |kv| kv.len);
        let total = past + t;
        if let Some(kv) = cache.as_ref() {
            if total > kv.capacity {
                return Err(Error::Usage(format!(
                    "KV cache full: {past} + {t} positions > capacity {}",
                    kv.capacity
                )));
            }
        }
        if attention_mask.size() != [b, total] {
            return Err(Error::Usage(format!(
                "attention_mask has shape {:?}, expected [{b}, {total}]",
                attention_mask.size()
            )));
        }
        if position_ids.size() != [b, t] {
            return Err(Error::Usage(format!(
                "position_ids has shape {:?}, expected [{b}, {t}]",
                position_ids.size()
            )));
        }
        let (nh, nkv, hd) = (
            c.num_attention_heads as i64,
            c.num_key_value_heads as i64,
            c.head_dim as i64,
        );
        // RoPE tables [b, 1, t, hd] in f32.
        let freqs =
            position_ids.to_kind(Kind::Float).unsqueeze(-1) * self.inv_freq.view([1, 1, -1]);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        let cos = emb.cos().unsqueeze(1).to_kind(self.kind);
        let sin = emb.sin().unsqueeze(1).to_kind(self.kind);
        // Allowed (query i at absolute index past+i, key j): j <= past+i and mask[b, j] = 1.
        let dev = self.device;
        let qi = Tensor::arange_start(past, total, (Kind::Int64, dev)).view([t, 1]);
        let kj = Tensor::arange(total, (Kind::Int64, dev)).view([1, total]);
        let causal = kj.le_tensor(&qi).view([1, 1, t, total]);
        let keep = attention_mask.to_kind(Kind::Bool).view([b, 1, 1, total]);
        let blocked = causal.logical_and(&keep).logical_not();
        let scale = 1.0 / (hd as f64).sqrt();
        let neg = match self.kind {
            Kind::BFloat16 => -3.389_531_4e38,
            Kind::Half => -65504.0,
            Kind::Double => f64::MIN,
            _ => f32::MIN as f64,
        };

        let mut x = Tensor::embedding(&self.embed, input_ids, -1, false, false);
        for (li, layer) in self.layers.iter().enumerate() {
            let hn = self.rms_norm(&x, &layer.input_norm);
            let q = layer.q.forward(&hn).view([b, t, nh, hd]).transpose(1, 2);
            let k = layer.k.forward(&hn).view([b, t, nkv, hd]).transpose(1, 2);
            let v = layer.v.forward(&hn).view([b, t, nkv, hd]).transpose(1, 2);
            let q = &q * &cos + rotate_half(&q) * &sin;
            let k = &k * &cos + rotate_half(&k) * &sin;
            let (k, v) = match cache.as_deref_mut() {
                Some(kv) => {
                    kv.k[li].narrow(2, past, t).copy_(&k);
                    kv.v[li].narrow(2, past, t).copy_(&v);
                    (kv.k[li].narrow(2, 0, total), kv.v[li].narrow(2, 0, total))
                }
                None => (k, v),
            };
            let rep = nh / nkv;
            let (k, v) = if rep > 1 {
                (
                    k.repeat_interleave_self_int(rep, 1, None),
                    v.repeat_interleave_self_int(rep, 1, None),
                )
            } else {
                (k, v)
            };
            let scores = q.matmul(&k.transpose(-2, -1)) * scale;
            let scores = scores.masked_fill(&blocked, neg);
            let probs = scores.softmax(-1, Kind::Float).to_kind(self.kind);
            let attn = probs
                .matmul(&v)
                .transpose(1, 2)
                .contiguous()
                .view([b, t, nh * hd]);
            x = x + layer.o.forward(&attn);
            let hn = self.rms_norm(&x, &layer.post_norm);
            let mlp = layer
                .down
                .forward(&(layer.gate.forward(&hn).silu() * layer.up.forward(&hn)));
            x = x + mlp;
        }
        if let Some(kv) = cache {
            kv.len = total;
        }
        Ok(self.rms_norm(&x, &self.norm))
    }

    /// Saves the parameters as a checkpoint at `dest` in HF layout (same tensor names as loaded,
    /// each in its on-disk dtype, or `dtype` for all when given), with the companion files
    /// (config.json, tokenizer files, …) of `companions_from` copied. Atomic, as every write of
    /// our writer.
    pub fn save(
        &self,
        dest: &Path,
        companions_from: Option<&Path>,
        dtype: Option<DType>,
        opts: &WriterOptions,
    ) -> Result<std::path::PathBuf> {
        let vars = self.vs.variables();
        let mut out = Vec::with_capacity(self.names.len());
        for (name, disk) in &self.names {
            let t = vars
                .get(name)
                .ok_or_else(|| Error::Usage(format!("internal: parameter '{name}' not found")))?;
            out.push(OutTensor {
                name: name.clone(),
                dtype: dtype.unwrap_or(*disk),
                shape: t.size().iter().map(|&d| d as usize).collect(),
            });
        }
        let mut w = CheckpointWriter::create(dest, out.clone(), opts)?;
        for o in &out {
            let kind = kind_of(o.dtype)
                .ok_or_else(|| Error::Usage(format!("cannot save a parameter as {}", o.dtype)))?;
            let t = tch::no_grad(|| {
                vars[&o.name]
                    .detach()
                    .to_device(Device::Cpu)
                    .to_kind(kind)
                    .contiguous()
            });
            let n = t.numel();
            let mut buf = vec![0u8; n * o.dtype.size()];
            t.f_copy_data_u8(&mut buf, n)
                .map_err(|e| Error::Usage(format!("libtorch: {e}")))?;
            w.write(&buf)?;
        }
        if let Some(dir) = companions_from {
            companion::copy_companions(dir, &mut w)?;
        }
        w.finish()
    }
}
