//! The decoder of every supported family (see `super::config`) in tch. Weights come from our
//! checkpoint reader and go back out through our writer under the same Hugging Face names and
//! layout ([`ModelConfig::parameter_layout`]), so a trained policy is a normal checkpoint.
//!
//! Parameters live in a [`nn::VarStore`] under their HF names ("model.layers.0.self_attn.q_proj.
//! weight", …), in the model's `kind`, ready for a tch optimizer. Compute follows transformers:
//! RMSNorm in f32 (Llama or Gemma style), RoPE angles in f32 cast to the activation dtype,
//! softmax in f32; attention through libtorch's fused kernel, or transformers' eager math where
//! soft-capping needs it (see `attention`). Every libtorch call is fallible: a failure (shape,
//! dtype, device, out of memory) is an [`Error::Compute`] naming the model and the step.

mod attention;
mod layers;
mod layout;
mod lora;
mod rope;

use std::collections::HashMap;
use std::path::Path;

use tch::{nn, Device, Kind, TchError, Tensor};

use super::config::ModelConfig;
use crate::error::{Error, Result};
use crate::io::{companion, Checkpoint, CheckpointWriter, DType, OutTensor, WriterOptions};
use attention::{Masks, Scoring};
use layers::{Assembler, CacheSlot, Layer, Norm, Pass};
pub use layout::{Head, ParamSpec};
pub use lora::{key_a, key_b, linear_modules, lora_targets, AdapterModule, Adapters, ALL_LINEAR};
use rope::RopeFreqs;

/// Keys and values of past positions, per layer, in buffers preallocated for `capacity`
/// positions: `[batch, kv_heads, capacity, head_dim]`.
pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    len: i64,
    capacity: i64,
    batch: i64,
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
    /// Forgets every cached position (the buffers stay allocated).
    pub fn clear(&mut self) {
        self.len = 0;
    }
    /// Sequences the cache holds.
    pub fn batch(&self) -> i64 {
        self.batch
    }
    /// Bytes of the cache's buffers (what it allocated, not what is filled).
    pub fn bytes(&self) -> u64 {
        self.k
            .iter()
            .chain(&self.v)
            .map(|t| (t.numel() * t.kind().elt_size_in_bytes()) as u64)
            .sum()
    }
    /// Keeps only the sequences `rows` (int64 indices, in that order; repeats allowed): a
    /// generation drops the sequences that ended. Each layer's buffer is replaced in turn, so the
    /// extra memory is one layer's new buffer.
    pub fn select_rows(&mut self, rows: &Tensor) -> Result<(), TchError> {
        for t in self.k.iter_mut().chain(self.v.iter_mut()) {
            *t = t.f_index_select(0, rows)?;
        }
        self.batch = rows.size().first().copied().unwrap_or(0);
        Ok(())
    }
    /// Fills this (empty) cache's sequence i with the cached positions of `from`'s sequence
    /// `rows[i]`: a prompt prefilled once serves each of its samples.
    pub fn fill_from(&mut self, from: &KvCache, rows: &Tensor) -> Result<(), TchError> {
        let n = from.len;
        if n > self.capacity || rows.size().first() != Some(&self.batch) {
            return Err(TchError::Shape(format!(
                "KV cache of {} × {} cannot take {:?} rows of {n} positions",
                self.batch,
                self.capacity,
                rows.size()
            )));
        }
        for (dst, src) in self.k.iter().zip(&from.k).chain(self.v.iter().zip(&from.v)) {
            dst.f_narrow(2, 0, n)?
                .f_copy_(&src.f_narrow(2, 0, n)?.f_index_select(0, rows)?)?;
        }
        self.len = n;
        Ok(())
    }
}

/// The output projection to the vocabulary.
enum LmHead {
    /// Tied to the input embedding.
    Tied,
    Own(Tensor),
    /// Loaded as a backbone ([`CausalLm::backbone_from_checkpoint`]): hidden states only.
    Absent,
}

/// A loaded decoder: config, parameters, and where each tensor came from on disk.
pub struct CausalLm {
    pub config: ModelConfig,
    pub vs: nn::VarStore,
    pub device: Device,
    /// Dtype of the parameters and activations (`Kind::Float` unless loaded otherwise).
    pub kind: Kind,
    /// The checkpoint path, for messages.
    name: String,
    embed: Tensor,
    /// Gemma: √hidden in the activation dtype, the embedding's multiplier.
    embed_scale: Option<Tensor>,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: LmHead,
    /// The global rotary embedding, then Gemma 3's local one.
    ropes: Vec<RopeFreqs>,
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
        .and_then(|t| t.f_to_device(device))
        .and_then(|t| t.f_to_kind(kind))
        .map_err(|e| Error::tensor(shard, name, format!("libtorch: {e}")))?;
    Ok(t)
}

/// Registers `t` in the var store under its HF name: tch nests by path ("a.b.c" is
/// sub("a").sub("b"), variable "c"), so the store lists it under that name.
fn register(root: &nn::Path, name: &str, t: Tensor) -> Tensor {
    register_as(root, name, t, true)
}

/// [`register`], trainable or not (a frozen variable's `requires_grad` is left as it is).
fn register_as(root: &nn::Path, name: &str, t: Tensor, trainable: bool) -> Tensor {
    let mut parts = name.split('.');
    let first = parts.next().unwrap_or("_");
    let mut rest: Vec<&str> = parts.collect();
    let Some(leaf) = rest.pop() else {
        return root.add(first, t, trainable);
    };
    let path = rest.iter().fold(root.sub(first), |p, s| p.sub(*s));
    path.add(leaf, t, trainable)
}

/// Parameters by name, and (name, on-disk dtype) in layout order.
type Loaded = (HashMap<String, Tensor>, Vec<(String, DType)>);

/// Reads the parameters of `specs` (shapes checked against the header first).
fn load_params(
    ck: &Checkpoint,
    specs: &[ParamSpec],
    root: &nn::Path,
    kind: Kind,
    device: Device,
) -> Result<Loaded> {
    let mut params = HashMap::with_capacity(specs.len());
    let mut names = Vec::with_capacity(specs.len());
    for s in specs {
        let info = ck.get(&s.name).ok_or_else(|| {
            Error::format(
                &ck.path,
                format!("tensor '{}' is missing from the checkpoint", s.name),
            )
        })?;
        let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        if shape != s.shape {
            return Err(Error::tensor(
                &ck.shards[info.shard].path,
                &s.name,
                format!("shape {shape:?}, config.json implies {:?}", s.shape),
            ));
        }
        let t = read_tensor(ck, &s.name, kind, device)?;
        names.push((s.name.clone(), info.dtype));
        params.insert(s.name.clone(), register(root, &s.name, t));
    }
    Ok((params, names))
}

impl CausalLm {
    /// Loads `config.json` and the weights of a checkpoint folder (single file or shards), in
    /// f32 on `device`.
    pub fn load(path: impl AsRef<Path>, device: Device) -> Result<CausalLm> {
        Self::load_with_kind(path, device, Kind::Float)
    }

    /// As [`load`](Self::load), with the parameters in `kind` (Float, BFloat16, Half).
    pub fn load_with_kind(path: impl AsRef<Path>, device: Device, kind: Kind) -> Result<CausalLm> {
        let ck = Checkpoint::open(path.as_ref())?;
        let config = ModelConfig::from_dir(&ck.dir)?;
        Self::from_checkpoint(&ck, config, device, kind)
    }

    /// Builds the model from an open checkpoint and its (validated) config.
    pub fn from_checkpoint(
        ck: &Checkpoint,
        config: ModelConfig,
        device: Device,
        kind: Kind,
    ) -> Result<CausalLm> {
        Self::build(ck, config, device, kind, Head::Lm)
    }

    /// Loads the decoder without its LM head, in f32 on `device`: for checkpoints that carry
    /// another head (a reward model's `score`, see `super::reward_model`). `lm_head.weight` is
    /// neither needed nor read; [`forward`](Self::forward) is then an error and
    /// [`hidden_states`](Self::hidden_states) the output.
    pub fn load_backbone(path: impl AsRef<Path>, device: Device) -> Result<CausalLm> {
        let ck = Checkpoint::open(path.as_ref())?;
        let config = ModelConfig::from_dir(&ck.dir)?;
        Self::backbone_from_checkpoint(&ck, config, device, Kind::Float)
    }

    /// As [`load_backbone`](Self::load_backbone), from an open checkpoint.
    pub fn backbone_from_checkpoint(
        ck: &Checkpoint,
        config: ModelConfig,
        device: Device,
        kind: Kind,
    ) -> Result<CausalLm> {
        Self::build(ck, config, device, kind, Head::None)
    }

    fn build(
        ck: &Checkpoint,
        config: ModelConfig,
        device: Device,
        kind: Kind,
        head: Head,
    ) -> Result<CausalLm> {
        if !matches!(
            kind,
            Kind::Float | Kind::BFloat16 | Kind::Half | Kind::Double
        ) {
            return Err(Error::Internal(format!(
                "model parameters cannot be {kind:?}"
            )));
        }
        let name = ck.path.display().to_string();
        let vs = nn::VarStore::new(device);
        config.check_tensors(ck)?;
        let specs = config.parameter_layout(head);
        let (mut params, names) = load_params(ck, &specs, &vs.root(), kind, device)?;
        let mut a = Assembler {
            params: &mut params,
        };
        let embed = a.take("model.embed_tokens.weight")?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| a.layer(&config, i))
            .collect::<Result<Vec<_>>>()?;
        let norm = a.take("model.norm.weight")?;
        let lm_head = match head {
            Head::None => LmHead::Absent,
            Head::Lm if config.tie_word_embeddings => LmHead::Tied,
            Head::Lm => LmHead::Own(a.take("lm_head.weight")?),
        };
        let backend = |e: TchError| Error::compute(format!("model {name}: loading"), e);
        let mut ropes =
            vec![RopeFreqs::new(&config.rope, config.rotary_dim, device).map_err(backend)?];
        if let Some(local) = &config.local_rope {
            ropes.push(RopeFreqs::new(local, config.rotary_dim, device).map_err(backend)?);
        }
        // transformers keeps √hidden as an f32 buffer and casts it to the weights' dtype (so
        // bf16 Gemma multiplies by the bf16-rounded value).
        let embed_scale = match config.family.gemma_style() {
            true => Some(
                Tensor::from((config.hidden_size as f64).sqrt() as f32)
                    .f_to_kind(kind)
                    .and_then(|t| t.f_to_device(device))
                    .map_err(backend)?,
            ),
            false => None,
        };
        Ok(CausalLm {
            config,
            vs,
            device,
            kind,
            name,
            embed,
            embed_scale,
            layers,
            norm,
            lm_head,
            ropes,
            names,
        })
    }

    /// The checkpoint this model was loaded from, as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The HF names of the parameters, in the order they are saved.
    pub fn parameter_names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|(n, _)| n.as_str())
    }

    fn backend(&self, what: &str) -> impl Fn(TchError) -> Error + '_ {
        let what = what.to_string();
        move |e| Error::compute(format!("model {}: {what}", self.name), e)
    }

    /// An empty KV cache for `batch` sequences of up to `capacity` positions.
    pub fn new_cache(&self, batch: i64, capacity: i64) -> Result<KvCache> {
        let c = &self.config;
        let shape = [
            batch,
            c.num_key_value_heads as i64,
            capacity,
            c.head_dim as i64,
        ];
        let mk = || Tensor::f_zeros(shape, (self.kind, self.device));
        let n = c.num_hidden_layers;
        let err = self.backend("allocating the KV cache");
        Ok(KvCache {
            k: (0..n)
                .map(|_| mk())
                .collect::<Result<_, _>>()
                .map_err(&err)?,
            v: (0..n)
                .map(|_| mk())
                .collect::<Result<_, _>>()
                .map_err(&err)?,
            len: 0,
            capacity,
            batch,
        })
    }

    /// Logits `[batch, t, vocab]` (f32) for `input_ids` `[batch, t]`: [`hidden_states`]
    /// (Self::hidden_states) then [`logits_from_hidden`](Self::logits_from_hidden).
    ///
    /// `attention_mask` `[batch, past + t]`: 1 for real tokens, 0 for padding (left padding in
    /// the prompt, or positions after a sequence ended); it covers the cached positions too.
    /// `position_ids` `[batch, t]`: each token's position in its own sequence (with left padding,
    /// `cumsum(mask) - 1`). With a cache, `input_ids` are appended after its `len()` positions
    /// and the cache grows by `t`. Ids must lie in `0..vocab_size` (not checked on the device).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        position_ids: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.lm_head_weight()?;
        let h = self.decode(input_ids, attention_mask, position_ids, cache)?;
        self.logits_from_hidden(&h)
    }

    /// The LM head's weight: its own, or the embedding when tied.
    pub fn lm_head_weight(&self) -> Result<&Tensor> {
        match &self.lm_head {
            LmHead::Tied => Ok(&self.embed),
            LmHead::Own(w) => Ok(w),
            LmHead::Absent => Err(Error::Internal(format!(
                "model {} was loaded as a backbone, without its LM head: it has hidden states, \
                 not logits",
                self.name
            ))),
        }
    }

    /// The LM head (and Gemma 2/3's final soft-capping) on hidden states `[…, hidden]` from
    /// [`hidden_states`](Self::hidden_states): f32 logits `[…, vocab]`. Applied to a slice of
    /// positions it gives their logits only, so callers can bound memory by chunking.
    pub fn logits_from_hidden(&self, hidden: &Tensor) -> Result<Tensor> {
        let w = self.lm_head_weight()?;
        let h = self.config.hidden_size as i64;
        if hidden.size().last() != Some(&h) {
            return Err(Error::Internal(format!(
                "model {}: hidden states of shape {:?}, expected [..., {h}]",
                self.name,
                hidden.size()
            )));
        }
        let run = || -> Result<Tensor, TchError> {
            let logits = hidden
                .f_to_kind(self.kind)?
                .f_linear::<Tensor>(w, None)?
                .f_to_kind(Kind::Float)?;
            match self.config.final_logit_softcapping {
                None => Ok(logits),
                Some(cap) => logits.f_div_scalar(cap)?.f_tanh()?.f_mul_scalar(cap),
            }
        };
        run().map_err(self.backend("LM head"))
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

    /// As [`hidden_states`](Self::hidden_states), appending to `cache` as
    /// [`forward`](Self::forward) does: generation applies the LM head to the last position only.
    pub fn hidden_states_cached(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        position_ids: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        self.decode(input_ids, attention_mask, position_ids, Some(cache))
    }

    /// Checks the inputs of a forward pass; returns (batch, t, past).
    fn check_inputs(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        position_ids: &Tensor,
        cache: Option<&KvCache>,
    ) -> Result<(i64, i64, i64)> {
        let bad = |what: String| Error::Internal(format!("model {}: {what}", self.name));
        let (b, t) = match input_ids.size()[..] {
            [b, t] if t > 0 => (b, t),
            _ => return Err(bad(format!("input_ids of shape {:?}", input_ids.size()))),
        };
        if input_ids.kind() != Kind::Int64 || position_ids.kind() != Kind::Int64 {
            return Err(bad("input and position ids must be int64".into()));
        }
        let past = cache.map_or(0, |kv| kv.len);
        let total = past + t;
        if let Some(kv) = cache {
            if total > kv.capacity || kv.batch != b {
                return Err(bad(format!(
                    "KV cache of {} sequences × {} positions cannot take {b} × ({past} + {t})",
                    kv.batch, kv.capacity
                )));
            }
        }
        if attention_mask.size() != [b, total] {
            return Err(bad(format!(
                "attention_mask has shape {:?}, expected [{b}, {total}]",
                attention_mask.size()
            )));
        }
        if position_ids.size() != [b, t] {
            return Err(bad(format!(
                "position_ids has shape {:?}, expected [{b}, {t}]",
                position_ids.size()
            )));
        }
        Ok((b, t, past))
    }

    /// The decoder: embedding, layers, final norm (see [`forward`](Self::forward)).
    fn decode(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        position_ids: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (b, t, past) =
            self.check_inputs(input_ids, attention_mask, position_ids, cache.as_deref())?;
        let dev = self.device;
        // Token ids are not range-checked here: that would read a flag back from the device at
        // every decoding step. `generate`, `score` and the reward model check them on the host.
        let prepare = || -> Result<_, TchError> {
            Ok((
                input_ids.f_to_device(dev)?,
                attention_mask.f_to_device(dev)?,
                position_ids.f_to_device(dev)?,
            ))
        };
        let (ids, mask, pos) = prepare().map_err(self.backend("forward"))?;
        self.run_layers(&ids, &mask, &pos, past, (b, t), cache)
    }

    fn run_layers(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        pos: &Tensor,
        past: i64,
        (b, t): (i64, i64),
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let rep = (c.num_attention_heads / c.num_key_value_heads) as i64;
        let window = c.sliding_window.map(|w| w as i64);
        let setup = || -> Result<_, TchError> {
            let masks = Masks::new(mask, past, t, window, rep)?;
            let tables = self
                .ropes
                .iter()
                .map(|r| r.tables(pos, self.kind))
                .collect::<Result<Vec<_>, _>>()?;
            let mut x = Tensor::f_embedding(&self.embed, ids, -1, false, false)?;
            if let Some(s) = &self.embed_scale {
                x = x.f_mul(s)?;
            }
            Ok((masks, tables, x))
        };
        let (masks, tables, mut x) = setup().map_err(self.backend("embedding and masks"))?;
        let pass = Pass {
            config: c,
            norm: Norm {
                eps: c.rms_norm_eps,
                gemma: c.family.gemma_style(),
            },
            masks: &masks,
            tables: &tables,
            scoring: Scoring {
                scale: c.attention_scale,
                softcap: c.attn_logit_softcapping,
            },
            batch: b,
            t,
        };
        for (li, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_deref().map(|kv| CacheSlot {
                k: &kv.k[li],
                v: &kv.v[li],
                past,
            });
            x = layer
                .forward(&x, &pass, slot)
                .map_err(self.backend(&format!("layer {li}")))?;
        }
        if let Some(kv) = cache {
            kv.len = past + t;
        }
        pass.norm
            .apply(&x, &self.norm)
            .map_err(self.backend("final norm"))
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
                .ok_or_else(|| Error::Internal(format!("parameter '{name}' not found")))?;
            out.push(OutTensor {
                name: name.clone(),
                dtype: dtype.unwrap_or(*disk),
                shape: t.size().iter().map(|&d| d as usize).collect(),
            });
        }
        let mut w = CheckpointWriter::create(dest, out.clone(), opts)?;
        for o in &out {
            let kind = kind_of(o.dtype).ok_or_else(|| {
                Error::tensor(dest, &o.name, format!("cannot be saved as {}", o.dtype))
            })?;
            let bytes = tch::no_grad(|| -> Result<Vec<u8>, TchError> {
                let t = vars[&o.name]
                    .f_detach()?
                    .f_to_device(Device::Cpu)?
                    .f_to_kind(kind)?
                    .f_contiguous()?;
                let n = t.numel();
                let mut buf = vec![0u8; n * o.dtype.size()];
                t.f_copy_data_u8(&mut buf, n)?;
                Ok(buf)
            })
            .map_err(self.backend(&format!("saving '{}'", o.name)))?;
            w.write(&bytes)?;
        }
        if let Some(dir) = companions_from {
            companion::copy_companions(dir, &mut w)?;
        }
        w.finish()
    }
}
