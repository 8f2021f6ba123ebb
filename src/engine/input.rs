//! The inputs of a merge job: checkpoints, and PEFT LoRA adapters read as checkpoints (their
//! base plus the adapter's deltas, `io::lora`).

use std::path::Path;

use crate::error::{Error, Result};
use crate::hub::HubOptions;
use crate::io::lora::{is_adapter, Adapter, Part};
use crate::io::reader::Shard;
use crate::io::{Checkpoint, DType, TensorInfo};
use crate::progress::Reporter;

/// One input checkpoint of a job, with the name the user gave it and its role in the recipe.
pub struct Input {
    pub spec: String,
    pub role: String,
    /// The checkpoint; for a LoRA adapter, its base model.
    pub ckpt: Checkpoint,
    /// A PEFT LoRA adapter read as a checkpoint: `ckpt` with the adapter's low-rank deltas and
    /// full tensors.
    pub adapter: Option<Adapter>,
}

/// Where one tensor of an input is read from.
pub struct Source<'a> {
    pub ckpt: &'a Checkpoint,
    pub info: &'a TensorInfo,
    /// The stored tensor plus the adapter's low-rank delta, computed in f32.
    pub low_rank: bool,
}

impl Source<'_> {
    /// The dtype the kernels read: f32 for a tensor computed with a low-rank delta.
    pub fn dtype(&self) -> DType {
        if self.low_rank {
            DType::F32
        } else {
            self.info.dtype
        }
    }
}

/// Whether `spec` (a local path, `builtin:…` or a hub id) names a PEFT adapter folder; a hub id
/// is resolved (downloaded, or found in the cache offline) to tell. Unreadable specs are not
/// adapters here: opening them reports why.
pub fn is_adapter_spec(spec: &str, hub: &HubOptions, reporter: &dyn Reporter) -> bool {
    let Ok(local) = crate::builtin::resolve_spec(spec) else {
        return false;
    };
    let path = Path::new(&local);
    if std::fs::symlink_metadata(path).is_ok() {
        return is_adapter(path);
    }
    crate::hub::HubId::parse(&local).is_some()
        && crate::hub::resolve_checkpoint(&local, hub, reporter).is_ok_and(|p| is_adapter(&p))
}

impl Input {
    /// A checkpoint input (no adapter).
    pub fn new(spec: String, role: &str, ckpt: Checkpoint) -> Input {
        Input {
            spec,
            role: role.to_string(),
            ckpt,
            adapter: None,
        }
    }

    /// Opens `spec` (a local path, `builtin:…`, a hub id, or a PEFT adapter folder). An
    /// adapter's base is `init` (the job's init/base model, unless that is an adapter too) or
    /// else the base its adapter_config.json names.
    pub fn open(
        spec: String,
        role: &str,
        init: Option<&str>,
        hub: &HubOptions,
        reporter: &dyn Reporter,
    ) -> Result<Input> {
        let local = crate::builtin::resolve_spec(&spec)?;
        // A hub id is downloaded first: its repo may hold a model or a PEFT adapter.
        let local = crate::hub::resolve_checkpoint(&local, hub, reporter)?;
        if !is_adapter(&local) {
            return Ok(Input::new(spec, role, Checkpoint::open(local)?));
        }
        let adapter = Adapter::open(&local)?;
        let init = init.filter(|i| role != "init" && !is_adapter_spec(i, hub, reporter));
        let base_spec = match (init, adapter.base_spec()) {
            (Some(i), _) => i.to_string(),
            (None, Some(b)) => b.to_string(),
            (None, None) => {
                return Err(Error::setting(
                    "base_model_name_or_path",
                    format!(
                        "{spec}: a LoRA adapter is read as its base model plus the adapter, and \
                         its adapter_config.json names no base: give the base with --init"
                    ),
                ))
            }
        };
        let base_local = crate::builtin::resolve_spec(&base_spec)?;
        let ckpt = crate::hub::open_checkpoint(&base_local, hub, reporter)?;
        adapter.check_base(&ckpt, &base_spec)?;
        Ok(Input {
            spec,
            role: role.to_string(),
            ckpt,
            adapter: Some(adapter),
        })
    }

    /// Where tensor `name` is read from (None: this input lacks it).
    pub fn source(&self, name: &str) -> Option<Source<'_>> {
        let base = |low_rank| {
            self.ckpt.get(name).map(|info| Source {
                ckpt: &self.ckpt,
                info,
                low_rank,
            })
        };
        match &self.adapter {
            Some(a) => match a.part(name) {
                Part::Full(info) => Some(Source {
                    ckpt: &a.file,
                    info,
                    low_rank: false,
                }),
                Part::LowRank => base(true),
                Part::Base => base(false),
            },
            None => base(false),
        }
    }

    /// Every file this input reads.
    pub fn shards(&self) -> impl Iterator<Item = &Shard> {
        self.ckpt
            .shards
            .iter()
            .chain(self.adapter.iter().flat_map(|a| a.file.shards.iter()))
    }

    /// What identifies this input's contents (its header; an adapter's and its base's).
    pub fn fingerprint(&self) -> String {
        match &self.adapter {
            Some(a) => format!("{}+{}", a.file.fingerprint(), self.ckpt.fingerprint()),
            None => self.ckpt.fingerprint(),
        }
    }
}

/// An input's f32 chunk of base + s·B·A for one tensor, when the input is a PEFT adapter that
/// changes it (`None` otherwise): the factors and the buffer the chunk is computed into.
pub(crate) type Delta = Option<(crate::io::lora::Factors, Vec<u8>)>;

/// The bytes of element range `r` in every input: an input with a low-rank delta gives its
/// computed f32 chunk (the delta's buffer, filled for `r` beforehand), any other its stored
/// bytes. Shared by the streaming engine and the recipe engine.
pub(crate) fn range_bytes<'a>(
    sweeps: &'a [crate::io::Sweep],
    infos: &[&TensorInfo],
    deltas: &'a [Delta],
    r: &std::ops::Range<u64>,
) -> Vec<&'a [u8]> {
    let len = (r.end - r.start) as usize;
    sweeps
        .iter()
        .zip(infos)
        .zip(deltas)
        .map(|((s, t), d)| match d {
            Some((_, buf)) => &buf[..len * 4],
            None => {
                let es = t.dtype.size() as u64;
                s.bytes(r.start * es..r.end * es)
            }
        })
        .collect()
}
