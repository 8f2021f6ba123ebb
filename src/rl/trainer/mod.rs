//! `warp-rl`: policy-gradient RL whose KL penalty points at the policy's own exponential moving
//! average — stage 1 of WARP (paper notes, "Code", lines 4–9):
//!
//! ```text
//! y ~ π_θ(·|x)                                  (n completions per prompt)
//! r_β(x, y) = r(x, y) − β · log(π_θ(y|x) / π_anchor(y|x))   [− length penalty · |y|]
//! θ ← θ + Adam(∇θ  mean A(x, y) · log π_θ(y|x))   A = r_β (REINFORCE), r_β minus the mean of
//!                                                 the other n−1 samples' r_β (RLOO), or minus
//!                                                 the group's mean, over its std (GRPO; Dr.
//!                                                 GRPO: not divided)
//! θ_ema ← (1 − μ) · θ_ema + μ · θ                after every optimizer step, in f32
//! ```
//!
//! The anchor is θ_ema (`--anchor ema`, WARP) or the frozen init (`--anchor init`, the classic
//! RLHF anchor, for the ablation). Log-probabilities are those of the distribution actually
//! sampled (logits / temperature), so the gradient is on-policy and the penalty compares like
//! with like. Every step's randomness (prompts, samples) derives from (seed, step) only, which is
//! what makes a resumed run equal an uninterrupted one.
//!
//! Scale (issue 16). A step samples `gen_batch` sequences at a time (each distinct prompt
//! prefilled once for its n samples, ended sequences leaving the batch; `super::generate`), then
//! works on micro-batches of `micro_batch` sequences: each is scored and back-propagated with
//! gradient accumulation, so the
//! activations held are those of one micro-batch; log-probabilities, KL and entropy are computed
//! at completion positions only, a chunk of positions at a time (`super::chunked`), so no
//! `[batch, length, vocab]` tensor exists. When a micro-batch holds whole prompt groups (or the
//! baseline needs none) one pass does both; otherwise a no-graph pass first gives every sample's
//! log-probability, for the RLOO baselines, and a second pass back-propagates. The loss weights
//! use the size of the whole batch, so the summed gradient is the full-batch gradient. With
//! `--dtype bf16` the policy computes in bf16 and Adam keeps f32 masters (`super::optim`); the
//! EMA is f32 (scored through a bf16 copy), the frozen init is held in the compute dtype. The
//! saved policy and EMA are the f32 masters and the f32 EMA (`--save-dtype f32`). The step reads
//! its metrics and the gradient norm back from the device in one transfer. The LM head's (and a
//! tied embedding's) bf16 gradient is folded into f32 after every chunk's backward pass, so it
//! is never summed in bf16.
//!
//! Several updates per batch (`--updates-per-batch K`, GRPO/PPO): the first update is the
//! on-policy one above and records every token's log-probability (π_old) and every sample's
//! advantage; each later update weights token t of sample i by −A_i·ρ_t/(batch size), ρ_t =
//! π_θ(y_t)/π_old(y_t), and by 0 where the clipped surrogate min(ρA, clip(ρ, 1 ± ε)A) is flat
//! (ρ > 1 + ε with A > 0, ρ < 1 − ε with A < 0): the gradient of −mean Σ_t min(ρ_t A, clip A).
//! Every update is an Adam step followed by the EMA update.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use std::collections::HashMap;

use super::chunked::{
    backward_weighted, chunk_positions, token_stats, Completions, Reference, StatsOptions, TopKl,
    Weights, DEFAULT_CHUNK_BYTES,
};
use super::data::{read_prompt_lines, Prompt};
use super::generate::{generate_batched, Batching, GenerateOptions};
use super::model::{read_tensor, CausalLm};
use super::optim::{Adam, AdamConfig};
use super::reward::{self, Reward};
use super::tokenizer::Tokenizer;
use crate::error::{Error, IoContext, Result};
use crate::io::companion::{self, ModelCard};
use crate::io::lock::{RunLock, RUN_LOCK_FILE};
use crate::io::writer::{CheckpointWriter, OutTensor, Staging, WriterOptions};
use crate::io::{write_file_atomic, Checkpoint, DType};
use crate::layout::{RlRunLayout, TRAINER_STATE};
use crate::progress::Reporter;
use crate::rng::SplitMix64;

pub use super::settings::{Anchor, Baseline, KlEstimator, RlConfig, SaveDtype, TrainDtype};

mod checkpoint;
mod lora;
mod metrics;
mod rollout;
mod step;

use checkpoint::*;
use lora::*;
pub use metrics::StepMetrics;
use rollout::*;
use step::*;
pub use step::{advantages, StepSums, UpdateSums, GRPO_STD_EPS};

/// A run in progress: the models, the optimizer, the reward and the prompts.
pub struct Trainer {
    pub cfg: RlConfig,
    pub out: PathBuf,
    /// Folder of the init model (companion files of every checkpoint come from there).
    model_dir: PathBuf,
    /// The init's on-disk dtype of each parameter (`--save-dtype same`).
    disk_dtypes: HashMap<String, DType>,
    tok: Tokenizer,
    /// Trained, in the compute dtype.
    pub policy: CausalLm,
    /// The exponential moving average, f32.
    pub ema: CausalLm,
    /// A bf16 copy of the EMA that the anchor forward uses when the policy computes in bf16.
    ema_compute: Option<CausalLm>,
    /// The frozen init in the compute dtype (anchor of `--anchor init`; reference of the
    /// KL-to-init metrics), when either needs it.
    pub init: Option<CausalLm>,
    opt: Adam,
    reward: Box<dyn Reward>,
    prompts: Vec<Prompt>,
    prompt_ids: Vec<Vec<i64>>,
    /// Whether the saved policy/ema folders hold the exact training state (f32); else the
    /// trainer state keeps f32 copies for resuming.
    exact_on_disk: bool,
    /// Positions per LM-head chunk.
    chunk: i64,
    /// Optimizer slots of the LM head's weight (the embedding when tied), folded into f32 after
    /// every chunk's backward pass when the policy is not f32; empty when it is.
    head_slots: Vec<usize>,
    /// What the first update of the current batch recorded for the later ones.
    rollout: Option<Rollout>,
    /// The adapters of a LoRA run (`--lora R`); the policy and EMA models use them.
    lora: Option<LoraRun>,
    layout: RlRunLayout,
    pub step: u64,
    /// The run folder's lock, held as long as the trainer lives.
    lock: Option<RunLock>,
}

/// The complete resumable checkpoints of a run folder, by step.
pub fn checkpoints(out: &Path) -> Result<Vec<(u64, PathBuf)>> {
    RlRunLayout::new(out).checkpoints()
}

impl Trainer {
    /// Starts a new run in `out` (which must not exist, or be empty).
    pub fn new(cfg: RlConfig, out: &Path, reporter: &dyn Reporter) -> Result<Trainer> {
        cfg.check()?;
        // The lock first: a second process on this folder is told who holds it.
        let lock = RunLock::acquire(out)?;
        match Self::start(cfg, out, reporter) {
            Ok(mut t) => {
                t.lock = Some(lock);
                Ok(t)
            }
            Err(e) => {
                lock.abandon();
                Err(e)
            }
        }
    }

    fn start(cfg: RlConfig, out: &Path, reporter: &dyn Reporter) -> Result<Trainer> {
        let used = std::fs::read_dir(out)
            .at(out)?
            .flatten()
            .any(|e| e.file_name().to_str() != Some(RUN_LOCK_FILE));
        if used {
            return Err(Error::setting(
                "output",
                format!("run folder {} exists and is not empty", out.display()),
            ));
        }
        // `auto` settings are resolved once, here, and recorded: a resumed run keeps them.
        let plan = super::memory::for_run(&cfg, reporter)?;
        let cfg = RlConfig {
            dtype: plan.dtype,
            micro_batch: plan.micro_batch,
            gen_batch: plan.gen_batch,
            ..cfg
        };
        check_memory(&cfg, &plan)?;
        let t = Self::build(cfg, out, None, reporter)?;
        std::fs::create_dir_all(out).at(out)?;
        let record = RunRecord {
            warp_version: env!("CARGO_PKG_VERSION").into(),
            config: t.cfg.clone(),
        };
        write_json(&t.layout.run_json(), &record)?;
        let metrics = t.layout.metrics();
        std::fs::File::create(&metrics).at(&metrics)?;
        Ok(t)
    }

    /// The settings recorded in a run folder's `run.json`.
    pub fn recorded_config(out: &Path) -> Result<RlConfig> {
        Ok(read_json::<RunRecord>(&RlRunLayout::new(out).run_json())?.config)
    }

    /// Continues the run in `out` from its last complete checkpoint (or from the start if it
    /// has none), with its recorded settings; `steps` may extend it.
    pub fn resume(out: &Path, steps: Option<u64>, reporter: &dyn Reporter) -> Result<Trainer> {
        let layout = RlRunLayout::new(out);
        let mut cfg = Self::recorded_config(out)?;
        // No other process works here from now on (the lock is held until this trainer drops).
        let lock = RunLock::acquire(out)?;
        if let Some(s) = steps {
            cfg.steps = s;
        }
        cfg.check()?;
        // A run recorded before these settings existed: resolve them as a new run would.
        if cfg.dtype == TrainDtype::Auto || cfg.micro_batch == 0 || cfg.gen_batch == 0 {
            let plan = super::memory::for_run(&cfg, reporter)?;
            cfg.dtype = plan.dtype;
            cfg.micro_batch = plan.micro_batch;
            cfg.gen_batch = plan.gen_batch;
        }
        // Staging folders of checkpoints a killed run was writing: never complete, never used;
        // removed by the crate's one rule (only those whose owner is dead).
        for p in crate::io::writer::reclaim_stale(out) {
            reporter.message(&crate::io::writer::reclaimed_message(&p));
        }
        let last = layout.checkpoints()?.pop();
        let mut t = Self::build(cfg, out, last.as_ref().map(|(_, p)| p.as_path()), reporter)?;
        // Metrics of steps after the checkpoint are redone.
        let mpath = layout.metrics();
        let kept: String = std::fs::read_to_string(&mpath)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                serde_json::from_str::<Value>(l)
                    .ok()
                    .and_then(|v| v.get("step").and_then(Value::as_u64))
                    .is_some_and(|s| s <= t.step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        write_file_atomic(&mpath, kept.as_bytes())?;
        t.lock = Some(lock);
        reporter.message(&format!(
            "resuming {} at step {} of {}",
            out.display(),
            t.step,
            t.cfg.steps
        ));
        Ok(t)
    }

    // long fn: the trainer's parts (model views, adapters, optimizer, EMA, plan) in the order
    // each needs the previous; LoRA's branch sits beside the full-weight one it mirrors.
    fn build(
        cfg: RlConfig,
        out: &Path,
        from: Option<&Path>,
        reporter: &dyn Reporter,
    ) -> Result<Trainer> {
        let device = super::tch_device(cfg.device)?;
        if device == Device::Cpu {
            reuse_freed_tensors();
        } else if let Err(e) = super::cuda::allow_tf32() {
            // Only speed depends on it: say so and go on in full f32.
            reporter.message(&format!(
                "warning: TF32 not enabled ({e}); f32 products run in f32"
            ));
        }
        let spec = crate::builtin::resolve_spec(&cfg.model)?;
        let ck = crate::hub::open_checkpoint(&spec, &crate::hub::HubOptions::from_env(), reporter)?;
        let model_dir = ck.dir.clone();
        let config = super::ModelConfig::from_dir(&model_dir)?;
        let mut tok = Tokenizer::from_dir(&model_dir)?;
        tok.set_chat_template(&cfg.chat_template)?;
        if tok.vocab_size() > config.vocab_size {
            return Err(Error::format(
                model_dir.join("tokenizer.json"),
                format!(
                    "the tokenizer has {} tokens but config.json vocab_size is {}",
                    tok.vocab_size(),
                    config.vocab_size
                ),
            ));
        }
        let exact_on_disk =
            cfg.save_dtype == SaveDtype::F32 || ck.tensors().iter().all(|t| t.dtype == DType::F32);
        let disk_dtypes = ck
            .tensors()
            .iter()
            .map(|t| (t.name.clone(), t.dtype))
            .collect();
        let chunk = chunk_positions(config.vocab_size, DEFAULT_CHUNK_BYTES);
        let (m, lora) = match (from, cfg.lora.is_some()) {
            (None, false) => (fresh_models(&cfg, &ck, config.clone(), device)?, None),
            (Some(dir), false) => (
                restore_models(&cfg, &ck, config.clone(), dir, exact_on_disk, device)?,
                None,
            ),
            (None, true) => {
                let (m, l) = fresh_lora_models(&cfg, &ck, config.clone(), device)?;
                (m, Some(l))
            }
            (Some(dir), true) => {
                let (m, l) = restore_lora_models(&cfg, &ck, config.clone(), dir, device)?;
                (m, Some(l))
            }
        };
        // A LoRA run's EMA adapters are f32 already, on the base in the compute dtype.
        let ema_compute =
            if train_kind(&cfg) != Kind::Float && cfg.anchor == Anchor::Ema && lora.is_none() {
                let mut e = CausalLm::from_checkpoint(&ck, config, device, train_kind(&cfg))?;
                e.vs.freeze();
                copy_weights(&m.ema, &e)?;
                Some(e)
            } else {
                None
            };
        let (prompts, prompt_ids) = read_training_prompts(&cfg, &tok, &m.policy)?;
        let head_slots = if m.opt.has_masters() {
            let w = m.policy.lm_head_weight()?;
            vec![m
                .opt
                .slot_of(w)
                .ok_or_else(|| Error::Internal("the LM head's weight is not optimised".into()))?]
        } else {
            Vec::new()
        };
        let reward = reward::from_spec_opts(
            &cfg.reward,
            &reward::RewardOptions {
                timeout: crate::limits::seconds("reward_timeout", cfg.reward_timeout, true)?,
                device,
                batch_size: cfg.reward_batch,
                kind: if device.is_cuda() {
                    Kind::BFloat16
                } else {
                    Kind::Float
                },
            },
        )?;
        Ok(Trainer {
            prompts,
            prompt_ids,
            out: out.to_path_buf(),
            layout: RlRunLayout::new(out),
            model_dir,
            disk_dtypes,
            tok,
            policy: m.policy,
            ema: m.ema,
            ema_compute,
            init: m.init,
            opt: m.opt,
            reward,
            exact_on_disk,
            chunk,
            head_slots,
            rollout: None,
            lora,
            step: m.step,
            cfg,
            lock: None,
        })
    }

    /// Runs the remaining steps, checkpointing every `save_every` and at the end; writes
    /// `final/{policy,ema}`. Returns the path of `final`.
    pub fn run(&mut self, reporter: &dyn Reporter) -> Result<PathBuf> {
        let mpath = self.layout.metrics();
        let mut metrics = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&mpath)
            .at(&mpath)?;
        reporter.start_steps("rl", self.cfg.steps);
        reporter.advance(self.step);
        while self.step < self.cfg.steps {
            crate::interrupt::check()?;
            let save =
                (self.step + 1) % self.cfg.save_every == 0 || self.step + 1 == self.cfg.steps;
            let m = self.train_step(save)?;
            writeln!(metrics, "{}", m.to_json()).at(&mpath)?;
            metrics.flush().at(&mpath)?;
            reporter.advance(1);
            let kl_init = m
                .kl_init
                .map_or(String::new(), |k| format!("  KL(init) {k:.3}"));
            reporter.status(&format!(
                "reward {:.3}  KL(anchor) {:.3}{kl_init}",
                m.reward_mean, m.kl_anchor
            ));
            if save {
                self.save_checkpoint(&self.layout.step(self.step), true)?;
            }
        }
        reporter.finish();
        let fin = self.layout.final_dir();
        if !fin.exists() {
            self.save_checkpoint(&fin, false)?;
        }
        Ok(fin)
    }
}

/// The parameters of `m` by name, in its save order.
fn named_weights(m: &CausalLm) -> Result<Vec<(String, Tensor)>> {
    let vars = m.vs.variables();
    m.parameter_names()
        .map(|n| {
            vars.get(n)
                .map(|t| (n.to_string(), t.shallow_clone()))
                .ok_or_else(|| Error::Internal(format!("parameter '{n}' is not in the var store")))
        })
        .collect()
}

/// Copies the weights of `from` into `to` (same names; cast to `to`'s dtype).
fn copy_weights(from: &CausalLm, to: &CausalLm) -> Result<()> {
    let src = from.vs.variables();
    tch::no_grad(|| {
        for (name, mut dst) in to.vs.variables() {
            let s = src
                .get(&name)
                .ok_or_else(|| Error::Internal(format!("no parameter '{name}' to copy")))?;
            dst.f_copy_(s)
                .map_err(|e| Error::compute(format!("copying '{name}'"), e))?;
        }
        Ok(())
    })
}

/// Refuses, before any weights are loaded, a run whose memory plan exceeds `max_memory`.
fn check_memory(cfg: &RlConfig, plan: &super::memory::RunPlan) -> Result<()> {
    let Some(limit) = &cfg.max_memory else {
        return Ok(());
    };
    let limit =
        crate::io::writer::parse_size(limit).map_err(|e| Error::setting("max_memory", e))?;
    // Its error is the setting `max_memory`'s.
    super::memory::check_fits(&plan.input, limit).map(|_| ())
}

/// Makes glibc's malloc serve every allocation of 1 MiB or more (libtorch's CPU tensors) with
/// its own mapping, returned to the system when the tensor is freed. By default the threshold
/// adapts upwards (to 32 MiB) as large blocks are freed, after which such tensors come from the
/// heap and their freed space stays in the process. Used where memory matters more than speed
/// and the process allocates little per batch: `warp eval`, whose plan is a bound.
pub(crate) fn release_freed_tensors() {
    set_mmap_threshold(1 << 20);
}

/// The trainer's setting: tensors under 32 MiB (glibc's largest threshold) come from the heap,
/// so that every step reuses the pages its activations, temporaries and sampling logits freed
/// the step before, instead of mapping, faulting in and zeroing fresh ones; larger tensors (the
/// LM-head chunks, vocabulary-sized weights) keep their own mappings. Fixing the threshold stops
/// it adapting. Measured on the 122M benchmark (docs/PERFORMANCE.md): with a 1 MiB threshold a
/// third of the step's CPU time went to page faults; at 32 MiB the training part of a step ran
/// 1.4× faster, for about 0.6 GiB more peak RSS (freed heap space kept for reuse).
pub(crate) fn reuse_freed_tensors() {
    set_mmap_threshold(32 << 20);
}

fn set_mmap_threshold(bytes: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; changing the threshold is valid at any
    // time (blocks already allocated keep where they came from).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, bytes);
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = bytes;
}

fn train_kind(cfg: &RlConfig) -> Kind {
    match cfg.dtype {
        TrainDtype::Bf16 => Kind::BFloat16,
        TrainDtype::F32 | TrainDtype::Auto => Kind::Float,
    }
}

/// Whether the run holds the frozen init: the anchor of `--anchor init`, or the reference of the
/// KL-to-init metrics.
fn needs_init(cfg: &RlConfig) -> bool {
    cfg.anchor == Anchor::Init || cfg.metrics_every > 0
}

/// The prompt set of the run (plain and conversation lines) and its token ids; a line that
/// cannot be encoded (e.g. a conversation without a chat template) or is too long for the model
/// is an error naming it.
fn read_training_prompts(
    cfg: &RlConfig,
    tok: &Tokenizer,
    policy: &CausalLm,
) -> Result<(Vec<Prompt>, Vec<Vec<i64>>)> {
    let path = crate::builtin::resolve_path(&cfg.prompts)?;
    let lines = read_prompt_lines(&path)?;
    let prompt_ids = tok.encode_prompt_lines(&cfg.prompts, &lines)?;
    for (l, ids) in lines.iter().zip(&prompt_ids) {
        if ids.len() + cfg.max_new_tokens > policy.config.max_position_embeddings {
            return Err(Error::format(
                &cfg.prompts,
                format!(
                    "line {}: prompt of {} tokens + max_new_tokens {} exceeds the model's \
                     max_position_embeddings {}",
                    l.line,
                    ids.len(),
                    cfg.max_new_tokens,
                    policy.config.max_position_embeddings
                ),
            ));
        }
    }
    Ok((lines.into_iter().map(|l| l.prompt).collect(), prompt_ids))
}
