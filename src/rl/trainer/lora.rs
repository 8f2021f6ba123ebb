//! LoRA runs (`--lora R`, issue 25): the frozen base held once in the compute dtype, the policy
//! and the EMA as that base with their own adapters (f32 factors), Adam over the policy's
//! factors, checkpoints as PEFT adapters.
//!
//! The EMA anchor here is the base with the EMA of A and the EMA of B: its delta
//! s·EMA(B)·EMA(A) is not the EMA of the policy's deltas s·B·A (docs/RL.md measures the gap).
//! The frozen init, when a run needs it, is the base itself (no adapter).

#[allow(unused_imports)]
use super::*;
use crate::io::lora_writer::{AdapterLayout, AdapterWriter, ModuleShape};
use crate::rl::model::{key_a, key_b, lora_targets, AdapterModule, Adapters};

/// Adapted modules: path and [out, in].
type Targets = Vec<(String, [i64; 2])>;

/// The adapters of a LoRA run, besides the models that use them.
pub(super) struct LoraRun {
    pub(super) rank: usize,
    /// The adapted modules (path, [out, in]).
    pub(super) targets: Targets,
    /// The policy's factors (Adam's parameters).
    pub(super) policy: Adapters,
    /// Their exponential moving average.
    pub(super) ema: Adapters,
}

/// The rank and the target modules of `cfg`'s LoRA in a model of `config`.
fn lora_plan(cfg: &RlConfig, config: &crate::rl::ModelConfig) -> Result<(usize, Targets)> {
    let rank = cfg
        .lora
        .ok_or_else(|| Error::Internal("a LoRA run without a rank".into()))?;
    Ok((rank, lora_targets(config, &cfg.lora_target_names())?))
}

/// The models of a LoRA run from `adapters` (policy, EMA) on the base `base`.
fn lora_models(
    cfg: &RlConfig,
    base: CausalLm,
    rank: usize,
    targets: Targets,
    policy_ad: Adapters,
    ema_ad: Adapters,
) -> Result<(Models, LoraRun)> {
    let policy = base.with_adapters(Some(&policy_ad))?;
    let ema = base.with_adapters(Some(&ema_ad))?;
    let opt = Adam::from_params(policy_ad.named(), adam_config(cfg))?;
    let init = needs_init(cfg).then_some(base);
    Ok((
        Models {
            policy,
            ema,
            init,
            opt,
            step: 0,
        },
        LoraRun {
            rank,
            targets,
            policy: policy_ad,
            ema: ema_ad,
        },
    ))
}

fn load_base(
    cfg: &RlConfig,
    ck: &Checkpoint,
    config: crate::rl::ModelConfig,
    device: Device,
) -> Result<CausalLm> {
    let mut base = CausalLm::from_checkpoint(ck, config, device, train_kind(cfg))?;
    base.vs.freeze();
    Ok(base)
}

/// A new LoRA run: B = 0 (the policy and the EMA start equal to the base), A random.
pub(super) fn fresh_lora_models(
    cfg: &RlConfig,
    ck: &Checkpoint,
    config: crate::rl::ModelConfig,
    device: Device,
) -> Result<(Models, LoraRun)> {
    let (rank, targets) = lora_plan(cfg, &config)?;
    let scale = cfg
        .lora_scale()
        .ok_or_else(|| Error::Internal("a LoRA run without a scale".into()))?;
    let base = load_base(cfg, ck, config, device)?;
    let policy_ad = Adapters::init(&targets, rank as i64, scale, cfg.seed, device)?;
    let ema_ad = policy_ad.frozen_copy()?;
    lora_models(cfg, base, rank, targets, policy_ad, ema_ad)
}

/// The factors of the adapter folder `dir` (f32, exact), checked against the run's targets.
fn read_adapters(
    dir: &Path,
    targets: &[(String, [i64; 2])],
    rank: i64,
    scale: f64,
    device: Device,
    trainable: bool,
) -> Result<Adapters> {
    let file = dir.join(crate::io::lora::ADAPTER_WEIGHTS);
    let saved: HashMap<String, Tensor> = Tensor::read_safetensors(&file)
        .map_err(|e| Error::format(&file, format!("cannot read the adapter: {e}")))?
        .into_iter()
        .collect();
    let get = |key: &str, shape: [i64; 2]| -> Result<Tensor> {
        let t = saved
            .get(key)
            .ok_or_else(|| Error::tensor(&file, key, "missing from the adapter"))?;
        if t.size() != shape {
            return Err(Error::tensor(
                &file,
                key,
                format!("shape {:?}, the run's LoRA has {shape:?}", t.size()),
            ));
        }
        t.f_to_kind(Kind::Float)
            .and_then(|t| t.f_to_device(device))
            .and_then(|t| t.f_detach_copy())
            .map(|t| t.set_requires_grad(trainable))
            .map_err(|e| Error::tensor(&file, key, format!("libtorch: {e}")))
    };
    let modules = targets
        .iter()
        .map(|(m, [out, inp])| {
            Ok(AdapterModule {
                module: m.clone(),
                a: get(&key_a(m), [rank, *inp])?,
                b: get(&key_b(m), [*out, rank])?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Adapters { scale, modules })
}

/// The LoRA run of checkpoint `dir`: its adapters (policy, EMA) on the base, and Adam's state.
pub(super) fn restore_lora_models(
    cfg: &RlConfig,
    ck: &Checkpoint,
    config: crate::rl::ModelConfig,
    dir: &Path,
    device: Device,
) -> Result<(Models, LoraRun)> {
    let (rank, targets) = lora_plan(cfg, &config)?;
    let scale = cfg
        .lora_scale()
        .ok_or_else(|| Error::Internal("a LoRA run without a scale".into()))?;
    let r = rank as i64;
    let policy_ad = read_adapters(&dir.join("policy"), &targets, r, scale, device, true)?;
    let ema_ad = read_adapters(&dir.join("ema"), &targets, r, scale, device, false)?;
    let base = load_base(cfg, ck, config, device)?;
    let (mut m, lora) = lora_models(cfg, base, rank, targets, policy_ad, ema_ad)?;
    let state_dir = RlRunLayout::trainer_dir(dir);
    let step = read_json::<TrainerState>(&state_dir.join(TRAINER_STATE))?.step;
    let state = Checkpoint::open(&state_dir)?;
    m.opt.load_state(step, &mut |name, shape| {
        let t = read_tensor(&state, name, Kind::Float, device)?;
        if t.size() != shape {
            return Err(Error::tensor(
                &state_dir,
                name,
                format!("shape {:?}, the adapter has {shape:?}", t.size()),
            ));
        }
        Ok(t)
    })?;
    m.step = step;
    Ok((m, lora))
}

impl Trainer {
    /// A LoRA run's adapters: (policy, EMA). Their tensors are the ones the models use, so an
    /// in-place change (a test's perturbation) changes the models.
    pub fn adapters(&self) -> Option<(&Adapters, &Adapters)> {
        self.lora.as_ref().map(|l| (&l.policy, &l.ema))
    }

    /// The base model the adapters refer to: the hub id as given, or the local folder's
    /// absolute path (PEFT's `base_model_name_or_path`).
    fn adapter_base(&self) -> String {
        match crate::builtin::resolve_spec(&self.cfg.model) {
            Ok(local) if Path::new(&local).is_dir() => std::fs::canonicalize(&local)
                .unwrap_or_else(|_| PathBuf::from(&local))
                .display()
                .to_string(),
            _ => self.cfg.model.clone(),
        }
    }

    /// Writes `adapters` as a PEFT adapter folder `dir` (which must exist; `shown` is where it
    /// will be once committed): f32 factors, this run's r, α and rsLoRA.
    pub(super) fn write_adapter(
        &self,
        dir: &Path,
        shown: &Path,
        lora: &LoraRun,
        adapters: &Adapters,
    ) -> Result<()> {
        let r = lora.rank;
        let layout = AdapterLayout {
            r,
            fan_in_fan_out: false,
            task_type: Some("CAUSAL_LM".into()),
            base_model: self.adapter_base(),
            modules: lora
                .targets
                .iter()
                .map(|(m, [out, inp])| ModuleShape {
                    weight: format!("{m}.weight"),
                    embedding: false,
                    a_shape: [r, *inp as usize],
                    b_shape: [*out as usize, r],
                })
                .collect(),
            dtype: DType::F32,
            metadata: [
                (
                    "warp_version".to_string(),
                    env!("CARGO_PKG_VERSION").to_string(),
                ),
                ("warp_step".to_string(), self.step.to_string()),
            ]
            .into_iter()
            .collect(),
            scaling: Some((self.cfg.lora_alpha.unwrap_or(r as f64), self.cfg.rslora)),
        };
        let mut w = AdapterWriter::create(dir, shown, &layout)?;
        for m in &adapters.modules {
            let host = |t: &Tensor| -> std::result::Result<Vec<f32>, tch::TchError> {
                Vec::<f32>::try_from(
                    t.f_detach()?
                        .f_to_device(Device::Cpu)?
                        .f_to_kind(Kind::Float)?
                        .f_contiguous()?
                        .f_view([-1])?,
                )
            };
            let (a, b) = (|| Ok((host(&m.a)?, host(&m.b)?)))()
                .map_err(|e: tch::TchError| Error::compute(format!("saving {}", m.module), e))?;
            w.write_module(&a, &b)?;
        }
        w.finish()
    }
}
