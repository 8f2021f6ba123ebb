//! Synthetic Llama-shaped checkpoints of a requested size, deterministic from a seed, generated
//! in parallel and streamed through the writer — multi-GB benchmark inputs in seconds. A model
//! can be a "fine-tune" of another: base(seed B) + noise · N(seed), so task vectors are real.

use rayon::prelude::*;

use super::dtype::{encode_f32, DType};
use super::writer::{CheckpointWriter, OutTensor, WriterOptions};
use crate::error::Result;
use crate::progress::Reporter;

#[derive(Debug, Clone)]
pub struct SynthSpec {
    /// Approximate total size in bytes.
    pub size: u64,
    pub dtype: DType,
    pub seed: u64,
    /// When set, the model is base(base_seed) + noise · pattern(seed).
    pub base_seed: Option<u64>,
    pub noise: f32,
}

/// The Llama shape chosen for a size: (vocab, hidden, intermediate, layers, heads, kv_heads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
}

impl Shape {
    pub fn for_params(params: u64) -> Shape {
        let vocab = if params >= 100_000_000 { 32_000 } else { 2_048 };
        let mut best = None;
        for hidden in [64usize, 128, 256, 512, 1024, 2048, 3072, 4096, 5120, 8192] {
            let heads = (hidden / 64).max(1);
            let kv_heads = (heads / 4).max(1);
            let intermediate = (hidden * 8 / 3).div_ceil(256) * 256;
            let s = Shape {
                vocab,
                hidden,
                intermediate,
                layers: 1,
                heads,
                kv_heads,
            };
            let fixed = s.fixed_params();
            let per = s.layer_params();
            // Prefer the widest model that still has at least 8 blocks, like real checkpoints.
            if fixed + 8 * per <= params || best.is_none() {
                let layers = (params.saturating_sub(fixed) / per).max(1) as usize;
                best = Some(Shape { layers, ..s });
            }
        }
        best.expect("at least one candidate")
    }

    fn kv_dim(&self) -> usize {
        self.hidden / self.heads * self.kv_heads
    }

    fn fixed_params(&self) -> u64 {
        (2 * self.vocab * self.hidden + self.hidden) as u64
    }

    fn layer_params(&self) -> u64 {
        let (h, i, kv) = (self.hidden, self.intermediate, self.kv_dim());
        (2 * h * h + 2 * h * kv + 3 * h * i + 2 * h) as u64
    }

    pub fn tensors(&self, dtype: DType) -> Vec<OutTensor> {
        let (h, i, kv, v) = (self.hidden, self.intermediate, self.kv_dim(), self.vocab);
        let t = |name: String, shape: Vec<usize>| OutTensor { name, dtype, shape };
        let mut out = vec![t("model.embed_tokens.weight".into(), vec![v, h])];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            out.push(t(format!("{p}.input_layernorm.weight"), vec![h]));
            out.push(t(format!("{p}.self_attn.q_proj.weight"), vec![h, h]));
            out.push(t(format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
            out.push(t(format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
            out.push(t(format!("{p}.self_attn.o_proj.weight"), vec![h, h]));
            out.push(t(format!("{p}.post_attention_layernorm.weight"), vec![h]));
            out.push(t(format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
            out.push(t(format!("{p}.mlp.up_proj.weight"), vec![i, h]));
            out.push(t(format!("{p}.mlp.down_proj.weight"), vec![h, i]));
        }
        out.push(t("model.norm.weight".into(), vec![h]));
        out.push(t("lm_head.weight".into(), vec![v, h]));
        out
    }

    /// A transformers-compatible LlamaForCausalLM config for this shape.
    pub fn config_json(&self, dtype: DType) -> serde_json::Value {
        let torch_dtype = match dtype {
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
            DType::F64 => "float64",
            _ => "float32",
        };
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "hidden_act": "silu",
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "tie_word_embeddings": false,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "torch_dtype": torch_dtype,
        })
    }
}

/// splitmix64: a fast, well-mixed hash of a counter.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in [-1, 1) from (seed, tensor, element).
#[inline]
fn uniform(seed: u64, tensor: u64, i: u64) -> f32 {
    let h = mix(seed ^ mix(tensor.wrapping_mul(0x1000_0000_01B3) ^ i));
    ((h >> 40) as f32) * (2.0 / (1u64 << 24) as f32) - 1.0
}

const GEN_CHUNK: usize = 1 << 22;

/// Writes the synthetic checkpoint to `w` (created with `shape.tensors(dtype)`).
pub fn generate(spec: &SynthSpec, w: &mut CheckpointWriter, reporter: &dyn Reporter) -> Result<()> {
    let tensors = w.tensors().to_vec();
    let total: u64 = tensors.iter().map(OutTensor::nbytes).sum();
    reporter.start("generate", total);
    let es = spec.dtype.size();
    let mut vals = vec![0f32; GEN_CHUNK];
    let mut bytes = vec![0u8; GEN_CHUNK * es];
    for (ti, t) in tensors.iter().enumerate() {
        let n = t.nbytes() as usize / es;
        let is_norm = t.shape.len() == 1;
        // Scale like an initialised LLM: N(0, 0.02)-ish matrices, norms around 1.
        let scale = if is_norm { 0.05 } else { 0.02 * 3f32.sqrt() };
        let mut lo = 0;
        while lo < n {
            crate::interrupt::check()?;
            let len = GEN_CHUNK.min(n - lo);
            vals[..len]
                .par_chunks_mut(1 << 14)
                .enumerate()
                .for_each(|(c, out)| {
                    let base = (lo + c * (1 << 14)) as u64;
                    for (j, v) in out.iter_mut().enumerate() {
                        let i = base + j as u64;
                        *v = match spec.base_seed {
                            Some(b) => {
                                scale * uniform(b, ti as u64, i)
                                    + spec.noise * uniform(spec.seed, ti as u64, i)
                            }
                            None => scale * uniform(spec.seed, ti as u64, i),
                        } + if is_norm { 1.0 } else { 0.0 };
                    }
                });
            bytes[..len * es]
                .par_chunks_mut((1 << 14) * es)
                .zip(vals[..len].par_chunks(1 << 14))
                .for_each(|(b, v)| encode_f32(spec.dtype, v, b));
            w.write(&bytes[..len * es])?;
            reporter.advance((len * es) as u64);
            lo += len;
        }
    }
    reporter.finish();
    Ok(())
}

/// Creates a synthetic checkpoint folder at `dest` (config.json included). Returns its shape.
pub fn write_synthetic(
    dest: &std::path::Path,
    spec: &SynthSpec,
    opts: &WriterOptions,
    reporter: &dyn Reporter,
) -> Result<Shape> {
    let shape = Shape::for_params(spec.size / spec.dtype.size() as u64);
    let mut w = CheckpointWriter::create(dest, shape.tensors(spec.dtype), opts)?;
    let config = serde_json::to_string_pretty(&shape.config_json(spec.dtype)).expect("json");
    w.add_file("config.json", config.as_bytes())?;
    generate(spec, &mut w, reporter)?;
    w.finish()?;
    Ok(shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_hit_the_size_and_look_like_llamas() {
        for params in [5_000_000u64, 1_000_000_000, 3_500_000_000] {
            let s = Shape::for_params(params);
            let got: u64 = s.tensors(DType::F32).iter().map(|t| t.nbytes() / 4).sum();
            assert!(
                got <= params + s.layer_params(),
                "{params}: {s:?} has {got}"
            );
            assert!(
                got as f64 > params as f64 * 0.85,
                "{params}: {s:?} has {got}"
            );
            assert_eq!(s.hidden % s.heads, 0);
        }
        let s = Shape::for_params(1_000_000_000);
        assert!(s.layers >= 8 && s.hidden >= 1024, "{s:?}");
    }

    #[test]
    fn uniform_is_in_range_and_centered() {
        let xs: Vec<f32> = (0..100_000).map(|i| uniform(7, 3, i)).collect();
        assert!(xs.iter().all(|x| (-1.0..1.0).contains(x)));
        let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.01, "{mean}");
    }
}
