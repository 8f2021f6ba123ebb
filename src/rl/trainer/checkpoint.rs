//! Checkpoints and resuming: the run record, the models fresh or restored, and the resumable
//! checkpoint folders (policy, EMA, trainer state).

#[allow(unused_imports)]
use super::*;
use crate::rl::f32_checkpoint::write_f32_tensors;

/// `run.json` of a run folder: what made it.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct RunRecord {
    pub(super) warp_version: String,
    pub(super) config: RlConfig,
}

/// `trainer/state.json` of a checkpoint: the step it was taken after, and the run's settings.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct TrainerState {
    pub(super) step: u64,
    pub(super) config: RlConfig,
}

pub(super) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).at(path)?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, e.to_string()))
}

pub(super) fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::Internal(e.to_string()))?;
    write_file_atomic(path, (text + "\n").as_bytes())
}

/// The models of a run and the optimizer, fresh or restored from a checkpoint.
pub(super) struct Models {
    pub(super) policy: CausalLm,
    pub(super) ema: CausalLm,
    pub(super) init: Option<CausalLm>,
    pub(super) opt: Adam,
    pub(super) step: u64,
}

/// `t` as little-endian bytes of `kind` (on the CPU).
pub(super) fn tensor_bytes(
    t: &Tensor,
    kind: Kind,
    elt: usize,
) -> std::result::Result<Vec<u8>, tch::TchError> {
    let t = tch::no_grad(|| -> std::result::Result<Tensor, tch::TchError> {
        t.f_detach()?
            .f_to_device_(Device::Cpu, kind, false, false)?
            .f_contiguous()
    })?;
    let n = t.numel();
    let mut buf = vec![0u8; n * elt];
    t.f_copy_data_u8(&mut buf, n)?;
    Ok(buf)
}

pub(super) fn load_init(
    cfg: &RlConfig,
    ck: &Checkpoint,
    config: &crate::rl::ModelConfig,
    device: Device,
) -> Result<Option<CausalLm>> {
    if !needs_init(cfg) {
        return Ok(None);
    }
    let mut init = CausalLm::from_checkpoint(ck, config.clone(), device, train_kind(cfg))?;
    init.vs.freeze();
    Ok(Some(init))
}

/// The frozen init, and the policy and EMA starting from it; the policy's f32 master copies (in
/// bf16) start from the init's exact weights, not their bf16 rounding.
pub(super) fn fresh_models(
    cfg: &RlConfig,
    ck: &Checkpoint,
    config: crate::rl::ModelConfig,
    device: Device,
) -> Result<Models> {
    let init = load_init(cfg, ck, &config, device)?;
    let policy = CausalLm::from_checkpoint(ck, config.clone(), device, train_kind(cfg))?;
    let mut ema = CausalLm::from_checkpoint(ck, config, device, Kind::Float)?;
    ema.vs.freeze();
    let mut opt = Adam::new(&policy, adam_config(cfg))?;
    if opt.has_masters() {
        let exact = named_weights(&ema)?;
        let exact: HashMap<String, Tensor> = exact.into_iter().collect();
        opt.set_masters(&mut |name, _| {
            exact
                .get(name)
                .map(|t| t.shallow_clone())
                .ok_or_else(|| Error::Internal(format!("no init weight '{name}'")))
        })?;
    }
    Ok(Models {
        policy,
        ema,
        init,
        opt,
        step: 0,
    })
}

/// The frozen init, and the policy, EMA and optimizer of checkpoint `dir`. When the saved
/// folders are not exact (`--save-dtype same` with a non-f32 init), the exact f32 weights come
/// from the trainer state (the policy's from the optimizer's master copies when it has them).
pub(super) fn restore_models(
    cfg: &RlConfig,
    ck: &Checkpoint,
    config: crate::rl::ModelConfig,
    dir: &Path,
    exact_on_disk: bool,
    device: Device,
) -> Result<Models> {
    let init = load_init(cfg, ck, &config, device)?;
    let policy = CausalLm::load_with_kind(dir.join("policy"), device, train_kind(cfg))?;
    let mut ema = CausalLm::load_with_kind(dir.join("ema"), device, Kind::Float)?;
    let state_dir = RlRunLayout::trainer_dir(dir);
    let step = read_json::<TrainerState>(&state_dir.join(TRAINER_STATE))?.step;
    let state = Checkpoint::open(&state_dir)?;
    let mut get = |name: &str, shape: &[i64]| -> Result<Tensor> {
        let t = read_tensor(&state, name, Kind::Float, device)?;
        if t.size() != shape {
            return Err(Error::tensor(
                &state_dir,
                name,
                format!("shape {:?}, the model has {shape:?}", t.size()),
            ));
        }
        Ok(t)
    };
    let mut opt = Adam::new(&policy, adam_config(cfg))?;
    if !exact_on_disk {
        let mut prefixes = vec![("ema", &ema)];
        if !opt.has_masters() {
            prefixes.push(("policy", &policy));
        }
        for (prefix, m) in prefixes {
            tch::no_grad(|| -> Result<()> {
                for (name, mut var) in m.vs.variables() {
                    let t = get(&format!("{prefix}.{name}"), &var.size())?;
                    var.f_copy_(&t)
                        .map_err(|e| Error::compute(format!("restoring '{name}'"), e))?;
                }
                Ok(())
            })?;
        }
    }
    opt.load_state(step, &mut get)?;
    ema.vs.freeze();
    Ok(Models {
        policy,
        ema,
        init,
        opt,
        step,
    })
}
impl Trainer {
    /// Writes `dest/{policy,ema}` (HF layout, model cards; f32 or the init's dtypes by
    /// `save_dtype`) and, for a resumable checkpoint, `dest/trainer/` (optimizer moments and
    /// master copies, exact f32 weights when the folders are not exact, the step): all or
    /// nothing.
    pub fn save_checkpoint(&self, dest: &Path, resumable: bool) -> Result<PathBuf> {
        let staging = Staging::new(dest, false)?;
        if let Some(lora) = &self.lora {
            for (which, ad) in [("policy", &lora.policy), ("ema", &lora.ema)] {
                let dir = staging.path().join(which);
                std::fs::create_dir_all(&dir).at(dest.join(which))?;
                self.write_adapter(&dir, &dest.join(which), lora, ad)?;
                self.write_card(&dir, which, true)?;
            }
            if resumable {
                // The adapters on disk are the exact f32 factors: Adam's moments suffice.
                self.write_trainer_state(staging.path(), self.opt.state())?;
            }
            return staging.commit();
        }
        let policy: Vec<(String, Tensor)> = self
            .opt
            .weights_f32()
            .into_iter()
            .map(|(n, t)| (n.to_string(), t))
            .collect();
        let ema = named_weights(&self.ema)?;
        for (which, named) in [("policy", &policy), ("ema", &ema)] {
            let dir = staging.path().join(which);
            self.write_model(&dir, named)?;
            self.write_card(&dir, which, false)?;
        }
        if resumable {
            let mut named = self.opt.state();
            if !self.exact_on_disk {
                // The policy's exact weights are the optimizer's master copies when it has
                // them (already in its state).
                if !self.opt.has_masters() {
                    named.extend(
                        policy
                            .iter()
                            .map(|(n, t)| (format!("policy.{n}"), t.shallow_clone())),
                    );
                }
                named.extend(
                    ema.iter()
                        .map(|(n, t)| (format!("ema.{n}"), t.shallow_clone())),
                );
            }
            self.write_trainer_state(staging.path(), named)?;
        }
        staging.commit()
    }

    /// `trainer/` of a resumable checkpoint staged at `staging`: `named` f32 tensors and the
    /// step.
    fn write_trainer_state(&self, staging: &Path, named: Vec<(String, Tensor)>) -> Result<()> {
        let dir = RlRunLayout::trainer_dir(staging);
        write_f32_tensors(&dir, &named, &[])?;
        let state = TrainerState {
            step: self.step,
            config: self.cfg.clone(),
        };
        write_json(&dir.join(TRAINER_STATE), &state)
    }

    /// The model card `dir/README.md` of the saved policy or EMA (`which`); `adapter`: a PEFT
    /// adapter of a LoRA run.
    fn write_card(&self, dir: &Path, which: &str, adapter: bool) -> Result<()> {
        let recipe = json!({"method": "warp-rl", "which": which, "step": self.step,
                                "config": self.cfg.to_json()});
        let card = ModelCard {
            title: &format!("warp-rl {which} at step {}", self.step),
            base_model: &self.cfg.model,
            method: "rl",
            recipe: &recipe,
            notes: vec![format!(
                "RL fine-tuning (policy gradient, {} baseline) with a KL penalty β = {} \
                     towards the {} anchor; EMA rate μ = {}. `{which}` is {}, saved in {}.",
                match self.cfg.baseline {
                    Baseline::Rloo => "RLOO",
                    Baseline::Grpo => "GRPO",
                    Baseline::DrGrpo => "Dr. GRPO",
                    Baseline::None => "no",
                },
                self.cfg.beta,
                if self.cfg.anchor == Anchor::Ema {
                    "EMA"
                } else {
                    "init"
                },
                self.cfg.mu,
                if which == "ema" {
                    "the exponential moving average of the policy"
                } else {
                    "the trained policy"
                },
                match (adapter, self.cfg.save_dtype) {
                    (true, _) =>
                        "a PEFT LoRA adapter of the base model (f32 factors; with \
                                      the EMA anchor, `ema` holds the EMAs of A and of B)",
                    (false, SaveDtype::F32) => "f32 (the trained weights exactly)",
                    (false, SaveDtype::Same) => "the init's dtypes",
                }
            )],
        };
        let readme = dir.join("README.md");
        let mut text = card.render();
        if adapter {
            // The card says what loads it: PEFT, not transformers alone.
            text = text.replacen("library_name: transformers", "library_name: peft", 1);
        }
        std::fs::write(&readme, text).at(&readme)
    }

    /// Writes named weights (the policy's parameters, in their save order) as an HF checkpoint
    /// folder with the init's companion files, in f32 or the init's dtypes.
    pub(super) fn write_model(&self, dir: &Path, named: &[(String, Tensor)]) -> Result<()> {
        let dtype_of = |name: &str| match self.cfg.save_dtype {
            SaveDtype::F32 => DType::F32,
            SaveDtype::Same => self.disk_dtypes.get(name).copied().unwrap_or(DType::F32),
        };
        let out: Vec<OutTensor> = named
            .iter()
            .map(|(n, t)| OutTensor {
                name: n.clone(),
                dtype: dtype_of(n),
                shape: t.size().iter().map(|&d| d as usize).collect(),
            })
            .collect();
        let mut w = CheckpointWriter::create(dir, out.clone(), &WriterOptions::default())?;
        for ((_, t), o) in named.iter().zip(&out) {
            let kind = match o.dtype {
                DType::F32 => Kind::Float,
                DType::BF16 => Kind::BFloat16,
                DType::F16 => Kind::Half,
                DType::F64 => Kind::Double,
                d => {
                    return Err(Error::tensor(
                        &self.model_dir,
                        &o.name,
                        format!("cannot save a parameter as {d}"),
                    ))
                }
            };
            let bytes = tensor_bytes(t, kind, o.dtype.size())
                .map_err(|e| Error::compute(format!("saving {}", dir.display()), e))?;
            w.write(&bytes)?;
        }
        companion::copy_companions(&self.model_dir, &mut w)?;
        w.finish()?;
        Ok(())
    }
}
