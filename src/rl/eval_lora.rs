//! PEFT LoRA adapters as evaluated checkpoints (`warp eval`, issue 25): an adapter folder is
//! measured as its base with the adapter on ([`CausalLm::with_adapters`], f32 factors, PEFT's
//! forward), the base loaded once for every adapter of it in a row (a `warp run` with LoRA
//! lists an iteration's trajectories and merges together, all adapters of that iteration's
//! init) and not at all when it is the SFT model (the KL reference is reused).

use std::path::{Path, PathBuf};

use tch::{Device, Tensor};

use super::model::{linear_modules, AdapterModule, Adapters, CausalLm};
use crate::error::{Error, Result};
use crate::io::lora::{is_adapter, Adapter};

/// A path with symbolic links resolved (as given when it cannot be).
fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The local folder of adapter `a`'s base: `base_model_name_or_path` (a folder, `builtin:…` or a
/// hub id, downloaded or found in the cache).
fn base_dir(a: &Adapter, reporter: &dyn crate::progress::Reporter) -> Result<PathBuf> {
    let spec = a.base_spec().ok_or_else(|| {
        Error::setting(
            "base_model_name_or_path",
            format!(
                "{}: the adapter's config names no base model, so it cannot be evaluated",
                a.dir.display()
            ),
        )
    })?;
    let local = crate::builtin::resolve_spec(spec)?;
    crate::hub::resolve_checkpoint(&local, &crate::hub::HubOptions::from_env(), reporter)
}

/// What an adapter adds to the resident part of an evaluation: its factors (f32 elements) and
/// its rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AdapterSize {
    pub parameters: u64,
    pub rank: u64,
}

/// The largest adapter among `paths` (headers only; None: no adapter).
pub fn largest_adapter<'a>(
    paths: impl IntoIterator<Item = &'a Path>,
) -> Result<Option<AdapterSize>> {
    let mut most: Option<AdapterSize> = None;
    for p in paths.into_iter().filter(|p| is_adapter(p)) {
        let a = Adapter::open(p)?;
        let mut size = AdapterSize {
            parameters: 0,
            rank: a.config.r as u64,
        };
        for w in a.modules() {
            let (sa, sb, _) = a.factor_shapes(w)?;
            size.parameters += (sa[0] * sa[1] + sb[0] * sb[1]) as u64;
        }
        if most.map_or(true, |m| size.parameters > m.parameters) {
            most = Some(size);
        }
    }
    Ok(most)
}

/// The factors of adapter `a` as [`Adapters`] on the linear modules of `base`: LoRA on the
/// decoder's Linear modules only (no embeddings, no `fan_in_fan_out`, no full tensors), every
/// module's shape checked against the base's.
fn adapters_for(a: &Adapter, base: &CausalLm, device: Device) -> Result<Adapters> {
    let dir = &a.dir;
    let unsupported = |what: String| {
        Error::format(
            dir,
            format!("{what}: `warp eval` reads LoRA adapters of the decoder's linear modules only"),
        )
    };
    if a.config.fan_in_fan_out {
        return Err(unsupported(
            "fan_in_fan_out adapter (Conv1D modules)".into(),
        ));
    }
    if a.has_full_tensors() {
        return Err(unsupported(
            "the adapter saves full tensors (modules_to_save or biases)".into(),
        ));
    }
    let linear = linear_modules(&base.config);
    let mut modules = Vec::new();
    for w in a.modules() {
        let f = a.raw_factors(w)?;
        let module = w.strip_suffix(".weight").unwrap_or(w);
        let shape = linear.iter().find(|(m, _)| m == module).map(|(_, s)| *s);
        let [out, inp] = match shape {
            Some(s) if !f.embedding => s,
            _ => return Err(unsupported(format!("LoRA module '{module}'"))),
        };
        let (r, a_in, b_out, b_r) = (f.a_shape[0], f.a_shape[1], f.b_shape[0], f.b_shape[1]);
        if a_in as i64 != inp || b_out as i64 != out || b_r != r {
            return Err(Error::tensor(
                dir.join(crate::io::lora::ADAPTER_WEIGHTS),
                module,
                format!(
                    "LoRA factors A [{r}, {a_in}] and B [{b_out}, {b_r}] do not fit the base's \
                     [{out}, {inp}] weight"
                ),
            ));
        }
        let t = |v: &[f32], shape: [i64; 2]| {
            Tensor::f_from_slice(v)
                .and_then(|t| t.f_view(shape))
                .and_then(|t| t.f_to_device(device))
                .map_err(|e| Error::compute(format!("loading the LoRA factors of {module}"), e))
        };
        modules.push(AdapterModule {
            module: module.to_string(),
            a: t(&f.a, [r as i64, inp])?,
            b: t(&f.b, [out, r as i64])?,
        });
    }
    Ok(Adapters {
        scale: a.config.scale(),
        modules,
    })
}

/// Loads the evaluated models: full checkpoints as they are, adapters on their base, the base
/// kept for the next adapter of it.
pub struct PointLoader {
    device: Device,
    sft: PathBuf,
    /// The last base loaded (not the SFT model): its canonical folder and the model.
    base: Option<(PathBuf, CausalLm)>,
}

impl PointLoader {
    /// `sft`: the SFT model's folder (its model is the `reference` given to [`Self::load`]).
    pub fn new(sft: &Path, device: Device) -> PointLoader {
        PointLoader {
            device,
            sft: canonical(sft),
            base: None,
        }
    }

    /// The model of checkpoint `path`: a full checkpoint, or a PEFT adapter on its base (the
    /// SFT model `reference` itself when that is the base).
    pub fn load(
        &mut self,
        path: &Path,
        reference: &CausalLm,
        reporter: &dyn crate::progress::Reporter,
    ) -> Result<CausalLm> {
        if !is_adapter(path) {
            return CausalLm::load(path, self.device);
        }
        let a = Adapter::open(path)?;
        let dir = canonical(&base_dir(&a, reporter)?);
        let base = if dir == self.sft {
            reference
        } else {
            if self.base.as_ref().map_or(true, |(d, _)| *d != dir) {
                // The previous base first: two bases are never resident together.
                self.base = None;
                self.base = Some((dir.clone(), CausalLm::load(&dir, self.device)?));
            }
            match &self.base {
                Some((_, m)) => m,
                None => return Err(Error::Internal("the adapter's base vanished".into())),
            }
        };
        let adapters = adapters_for(&a, base, self.device)?;
        base.with_adapters(Some(&adapters))
    }
}
