//! PEFT LoRA adapters read as checkpoints (issue 25): a folder with `adapter_config.json` and
//! `adapter_model.safetensors`. As a checkpoint an adapter is its base model with, per target
//! module, W + s·B·A (s = lora_alpha / r, or lora_alpha / √r with rsLoRA), and the tensors it
//! saves in full (`modules_to_save`, trained biases) in place of the base's.
//!
//! The factors of one module are small (r·(in + out) values) and are read whole; the weight
//! itself is produced chunk by chunk, rows of B times A ([`Factors::add_to`]), so an adapter
//! input costs the merge engine one f32 chunk buffer and never a whole weight.
//!
//! Layouts (PEFT's names, after its `base_model.model.` prefix):
//! - `M.lora_A.weight` [r, in], `M.lora_B.weight` [out, r]: a Linear `M.weight` [out, in]
//!   gets s·B·A; with `fan_in_fan_out` (GPT-2's Conv1D, `M.weight` [in, out]) it gets (s·B·A)ᵀ;
//! - `M.lora_embedding_A` [r, num], `M.lora_embedding_B` [dim, r]: an Embedding `M.weight`
//!   [num, dim] gets (s·B·A)ᵀ;
//! - any other key `K` is a full tensor replacing the base's `K`.
//!
//! Refused with an error naming the setting: other PEFT types, DoRA, per-module ranks or alphas
//! (`rank_pattern`, `alpha_pattern`), layer replication.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::dtype::{decode_f32, encode_f32};
use super::reader::{Checkpoint, TensorInfo};
use super::DType;
use crate::error::{Error, IoContext, Result};

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The prefix PEFT gives every key of a saved adapter.
const PREFIX: &str = "base_model.model.";

/// Whether `path` is a PEFT adapter folder.
pub fn is_adapter(path: &Path) -> bool {
    path.is_dir() && path.join(ADAPTER_CONFIG).is_file()
}

/// The fields of `adapter_config.json` that define the checkpoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AdapterConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub use_rslora: bool,
    pub fan_in_fan_out: bool,
    pub target_modules: serde_json::Value,
    pub modules_to_save: Vec<String>,
    pub base_model_name_or_path: Option<String>,
    /// PEFT's `task_type` (e.g. "CAUSAL_LM"), kept for the adapters a merge writes.
    pub task_type: Option<String>,
}

impl AdapterConfig {
    /// Parses `adapter_config.json` (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<AdapterConfig> {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::format(path, format!("not valid JSON: {e}")))?;
        let bad = |key: &str, msg: &str| Error::format(path, format!("{key}: {msg}"));
        let peft_type = v
            .get("peft_type")
            .and_then(|t| t.as_str())
            .unwrap_or("LORA");
        if peft_type != "LORA" {
            return Err(bad(
                "peft_type",
                &format!("{peft_type} adapters are not supported (only LORA)"),
            ));
        }
        if v.get("use_dora").and_then(|d| d.as_bool()) == Some(true) {
            return Err(bad(
                "use_dora",
                "DoRA adapters are not supported (their weight is not base + s·B·A)",
            ));
        }
        for key in ["rank_pattern", "alpha_pattern"] {
            if v.get(key)
                .and_then(|p| p.as_object())
                .is_some_and(|o| !o.is_empty())
            {
                return Err(bad(
                    key,
                    "per-module ranks and alphas are not supported (one r and lora_alpha for \
                     every module)",
                ));
            }
        }
        if v.get("layer_replication").is_some_and(|l| !l.is_null()) {
            return Err(bad("layer_replication", "is not supported"));
        }
        let r = v
            .get("r")
            .and_then(|r| r.as_u64())
            .filter(|&r| r > 0)
            .ok_or_else(|| bad("r", "missing or not a positive integer"))?;
        let lora_alpha = match v.get("lora_alpha") {
            None => 8.0, // PEFT's default
            Some(a) => a
                .as_f64()
                .filter(|a| a.is_finite())
                .ok_or_else(|| bad("lora_alpha", "not a number"))?,
        };
        let flag = |key: &str| -> Result<bool> {
            match v.get(key) {
                None | Some(serde_json::Value::Null) => Ok(false),
                Some(b) => b.as_bool().ok_or_else(|| bad(key, "not true or false")),
            }
        };
        let modules_to_save = match v.get("modules_to_save") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(m) => m
                .as_array()
                .and_then(|a| a.iter().map(|x| x.as_str().map(String::from)).collect())
                .ok_or_else(|| bad("modules_to_save", "not a list of module names"))?,
        };
        Ok(AdapterConfig {
            r: r as usize,
            lora_alpha,
            use_rslora: flag("use_rslora")?,
            fan_in_fan_out: flag("fan_in_fan_out")?,
            target_modules: v
                .get("target_modules")
                .cloned()
                .unwrap_or(serde_json::Value::Null),
            modules_to_save,
            base_model_name_or_path: v
                .get("base_model_name_or_path")
                .and_then(|b| b.as_str())
                .filter(|b| !b.is_empty())
                .map(String::from),
            task_type: v
                .get("task_type")
                .and_then(|t| t.as_str())
                .map(String::from),
        })
    }

    /// s: lora_alpha / r, or lora_alpha / √r with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }
}

/// How a module's factors make its weight's delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// W [out, in] += s·B·A.
    Linear,
    /// W [in, out] or an embedding [num, dim] += (s·B·A)ᵀ.
    Transposed,
}

/// A low-rank module: its factors' keys in the adapter file.
#[derive(Debug, Clone)]
struct Module {
    a: String,
    b: String,
    kind: Kind,
    /// `lora_embedding_A/B` (an Embedding) rather than `lora_A/B.weight`.
    embedding: bool,
}

/// A module's factors as PEFT stores them (f32): its delta is scale·B·A, in the module's
/// orientation (the transpose of the weight's for Conv1D and Embedding modules).
pub struct RawFactors {
    /// [r, in] (Linear, Conv1D) or [r, num_embeddings] (Embedding).
    pub a: Vec<f32>,
    pub a_shape: [usize; 2],
    /// [out, r] (Linear, Conv1D) or [embedding_dim, r] (Embedding).
    pub b: Vec<f32>,
    pub b_shape: [usize; 2],
    pub scale: f64,
    pub embedding: bool,
}

/// A PEFT LoRA adapter opened as a checkpoint's difference to its base.
pub struct Adapter {
    pub dir: PathBuf,
    pub config: AdapterConfig,
    /// `adapter_model.safetensors`, mapped.
    pub file: Checkpoint,
    /// Low-rank modules by the base tensor they change (`….weight`).
    modules: BTreeMap<String, Module>,
    /// Full tensors by the base tensor they replace, with their key in the file.
    full: BTreeMap<String, String>,
    /// Copies of a LoRA module's base weight (`M.base_layer.weight`, which PEFT saves for
    /// targeted embeddings), by the base tensor: they must equal the base's (checked by
    /// [`Adapter::check_base`]) and are otherwise ignored.
    base_copies: BTreeMap<String, String>,
}

/// Where a tensor of an adapter-as-checkpoint comes from.
pub enum Part<'a> {
    /// The base's tensor plus a low-rank delta.
    LowRank,
    /// A tensor saved in full in the adapter file.
    Full(&'a TensorInfo),
    /// The base's tensor unchanged.
    Base,
}

/// The keys of an adapter file sorted by kind: LoRA factor pairs, full tensors, copies of base
/// weights.
struct Keys {
    /// By the base tensor (`….weight`): the keys of A and B, and whether it is an Embedding's.
    halves: BTreeMap<String, (Option<String>, Option<String>, bool)>,
    full: BTreeMap<String, String>,
    base_copies: BTreeMap<String, String>,
}

impl Keys {
    fn sort(file: &Checkpoint, wpath: &Path) -> Result<Keys> {
        let mut halves: BTreeMap<String, (Option<String>, Option<String>, bool)> = BTreeMap::new();
        let mut full = BTreeMap::new();
        let mut base_copies = BTreeMap::new();
        for t in file.tensors() {
            let key = &t.name;
            let name = key.strip_prefix(PREFIX).ok_or_else(|| {
                Error::tensor(
                    wpath,
                    key,
                    format!("not a PEFT adapter key (every key starts with '{PREFIX}')"),
                )
            })?;
            let split = [
                (".lora_A.weight", true, false),
                (".lora_B.weight", false, false),
                (".lora_embedding_A", true, true),
                (".lora_embedding_B", false, true),
            ]
            .into_iter()
            .find_map(|(suffix, is_a, emb)| name.strip_suffix(suffix).map(|m| (m, is_a, emb)));
            match split {
                Some((module, is_a, embedding)) => {
                    let e = halves
                        .entry(format!("{module}.weight"))
                        .or_insert((None, None, embedding));
                    let slot = if is_a { &mut e.0 } else { &mut e.1 };
                    *slot = Some(key.clone());
                }
                None if name.contains("lora_") || name.contains("magnitude") => {
                    return Err(Error::tensor(
                        wpath,
                        key,
                        "an adapter weight of a kind warp does not read (only LoRA A/B \
                         factors of Linear, Conv1D and Embedding modules)",
                    ));
                }
                None => match name.strip_suffix(".base_layer.weight") {
                    Some(module) => {
                        base_copies.insert(format!("{module}.weight"), key.clone());
                    }
                    None => {
                        full.insert(name.to_string(), key.clone());
                    }
                },
            }
        }
        Ok(Keys {
            halves,
            full,
            base_copies,
        })
    }
}

impl Adapter {
    /// Opens the adapter folder `dir`: its config and weights, every key sorted into low-rank
    /// factors and full tensors.
    pub fn open(dir: &Path) -> Result<Adapter> {
        let cfg_path = dir.join(ADAPTER_CONFIG);
        let text = std::fs::read_to_string(&cfg_path).at(&cfg_path)?;
        let config = AdapterConfig::parse(&text, &cfg_path)?;
        let wpath = dir.join(ADAPTER_WEIGHTS);
        if !wpath.is_file() {
            return Err(Error::format(
                dir,
                format!(
                    "a PEFT adapter folder ({ADAPTER_CONFIG}) without {ADAPTER_WEIGHTS} (adapters \
                     saved as .bin are not supported: save with safe_serialization=True)"
                ),
            ));
        }
        let file = Checkpoint::open(&wpath)?;
        let Keys {
            halves,
            full,
            base_copies,
        } = Keys::sort(&file, &wpath)?;
        let mut modules = BTreeMap::new();
        for (weight, (a, b, embedding)) in halves {
            let (Some(a), Some(b)) = (a, b) else {
                return Err(Error::tensor(
                    &wpath,
                    &weight,
                    "has one LoRA factor without the other (A and B)",
                ));
            };
            if full.contains_key(&weight) {
                return Err(Error::tensor(
                    &wpath,
                    &weight,
                    "is both a LoRA module and a full tensor",
                ));
            }
            let kind = if embedding || config.fan_in_fan_out {
                Kind::Transposed
            } else {
                Kind::Linear
            };
            modules.insert(
                weight,
                Module {
                    a,
                    b,
                    kind,
                    embedding,
                },
            );
        }
        let ad = Adapter {
            dir: dir.to_path_buf(),
            config,
            file,
            modules,
            full,
            base_copies,
        };
        for (w, m) in &ad.modules {
            ad.shapes(w, m)?;
        }
        Ok(ad)
    }

    /// The base this adapter names in its config, if any.
    pub fn base_spec(&self) -> Option<&str> {
        self.config.base_model_name_or_path.as_deref()
    }

    /// Where tensor `name` of the adapter-as-checkpoint comes from.
    pub fn part(&self, name: &str) -> Part<'_> {
        if self.modules.contains_key(name) {
            Part::LowRank
        } else if let Some(t) = self.full.get(name).and_then(|k| self.file.get(k)) {
            Part::Full(t)
        } else {
            Part::Base
        }
    }

    /// Bytes of the f32 factors of module `w` (None: not a low-rank module).
    pub fn factor_bytes(&self, w: &str) -> Option<u64> {
        let m = self.modules.get(w)?;
        let (rows, cols, r) = self.shapes(w, m).ok()?;
        Some(((rows + cols) * r * 4) as u64)
    }

    /// Checks the adapter against its base (`base_spec` names it): every tensor it changes is
    /// in the base, with the shape of the delta or full tensor, and float.
    pub fn check_base(&self, base: &Checkpoint, base_spec: &str) -> Result<()> {
        let wpath = self.file.path.as_path();
        self.check_base_copies(base, base_spec)?;
        for (w, m) in &self.modules {
            let t = base.get(w).ok_or_else(|| {
                Error::tensor(
                    wpath,
                    w,
                    format!(
                        "the adapter changes this tensor, which is not in its base {base_spec}"
                    ),
                )
            })?;
            let (rows, cols, _) = self.shapes(w, m)?;
            if t.shape != [rows, cols] || !t.dtype.is_float() {
                return Err(Error::tensor(
                    wpath,
                    w,
                    format!(
                        "the LoRA delta is [{rows}, {cols}], but the base {base_spec} holds {} {:?}",
                        t.dtype, t.shape
                    ),
                ));
            }
        }
        for (name, key) in &self.full {
            let f = self.file.get(key).ok_or_else(|| {
                Error::Internal(format!("adapter key '{key}' listed but not in the file"))
            })?;
            match base.get(name) {
                Some(t) if t.shape == f.shape && t.dtype.is_float() == f.dtype.is_float() => {}
                Some(t) => {
                    return Err(Error::tensor(
                        wpath,
                        key,
                        format!(
                            "{} {:?}, but the base {base_spec} holds {} {:?}",
                            f.dtype, f.shape, t.dtype, t.shape
                        ),
                    ))
                }
                None => {
                    return Err(Error::tensor(
                        wpath,
                        key,
                        format!("a full tensor for '{name}', which is not in the base {base_spec}"),
                    ))
                }
            }
        }
        Ok(())
    }

    /// The copies of base weights the adapter saves (`M.base_layer.weight`) must be copies: a
    /// LoRA module of the base, the base's values (PEFT saves them for targeted embeddings,
    /// in case the vocabulary was resized; a resized one is not supported).
    fn check_base_copies(&self, base: &Checkpoint, base_spec: &str) -> Result<()> {
        for (w, key) in &self.base_copies {
            let wpath = self.file.path.as_path();
            let bad = |msg: String| Err(Error::tensor(wpath, key, msg));
            if !self.modules.contains_key(w) {
                return bad(format!(
                    "a base weight for '{w}', which is no LoRA module here"
                ));
            }
            let (Some(t), Some(c)) = (base.get(w), self.file.get(key)) else {
                return bad(format!(
                    "a base weight for '{w}', which is not in the base {base_spec}"
                ));
            };
            let decode = |ck: &Checkpoint, t: &TensorInfo| {
                let mut v = vec![0f32; t.numel() as usize];
                decode_f32(t.dtype, ck.bytes(t, 0..t.nbytes), &mut v);
                v
            };
            if t.shape != c.shape || !c.dtype.is_float() || decode(base, t) != decode(&self.file, c)
            {
                return bad(format!(
                    "the adapter's own copy of '{w}' differs from the base {base_spec} (a resized \
                     vocabulary?): adapters that replace a LoRA module's base weight are not \
                     supported"
                ));
            }
        }
        Ok(())
    }

    /// (rows, cols, r) of module `w`'s delta as the weight stores it; checks the factors agree.
    fn shapes(&self, w: &str, m: &Module) -> Result<(usize, usize, usize)> {
        let wpath = self.file.path.as_path();
        let get = |k: &str| {
            self.file
                .get(k)
                .ok_or_else(|| Error::Internal(format!("adapter key '{k}' vanished")))
        };
        let (a, b) = (get(&m.a)?, get(&m.b)?);
        let bad = |msg: String| Error::tensor(wpath, w, msg);
        if a.shape.len() != 2 || b.shape.len() != 2 || !a.dtype.is_float() || !b.dtype.is_float() {
            return Err(bad(format!(
                "LoRA factors must be float matrices, got A {} {:?} and B {} {:?}",
                a.dtype, a.shape, b.dtype, b.shape
            )));
        }
        let (r, r2) = (a.shape[0], b.shape[1]);
        if r != r2 || r != self.config.r {
            return Err(bad(format!(
                "LoRA factors of rank {r} (A {:?}) and {r2} (B {:?}), but r = {} in {ADAPTER_CONFIG}",
                a.shape, b.shape, self.config.r
            )));
        }
        // B·A is [B rows, A cols]; the weight holds it or its transpose.
        Ok(match m.kind {
            Kind::Linear => (b.shape[0], a.shape[1], r),
            Kind::Transposed => (a.shape[1], b.shape[0], r),
        })
    }

    /// The shapes of module `w`'s factors as PEFT stores them (A, B), and whether it is an
    /// Embedding's; from the file's header, no value is read.
    pub fn factor_shapes(&self, w: &str) -> Result<([usize; 2], [usize; 2], bool)> {
        let m = self.module(w)?;
        self.shapes(w, m)?;
        let shape = |k: &str| -> Result<[usize; 2]> {
            let t = self
                .file
                .get(k)
                .ok_or_else(|| Error::Internal(format!("adapter key '{k}' vanished")))?;
            Ok([t.shape[0], t.shape[1]])
        };
        Ok((shape(&m.a)?, shape(&m.b)?, m.embedding))
    }

    /// The low-rank modules, by the base tensor they change.
    pub fn modules(&self) -> impl Iterator<Item = &str> {
        self.modules.keys().map(String::as_str)
    }

    /// Whether the adapter holds full tensors (`modules_to_save`, biases) besides its factors.
    pub fn has_full_tensors(&self) -> bool {
        !self.full.is_empty()
    }

    fn module(&self, w: &str) -> Result<&Module> {
        self.modules.get(w).ok_or_else(|| {
            Error::Internal(format!(
                "'{w}' is not a LoRA module of {}",
                self.dir.display()
            ))
        })
    }

    /// The factors of module `w` as PEFT stores them, read whole.
    pub fn raw_factors(&self, w: &str) -> Result<RawFactors> {
        let m = self.module(w)?;
        let (a_shape, b_shape, embedding) = self.factor_shapes(w)?;
        Ok(RawFactors {
            a: self.read(&m.a)?,
            a_shape,
            b: self.read(&m.b)?,
            b_shape,
            scale: self.config.scale(),
            embedding,
        })
    }

    /// Tensor `k` of the adapter file as f32, refusing NaN and Inf.
    fn read(&self, k: &str) -> Result<Vec<f32>> {
        let t = self
            .file
            .get(k)
            .ok_or_else(|| Error::Internal(format!("adapter key '{k}' vanished")))?;
        let mut v = vec![0f32; t.numel() as usize];
        decode_f32(t.dtype, self.file.bytes(t, 0..t.nbytes), &mut v);
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(Error::tensor(
                &self.file.path,
                k,
                format!("non-finite value (NaN or Inf) at element {i}"),
            ));
        }
        Ok(v)
    }

    /// The factors of module `w` (a base tensor name), read whole, as the weight stores them.
    pub fn factors(&self, w: &str) -> Result<Factors> {
        let m = self.module(w)?;
        let (rows, cols, r) = self.shapes(w, m)?;
        let (a, b) = (self.read(&m.a)?, self.read(&m.b)?);
        let s = self.config.scale() as f32;
        // Stored delta[i][j] = Σk left[i][k]·right[k][j] with left [rows, r], right [r, cols].
        let (left, right) = match m.kind {
            // s·B [out, r] times A [r, in].
            Kind::Linear => (b.iter().map(|x| x * s).collect(), a),
            // (s·B·A)ᵀ = s·Aᵀ [in, r] times Bᵀ [r, out].
            Kind::Transposed => (
                transpose(&a, r, rows).into_iter().map(|x| x * s).collect(),
                transpose(&b, cols, r),
            ),
        };
        Ok(Factors {
            rows,
            cols,
            r,
            left,
            right,
        })
    }
}

/// `m` [rows, cols] row-major → its transpose [cols, rows].
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; m.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = m[i * cols + j];
        }
    }
    t
}

/// The delta of one module as the weight stores it: left [rows, r] (s folded in) times
/// right [r, cols].
pub struct Factors {
    pub rows: usize,
    pub cols: usize,
    pub r: usize,
    left: Vec<f32>,
    right: Vec<f32>,
}

impl Factors {
    /// Elements `start..start + n` of base + delta (row-major), from the base's bytes `base`
    /// (`dtype`), written as f32 little-endian bytes into `out` (4·n bytes). Rows in parallel;
    /// each element is base + Σk left·right in f32, k in order.
    pub fn apply(&self, dtype: DType, base: &[u8], start: u64, out: &mut [u8]) {
        let n = out.len() / 4;
        let cols = self.cols;
        let es = dtype.size();
        // Row segments: (row, first column, element offset in the chunk, length).
        let mut segs = Vec::new();
        let mut e = 0usize;
        while e < n {
            let g = start as usize + e;
            let (row, col) = (g / cols, g % cols);
            let len = (cols - col).min(n - e);
            segs.push((row, col, e, len));
            e += len;
        }
        let mut outs: Vec<&mut [u8]> = Vec::with_capacity(segs.len());
        let mut rest = out;
        for &(_, _, _, len) in &segs {
            let (head, tail) = rest.split_at_mut(len * 4);
            outs.push(head);
            rest = tail;
        }
        segs.into_par_iter().zip(outs).for_each_init(
            || vec![0f32; cols],
            |acc, ((row, col, off, len), o)| {
                let acc = &mut acc[..len];
                decode_f32(dtype, &base[off * es..(off + len) * es], acc);
                for k in 0..self.r {
                    let c = self.left[row * self.r + k];
                    if c == 0.0 {
                        continue;
                    }
                    let rk = &self.right[k * cols + col..k * cols + col + len];
                    for (a, &x) in acc.iter_mut().zip(rk) {
                        *a += c * x;
                    }
                }
                encode_f32(DType::F32, acc, o);
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_that_are_not_plain_lora_are_refused_by_name() {
        let p = Path::new("adapter_config.json");
        let ok = AdapterConfig::parse(
            r#"{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["q_proj"],
                "base_model_name_or_path":"org/base","modules_to_save":null}"#,
            p,
        )
        .unwrap();
        assert_eq!((ok.r, ok.scale()), (4, 2.0));
        assert_eq!(ok.base_model_name_or_path.as_deref(), Some("org/base"));
        let rs = AdapterConfig::parse(r#"{"r":4,"lora_alpha":8,"use_rslora":true}"#, p).unwrap();
        assert_eq!(rs.scale(), 4.0);
        for (text, key) in [
            (r#"{"peft_type":"IA3","r":4}"#, "peft_type"),
            (r#"{"r":4,"use_dora":true}"#, "use_dora"),
            (r#"{"r":4,"rank_pattern":{"q_proj":8}}"#, "rank_pattern"),
            (r#"{"r":4,"alpha_pattern":{"q_proj":8}}"#, "alpha_pattern"),
            (r#"{"r":0}"#, "r:"),
            (r#"{"lora_alpha":8}"#, "r:"),
            (r#"{"r":4,"lora_alpha":"x"}"#, "lora_alpha"),
        ] {
            let e = AdapterConfig::parse(text, p).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("adapter_config.json"), "{e}");
        }
    }

    #[test]
    fn factors_apply_base_plus_the_product_row_by_row() {
        // left [3, 2], right [2, 4]: delta = left·right, checked element by element from any
        // start, across row boundaries.
        let f = Factors {
            rows: 3,
            cols: 4,
            r: 2,
            left: vec![1.0, 2.0, 0.0, -1.0, 0.5, 0.25],
            right: vec![1.0, 2.0, 3.0, 4.0, -1.0, 0.0, 1.0, 2.0],
        };
        let base: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
        let want: Vec<f32> = (0..12)
            .map(|e| {
                let (i, j) = (e / 4, e % 4);
                base[e] + f.left[i * 2] * f.right[j] + f.left[i * 2 + 1] * f.right[4 + j]
            })
            .collect();
        let bytes: Vec<u8> = base.iter().flat_map(|x| x.to_le_bytes()).collect();
        for (start, n) in [(0usize, 12usize), (3, 6), (5, 1), (7, 5)] {
            let mut out = vec![0u8; n * 4];
            f.apply(
                DType::F32,
                &bytes[start * 4..(start + n) * 4],
                start as u64,
                &mut out,
            );
            let got: Vec<f32> = out
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            assert_eq!(got, want[start..start + n], "{start}+{n}");
        }
    }
}
