//! Writing PEFT LoRA adapters (issue 25): a folder with `adapter_config.json` and
//! `adapter_model.safetensors` that PEFT's `PeftModel.from_pretrained` loads, and that warp reads
//! back as base + B·A ([`super::lora`]).
//!
//! Every module's factor shapes are known before any value is, so the safetensors header is
//! written first and the factors are streamed after it, one module at a time: a writer never
//! holds more than the module it is given.
//!
//! The adapters are written with `lora_alpha = r` and no rsLoRA, so PEFT's scale α/r is 1 and
//! the factors hold the delta exactly as B·A (a merge folds its coefficients and the inputs'
//! scales into B). Target modules are listed by their full paths, which PEFT matches exactly.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::dtype::{encode_f32, DType};
use super::header::{self, Entry};
use super::lora::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use crate::error::{Error, IoContext, Result};

/// One low-rank module of an adapter to write, in PEFT's layout: A [r, in] and B [out, r]
/// (Linear, GPT-2's Conv1D with `fan_in_fan_out`), or A [r, num] and B [dim, r] (Embedding).
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleShape {
    /// The base tensor the module changes (`….weight`).
    pub weight: String,
    pub embedding: bool,
    pub a_shape: [usize; 2],
    pub b_shape: [usize; 2],
}

impl ModuleShape {
    /// The module's path: its weight's name without `.weight`.
    pub fn module(&self) -> &str {
        self.weight.strip_suffix(".weight").unwrap_or(&self.weight)
    }

    /// The PEFT keys of A and B.
    fn keys(&self) -> [String; 2] {
        let m = self.module();
        if self.embedding {
            [
                format!("base_model.model.{m}.lora_embedding_A"),
                format!("base_model.model.{m}.lora_embedding_B"),
            ]
        } else {
            [
                format!("base_model.model.{m}.lora_A.weight"),
                format!("base_model.model.{m}.lora_B.weight"),
            ]
        }
    }
}

/// What an adapter folder will hold.
pub struct AdapterLayout {
    /// The rank of every module (A's rows, B's columns).
    pub r: usize,
    /// PEFT's `fan_in_fan_out` (GPT-2's Conv1D weights are stored [in, out]).
    pub fan_in_fan_out: bool,
    /// PEFT's `task_type` (e.g. "CAUSAL_LM"), if known.
    pub task_type: Option<String>,
    /// `base_model_name_or_path`: a hub id or a local folder.
    pub base_model: String,
    /// The modules, in the order their factors will be written.
    pub modules: Vec<ModuleShape>,
    /// The dtype of the stored factors (a float).
    pub dtype: DType,
    /// `__metadata__` of the safetensors file (`format: pt` is always added).
    pub metadata: BTreeMap<String, String>,
    /// PEFT's `lora_alpha` and `use_rslora` (scale α/r, or α/√r): `None` writes α = r without
    /// rsLoRA (scale 1, the factors hold the delta as B·A); a trained adapter keeps its own.
    pub scaling: Option<(f64, bool)>,
}

impl AdapterLayout {
    /// `adapter_config.json`: a plain LoRA of rank r, scale α/r = 1 unless `scaling` says
    /// otherwise.
    pub fn config(&self) -> serde_json::Value {
        let targets: Vec<&str> = self.modules.iter().map(ModuleShape::module).collect();
        let (alpha, rslora) = match self.scaling {
            None => (serde_json::json!(self.r), false),
            // An integral α as an integer, as PEFT writes it.
            Some((a, rs)) if a.fract() == 0.0 && a.abs() < 1e15 => {
                (serde_json::json!(a as i64), rs)
            }
            Some((a, rs)) => (serde_json::json!(a), rs),
        };
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": self.task_type,
            "r": self.r,
            "lora_alpha": alpha,
            "use_rslora": rslora,
            "use_dora": false,
            "fan_in_fan_out": self.fan_in_fan_out,
            "lora_dropout": 0.0,
            "bias": "none",
            "target_modules": targets,
            "modules_to_save": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "init_lora_weights": true,
            "inference_mode": true,
            "base_model_name_or_path": self.base_model,
        })
    }
}

/// Streams one adapter into the folder `dir` (which must exist: the caller stages it).
pub struct AdapterWriter {
    file: Option<BufWriter<File>>,
    /// The weights file as the user will find it (for messages).
    shown: PathBuf,
    modules: Vec<ModuleShape>,
    next: usize,
    dtype: DType,
}

impl AdapterWriter {
    /// Writes `adapter_config.json` and the safetensors header into `dir`; `shown` is where
    /// the folder will be once committed (errors name it).
    pub fn create(dir: &Path, shown: &Path, layout: &AdapterLayout) -> Result<AdapterWriter> {
        if !layout.dtype.is_float() {
            return Err(Error::Internal(format!(
                "adapter factors as {}",
                layout.dtype
            )));
        }
        let config = serde_json::to_string_pretty(&layout.config())
            .map_err(|e| Error::Internal(e.to_string()))?;
        let cfg_shown = shown.join(ADAPTER_CONFIG);
        std::fs::write(dir.join(ADAPTER_CONFIG), config + "\n").at(&cfg_shown)?;
        let mut entries = Vec::with_capacity(2 * layout.modules.len());
        let mut off = 0u64;
        for m in &layout.modules {
            for (key, shape) in m.keys().into_iter().zip([m.a_shape, m.b_shape]) {
                let n = (shape[0] * shape[1] * layout.dtype.size()) as u64;
                entries.push(Entry {
                    name: key,
                    dtype: layout.dtype,
                    shape: shape.to_vec(),
                    begin: off,
                    end: off + n,
                });
                off += n;
            }
        }
        let mut metadata = layout.metadata.clone();
        metadata.insert("format".into(), "pt".into());
        let shown = shown.join(ADAPTER_WEIGHTS);
        let f = File::create(dir.join(ADAPTER_WEIGHTS)).at(&shown)?;
        let mut bw = BufWriter::with_capacity(1 << 20, f);
        bw.write_all(&header::serialize(&entries, &metadata))
            .at(&shown)?;
        Ok(AdapterWriter {
            file: Some(bw),
            shown,
            modules: layout.modules.clone(),
            next: 0,
            dtype: layout.dtype,
        })
    }

    /// Appends the factors of the next module (row-major A, then B, as f32 values).
    pub fn write_module(&mut self, a: &[f32], b: &[f32]) -> Result<()> {
        let m = self
            .modules
            .get(self.next)
            .ok_or_else(|| Error::Internal("more adapter modules written than planned".into()))?;
        for (v, s) in [(a, m.a_shape), (b, m.b_shape)] {
            if v.len() != s[0] * s[1] {
                return Err(Error::Internal(format!(
                    "adapter module '{}': {} values for a {s:?} factor",
                    m.weight,
                    v.len()
                )));
            }
        }
        let bw = self
            .file
            .as_mut()
            .ok_or_else(|| Error::Internal("adapter writer finished".into()))?;
        let mut bytes = vec![0u8; a.len().max(b.len()) * self.dtype.size()];
        for v in [a, b] {
            let out = &mut bytes[..v.len() * self.dtype.size()];
            encode_f32(self.dtype, v, out);
            bw.write_all(out).at(&self.shown)?;
        }
        self.next += 1;
        Ok(())
    }

    /// Checks that every module was written and fsyncs the file.
    pub fn finish(mut self) -> Result<()> {
        if let Some(m) = self.modules.get(self.next) {
            return Err(Error::Internal(format!(
                "adapter incomplete at module '{}'",
                m.weight
            )));
        }
        let bw = self
            .file
            .take()
            .ok_or_else(|| Error::Internal("adapter writer finished twice".into()))?;
        let f = bw
            .into_inner()
            .map_err(|e| Error::io(&self.shown, e.into_error()))?;
        f.sync_all().at(&self.shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::lora::Adapter;

    /// An adapter written here reads back (warp's own PEFT reader) with its factors and a
    /// config of scale 1, embedding keys included.
    #[test]
    fn written_adapters_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let layout = AdapterLayout {
            r: 2,
            fan_in_fan_out: false,
            task_type: Some("CAUSAL_LM".into()),
            base_model: "org/base".into(),
            modules: vec![
                ModuleShape {
                    weight: "model.layers.0.q.weight".into(),
                    embedding: false,
                    a_shape: [2, 3],
                    b_shape: [4, 2],
                },
                ModuleShape {
                    weight: "model.embed.weight".into(),
                    embedding: true,
                    a_shape: [2, 5],
                    b_shape: [3, 2],
                },
            ],
            dtype: DType::F32,
            metadata: BTreeMap::new(),
            scaling: None,
        };
        let mut w = AdapterWriter::create(dir.path(), dir.path(), &layout).unwrap();
        let v = |n: usize, k: f32| (0..n).map(|i| i as f32 * k).collect::<Vec<f32>>();
        w.write_module(&v(6, 0.5), &v(8, -0.25)).unwrap();
        assert!(w.write_module(&v(6, 1.0), &v(6, 1.0)).is_err());
        w.write_module(&v(10, 0.1), &v(6, 2.0)).unwrap();
        w.finish().unwrap();
        let ad = Adapter::open(dir.path()).unwrap();
        assert_eq!((ad.config.r, ad.config.scale()), (2, 1.0));
        assert_eq!(ad.base_spec(), Some("org/base"));
        let f = ad.raw_factors("model.layers.0.q.weight").unwrap();
        assert_eq!((f.a, f.b, f.embedding), (v(6, 0.5), v(8, -0.25), false));
        let e = ad.raw_factors("model.embed.weight").unwrap();
        assert_eq!((e.a_shape, e.b_shape, e.embedding), ([2, 5], [3, 2], true));
        assert_eq!(e.a, v(10, 0.1));
    }
}
