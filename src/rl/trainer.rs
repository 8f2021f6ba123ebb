//! `warp-rl`: policy-gradient RL whose KL penalty points at the policy's own exponential moving
//! average — stage 1 of WARP (paper notes, "Code", lines 4–9):
//!
//! ```text
//! y ~ π_θ(·|x)                                  (n completions per prompt)
//! r_β(x, y) = r(x, y) − β · log(π_θ(y|x) / π_anchor(y|x))   [− length penalty · |y|]
//! θ ← θ + Adam(∇θ  mean A(x, y) · log π_θ(y|x))   A = r_β (REINFORCE) or r_β minus the mean of
//!                                                 the other n−1 samples' r_β (RLOO)
//! θ_ema ← (1 − μ) · θ_ema + μ · θ                after every optimizer step, in f32
//! ```
//!
//! The anchor is θ_ema (`--anchor ema`, WARP) or the frozen init (`--anchor init`, the classic
//! RLHF anchor, for the ablation). Log-probabilities are those of the distribution actually
//! sampled (logits / temperature), so the gradient is on-policy and the penalty compares like
//! with like. Every step's randomness (prompts, samples) derives from (seed, step) only, which is
//! what makes a resumed run equal an uninterrupted one.
//!
//! Scale (issue 16). A step works on micro-batches of `micro_batch` sequences: each is generated
//! with its own KV cache, then scored and back-propagated with gradient accumulation, so the
//! activations held are those of one micro-batch; log-probabilities, KL and entropy are computed
//! at completion positions only, a chunk of positions at a time (`super::chunked`), so no
//! `[batch, length, vocab]` tensor exists. When a micro-batch holds whole prompt groups (or the
//! baseline needs none) one pass does both; otherwise a no-graph pass first gives every sample's
//! log-probability, for the RLOO baselines, and a second pass back-propagates. The loss weights
//! use the size of the whole batch, so the summed gradient is the full-batch gradient. With
//! `--dtype bf16` the policy computes in bf16 and Adam keeps f32 masters (`super::optim`); the
//! EMA is f32 (scored through a bf16 copy), the frozen init is held in the compute dtype. The
//! saved policy and EMA are the f32 masters and the f32 EMA (`--save-dtype f32`). The step reads
//! its metrics and the gradient norm back from the device in one transfer.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use std::collections::HashMap;

use super::chunked::{
    backward_logprobs, chunk_positions, token_stats, Completions, Reference, StatsOptions,
    DEFAULT_CHUNK_BYTES,
};
use super::data::{read_prompt_lines, Prompt};
use super::generate::{generate, GenerateOptions};
use super::model::{read_tensor, LlamaModel};
use super::optim::{Adam, AdamConfig};
use super::reward::{self, Reward};
use super::rng::SplitMix64;
use super::tokenizer::Tokenizer;
use crate::error::{Error, IoContext, Result};
use crate::io::companion::{self, ModelCard};
use crate::io::lock::{RunLock, RUN_LOCK_FILE};
use crate::io::writer::{CheckpointWriter, OutTensor, Staging, WriterOptions};
use crate::io::{write_file_atomic, Checkpoint, DType};
use crate::pipeline::layout::{RlRunLayout, TRAINER_STATE};
use crate::progress::Reporter;

pub use super::settings::{Anchor, Baseline, RlConfig, SaveDtype, TrainDtype};

/// `run.json` of a run folder: what made it.
#[derive(Debug, Serialize, Deserialize)]
struct RunRecord {
    warp_version: String,
    config: RlConfig,
}

/// `trainer/state.json` of a checkpoint: the step it was taken after, and the run's settings.
#[derive(Debug, Serialize, Deserialize)]
struct TrainerState {
    step: u64,
    config: RlConfig,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).at(path)?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, e.to_string()))
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::Internal(e.to_string()))?;
    write_file_atomic(path, (text + "\n").as_bytes())
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone)]
pub struct StepMetrics {
    pub step: u64,
    pub reward_mean: f64,
    pub reward_std: f64,
    /// Mean of the sequence-level KL(π ‖ anchor), estimated with per-token full-vocabulary KL
    /// along the samples (at the sampling temperature).
    pub kl_anchor: f64,
    /// The same towards the init: on the steps `metrics_every` selects (and every step with
    /// `--anchor init`, where it is the anchor's).
    pub kl_init: Option<f64>,
    /// Mean per-token entropy of the sampling distribution.
    pub entropy: f64,
    pub completion_len: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub loss: f64,
    pub samples_per_s: f64,
    /// Where the step's wall time went: sampling (with its KV caches), the reward, and the rest
    /// (scoring, backward, optimizer, EMA). On a GPU, work is timed when it is waited for.
    pub generate_s: f64,
    pub reward_s: f64,
    pub train_s: f64,
    /// Sampled tokens (EOS included) per second of sampling.
    pub gen_tokens_per_s: f64,
    /// At checkpoint steps: the EMA's own samples' reward and KL(ema ‖ init) (when the init is
    /// held).
    pub ema: Option<(f64, Option<f64>)>,
}

impl StepMetrics {
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "step": self.step, "reward_mean": self.reward_mean, "reward_std": self.reward_std,
            "kl_anchor": self.kl_anchor, "kl_init": self.kl_init, "entropy": self.entropy,
            "completion_len": self.completion_len, "lr": self.lr, "grad_norm": self.grad_norm,
            "loss": self.loss, "samples_per_s": self.samples_per_s,
            "generate_s": self.generate_s, "reward_s": self.reward_s, "train_s": self.train_s,
            "gen_tokens_per_s": self.gen_tokens_per_s,
        });
        if let Some((r, kl)) = self.ema {
            v["ema_reward_mean"] = json!(r);
            v["ema_kl_init"] = json!(kl);
        }
        v
    }
}

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
    pub policy: LlamaModel,
    /// The exponential moving average, f32.
    pub ema: LlamaModel,
    /// A bf16 copy of the EMA that the anchor forward uses when the policy computes in bf16.
    ema_compute: Option<LlamaModel>,
    /// The frozen init in the compute dtype (anchor of `--anchor init`; reference of the
    /// KL-to-init metrics), when either needs it.
    pub init: Option<LlamaModel>,
    opt: Adam,
    reward: Box<dyn Reward>,
    prompts: Vec<Prompt>,
    prompt_ids: Vec<Vec<i64>>,
    /// Whether the saved policy/ema folders hold the exact training state (f32); else the
    /// trainer state keeps f32 copies for resuming.
    exact_on_disk: bool,
    /// Positions per LM-head chunk.
    chunk: i64,
    layout: RlRunLayout,
    pub step: u64,
    /// The run folder's lock, held as long as the trainer lives.
    lock: Option<RunLock>,
}

/// The complete resumable checkpoints of a run folder, by step.
pub fn checkpoints(out: &Path) -> Result<Vec<(u64, PathBuf)>> {
    RlRunLayout::new(out).checkpoints()
}

/// The models of a run and the optimizer, fresh or restored from a checkpoint.
struct Models {
    policy: LlamaModel,
    ema: LlamaModel,
    init: Option<LlamaModel>,
    opt: Adam,
    step: u64,
}

/// The LM head of `m` (with the final logit soft-capping of the families that have one) as a
/// function of hidden states: f32 logits.
fn head_of(m: &LlamaModel) -> Result<impl Fn(&Tensor) -> Result<Tensor> + '_> {
    Ok(move |h: &Tensor| m.logits_from_hidden(h))
}

/// What scoring one micro-batch gave (device tensors, per sequence unless said otherwise).
struct Scored {
    comp: Completions,
    /// The policy's hidden states at the completion positions, with the decoder's graph when
    /// scored for the backward pass.
    hidden: Option<Tensor>,
    seq_logprob: Tensor,
    anchor_logprob: Tensor,
    kl_anchor: Tensor,
    kl_init: Option<Tensor>,
    /// Summed over the micro-batch's tokens.
    entropy_sum: Tensor,
}

/// Sums of a step's per-sequence metrics over its micro-batches (device tensors).
#[derive(Default)]
struct Sums {
    kl_anchor: Vec<Tensor>,
    kl_init: Vec<Tensor>,
    entropy: Vec<Tensor>,
    objective: Vec<Tensor>,
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
            return Err(Error::Usage(format!(
                "run folder {} exists and is not empty",
                out.display()
            )));
        }
        // `auto` settings are resolved once, here, and recorded: a resumed run keeps them.
        let plan = super::memory::for_run(&cfg, reporter)?;
        let cfg = RlConfig {
            dtype: plan.dtype,
            micro_batch: plan.micro_batch,
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
        if cfg.dtype == TrainDtype::Auto || cfg.micro_batch == 0 {
            let plan = super::memory::for_run(&cfg, reporter)?;
            cfg.dtype = plan.dtype;
            cfg.micro_batch = plan.micro_batch;
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

    fn build(
        cfg: RlConfig,
        out: &Path,
        from: Option<&Path>,
        reporter: &dyn Reporter,
    ) -> Result<Trainer> {
        let device = super::tch_device(cfg.device)?;
        if device == Device::Cpu {
            release_freed_tensors();
        } else if let Err(e) = super::cuda::allow_tf32() {
            // Only speed depends on it: say so and go on in full f32.
            reporter.message(&format!(
                "warning: TF32 not enabled ({e}); f32 products run in f32"
            ));
        }
        let spec = crate::builtin::resolve_spec(&cfg.model)?;
        let ck = crate::hub::open_checkpoint(&spec, &crate::hub::HubOptions::from_env(), reporter)?;
        let model_dir = ck.dir.clone();
        let config = super::LlamaConfig::from_dir(&model_dir)?;
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
        let m = match from {
            None => fresh_models(&cfg, &ck, config.clone(), device)?,
            Some(dir) => restore_models(&cfg, &ck, config.clone(), dir, exact_on_disk, device)?,
        };
        let ema_compute = if train_kind(&cfg) != Kind::Float && cfg.anchor == Anchor::Ema {
            let mut e = LlamaModel::from_checkpoint(&ck, config, device, train_kind(&cfg))?;
            e.vs.freeze();
            copy_weights(&m.ema, &e)?;
            Some(e)
        } else {
            None
        };
        let (prompts, prompt_ids) = read_training_prompts(&cfg, &tok, &m.policy)?;
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
            crate::cancel::check()?;
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

    /// The model the anchor log-probabilities come from.
    fn anchor_model(&self) -> Result<&LlamaModel> {
        match self.cfg.anchor {
            Anchor::Ema => Ok(self.ema_compute.as_ref().unwrap_or(&self.ema)),
            Anchor::Init => self
                .init
                .as_ref()
                .ok_or_else(|| Error::Internal("the init anchor is not loaded".into())),
        }
    }

    /// Whether step `step` scores the init for the KL-to-init metric.
    fn init_metrics_at(&self, step: u64) -> bool {
        self.cfg.anchor == Anchor::Init
            || (self.cfg.metrics_every > 0 && step % self.cfg.metrics_every == 0)
    }

    /// Completions of `prompts`, `micro_batch` sequences per generation call, each call drawing
    /// from its own stream (derived from `seed` and the call's index).
    fn sample(&self, model: &LlamaModel, prompts: &[Vec<i64>], seed: u64) -> Result<Vec<Vec<i64>>> {
        let mut out = Vec::with_capacity(prompts.len());
        let k = self.cfg.micro_batch.max(1);
        for (i, chunk) in prompts.chunks(k).enumerate() {
            let o = GenerateOptions {
                max_new_tokens: self.cfg.max_new_tokens,
                temperature: self.cfg.temperature,
                top_k: 0,
                top_p: 1.0,
                seed: if i == 0 {
                    seed
                } else {
                    SplitMix64::stream(seed, i as u64).next_u64()
                },
                eos_ids: self.tok.eos_ids.clone(),
                pad_id: self.tok.pad_id,
                record_logits: false,
            };
            out.extend(generate(model, chunk, &o)?.completions);
        }
        Ok(out)
    }

    /// Scores the (prompt, completion) pairs of one micro-batch: the policy's log-probabilities
    /// of the sampled tokens (keeping the decoder's graph when `grad`), the anchor's, the KL to
    /// the anchor (and to the init when `init_metrics`) and the entropy.
    fn score(
        &self,
        pairs: &[(Vec<i64>, Vec<i64>)],
        grad: bool,
        init_metrics: bool,
    ) -> Result<Scored> {
        let c = &self.policy.config;
        let comp = Completions::new(
            pairs,
            self.tok.pad_id,
            c.vocab_size,
            c.max_position_embeddings,
            self.policy.device,
        )?;
        let hidden_of = |m: &LlamaModel| -> Result<Tensor> {
            let h = m.hidden_states(&comp.ids, &comp.attention_mask, &comp.position_ids)?;
            comp.gather(&h)
        };
        let hidden = if grad {
            tch::with_grad(|| hidden_of(&self.policy))?
        } else {
            tch::no_grad(|| hidden_of(&self.policy))?
        };
        let (seq_logprob, anchor_logprob, kl_anchor, kl_init, entropy_sum) = tch::no_grad(
            || -> Result<(Tensor, Tensor, Tensor, Option<Tensor>, Tensor)> {
                let anchor = self.anchor_model()?;
                let ha = hidden_of(anchor)?;
                let init = match (&self.init, init_metrics, self.cfg.anchor) {
                    (Some(m), true, Anchor::Ema) => Some((m, hidden_of(m)?)),
                    _ => None,
                };
                let (hp, hd) = (head_of(&self.policy)?, hidden.detach());
                let ah = head_of(anchor)?;
                let ih = match &init {
                    Some((m, _)) => Some(head_of(m)?),
                    None => None,
                };
                let mut refs = vec![Reference {
                    hidden: &ha,
                    head: &ah,
                }];
                if let (Some((_, hi)), Some(ih)) = (&init, &ih) {
                    refs.push(Reference {
                        hidden: hi,
                        head: ih,
                    });
                }
                let s = token_stats(
                    &hd,
                    &hp,
                    &comp.targets,
                    &refs,
                    &StatsOptions {
                        temperature: self.cfg.temperature,
                        chunk: self.chunk,
                        entropy: true,
                    },
                )?;
                let seq = |t: &Tensor| comp.per_sequence(t);
                let kl_anchor = seq(&s.references[0].kl)?;
                let kl_init = match (s.references.get(1), self.cfg.anchor) {
                    (Some(r), _) => Some(seq(&r.kl)?),
                    (None, Anchor::Init) => Some(kl_anchor.shallow_clone()),
                    (None, Anchor::Ema) => None,
                };
                let entropy_sum = s
                    .entropy
                    .as_ref()
                    .ok_or_else(|| Error::Internal("no entropy".into()))?
                    .f_sum(Kind::Float)
                    .map_err(|e| Error::backend("entropy", e))?;
                Ok((
                    seq(&s.logprobs)?,
                    seq(&s.references[0].logprobs)?,
                    kl_anchor,
                    kl_init,
                    entropy_sum,
                ))
            },
        )?;
        Ok(Scored {
            seq_logprob,
            anchor_logprob,
            kl_anchor,
            kl_init,
            entropy_sum,
            hidden: grad.then_some(hidden),
            comp,
        })
    }

    /// Back-propagates Σ_t w_t · log π(y_t) of one micro-batch, w_t the weight of its sequence:
    /// `weights` `[sequences]` (constants). Returns the objective on the device.
    fn backward(&self, s: &Scored, weights: &Tensor) -> Result<Tensor> {
        let h = s
            .hidden
            .as_ref()
            .ok_or_else(|| Error::Internal("scored without the graph".into()))?;
        let w = weights
            .f_index_select(0, &s.comp.seq)
            .map_err(|e| Error::backend("loss weights", e))?;
        let head = head_of(&self.policy)?;
        backward_logprobs(
            h,
            &head,
            &s.comp.targets,
            &w,
            self.cfg.temperature,
            self.chunk,
        )
    }

    /// Weights of the sequences' log-probabilities in the loss −mean(A · log π): −A / (batch
    /// size), A the advantages of r_β = r − β·(log π − log π_anchor) − length penalty · |y|.
    fn loss_weights(
        &self,
        r: &Tensor,
        s_lp: &Tensor,
        a_lp: &Tensor,
        lens: &Tensor,
        total: usize,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        tch::no_grad(|| {
            let log_ratio = s_lp.f_sub(a_lp)?;
            let r_beta = r
                .f_sub(&log_ratio.f_mul_scalar(c.beta)?)?
                .f_sub(&lens.f_mul_scalar(c.length_penalty)?)?;
            advantages(&r_beta, c.n, c.baseline).f_mul_scalar(-1.0 / total as f64)
        })
        .map_err(|e| Error::backend("advantages", e))
    }

    /// Checked rewards of `completions` (token ids), the i-th a completion of prompt
    /// `sample_prompts[i]`.
    fn rewards(&mut self, sample_prompts: &[usize], completions: &[Vec<i64>]) -> Result<Vec<f64>> {
        let texts = completions
            .iter()
            .map(|c| self.tok.decode(c))
            .collect::<Result<Vec<_>>>()?;
        let pairs: Vec<(&Prompt, &str)> = sample_prompts
            .iter()
            .zip(&texts)
            .map(|(&i, t)| (&self.prompts[i], t.as_str()))
            .collect();
        let rewards = self.reward.score_prompts(&pairs)?;
        check_rewards(&rewards, pairs.len(), self.reward.name())?;
        Ok(rewards)
    }

    /// One optimizer step (and EMA update); `probe_ema` also samples from the EMA for its metrics.
    pub fn train_step(&mut self, probe_ema: bool) -> Result<StepMetrics> {
        let started = Instant::now();
        let c = self.cfg.clone();
        let step = self.step + 1;
        let mut rng = SplitMix64::stream(c.seed, 1 << 32 | step);
        let chosen: Vec<usize> = (0..c.batch)
            .map(|_| rng.below(self.prompts.len() as u64) as usize)
            .collect();
        let ids: Vec<Vec<i64>> = chosen
            .iter()
            .flat_map(|&i| std::iter::repeat(self.prompt_ids[i].clone()).take(c.n))
            .collect();
        let gen_seed = rng.next_u64();
        let completions = self.sample(&self.policy, &ids, gen_seed)?;
        let generate_s = started.elapsed().as_secs_f64();
        let sample_prompts: Vec<usize> = chosen
            .iter()
            .flat_map(|&i| std::iter::repeat(i).take(c.n))
            .collect();
        let t_reward = Instant::now();
        let rewards = self.rewards(&sample_prompts, &completions)?;
        let reward_s = t_reward.elapsed().as_secs_f64();
        let t_train = Instant::now();
        let pairs: Vec<(Vec<i64>, Vec<i64>)> = ids.into_iter().zip(completions).collect();
        let total = pairs.len();
        let init_metrics = self.init_metrics_at(step) && self.init.is_some();
        let summed = self.accumulate_gradient(&pairs, &rewards, init_metrics)?;
        let info = self.opt.apply(summed.grad_norm)?;
        self.update_ema()?;
        self.step = step;
        let train_s = t_train.elapsed().as_secs_f64();

        let rv = &rewards;
        let mean = rv.iter().sum::<f64>() / rv.len() as f64;
        let std = (rv.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / rv.len() as f64).sqrt();
        let tokens: f64 = pairs.iter().map(|(_, y)| y.len() as f64).sum();
        let samples_per_s = total as f64 / started.elapsed().as_secs_f64();
        let ema = if probe_ema {
            Some(self.probe_ema(&sample_prompts, &pairs, gen_seed)?)
        } else {
            None
        };
        Ok(StepMetrics {
            step,
            reward_mean: mean,
            reward_std: std,
            kl_anchor: summed.kl_anchor,
            kl_init: summed.kl_init,
            entropy: summed.entropy,
            completion_len: tokens / total as f64,
            lr: info.lr,
            grad_norm: info.grad_norm,
            loss: summed.loss,
            samples_per_s,
            generate_s,
            reward_s,
            train_s,
            gen_tokens_per_s: if generate_s > 0.0 {
                tokens / generate_s
            } else {
                0.0
            },
            ema,
        })
    }

    /// The gradient of the step's loss −mean(A · log π(y|x)) for `pairs` and their `rewards`,
    /// summed over micro-batches into the policy's gradients (in f32 by the optimizer when the
    /// policy is bf16), and the step's sums, read from the device once with the squared
    /// gradient norm. `init_metrics` also scores the init (KL to the init).
    pub fn accumulate_gradient(
        &mut self,
        pairs: &[(Vec<i64>, Vec<i64>)],
        rewards: &[f64],
        init_metrics: bool,
    ) -> Result<StepSums> {
        let c = self.cfg.clone();
        let total = pairs.len();
        if rewards.len() != total || total == 0 || total % c.n != 0 {
            return Err(Error::Internal(format!(
                "{} rewards for {total} samples in groups of {}",
                rewards.len(),
                c.n
            )));
        }
        let dev = self.policy.device;
        let to_dev = |v: Vec<f32>| -> Result<Tensor> {
            Tensor::f_from_slice(&v)
                .and_then(|t| t.f_to_device_(dev, Kind::Float, false, false))
                .map_err(|e| Error::backend("rewards to the device", e))
        };
        let r_all = to_dev(rewards.iter().map(|&x| x as f32).collect())?;
        let len_all = to_dev(pairs.iter().map(|(_, y)| y.len() as f32).collect())?;
        let k = c.micro_batch.max(1);
        let n_mb = total.div_ceil(k);
        // One pass when every micro-batch holds whole prompt groups (their baselines are
        // inside), else a no-graph pass for every log-probability first.
        let one_pass = c.baseline == Baseline::None || k % c.n == 0;
        let rows = |i: usize| -> Result<(usize, usize, Tensor, Tensor)> {
            let (a, b) = (i * k, ((i + 1) * k).min(total));
            let narrow = |t: &Tensor| {
                t.f_narrow(0, a as i64, (b - a) as i64)
                    .map_err(|e| Error::backend("micro-batch", e))
            };
            Ok((a, b, narrow(&r_all)?, narrow(&len_all)?))
        };
        self.opt.zero_grad();
        let mut sums = Sums::default();
        let accumulate = n_mb > 1 && self.opt.has_masters();
        if one_pass {
            for i in 0..n_mb {
                let (a, b, r, l) = rows(i)?;
                let s = self.score(&pairs[a..b], true, init_metrics)?;
                let w = self.loss_weights(&r, &s.seq_logprob, &s.anchor_logprob, &l, total)?;
                sums.objective.push(self.backward(&s, &w)?);
                sums.add(&s);
                if accumulate {
                    self.opt.accumulate()?;
                }
            }
        } else {
            let mut lp = Vec::with_capacity(n_mb);
            let mut alp = Vec::with_capacity(n_mb);
            for i in 0..n_mb {
                let (a, b, _, _) = rows(i)?;
                let s = self.score(&pairs[a..b], false, init_metrics)?;
                lp.push(s.seq_logprob.shallow_clone());
                alp.push(s.anchor_logprob.shallow_clone());
                sums.add(&s);
            }
            let cat =
                |v: &[Tensor]| Tensor::f_cat(v, 0).map_err(|e| Error::backend("log-probs", e));
            let w_all = self.loss_weights(&r_all, &cat(&lp)?, &cat(&alp)?, &len_all, total)?;
            for i in 0..n_mb {
                let (a, b, _, _) = rows(i)?;
                let s = self.score_for_backward(&pairs[a..b])?;
                let w = w_all
                    .f_narrow(0, a as i64, (b - a) as i64)
                    .map_err(|e| Error::backend("micro-batch", e))?;
                sums.objective.push(self.backward(&s, &w)?);
                if accumulate {
                    self.opt.accumulate()?;
                }
            }
        }
        let grad_sq = self.opt.grad_sq_norm()?;
        let read = sums.read(&grad_sq, init_metrics)?;
        let tokens: f64 = pairs.iter().map(|(_, y)| y.len() as f64).sum();
        Ok(StepSums {
            grad_norm: read.grad_sq.sqrt(),
            loss: read.objective,
            kl_anchor: read.kl_anchor / total as f64,
            kl_init: read.kl_init.map(|x| x / total as f64),
            entropy: if tokens > 0.0 {
                read.entropy / tokens
            } else {
                0.0
            },
        })
    }

    /// The policy's gradients as f32 tensors by parameter name (what the next optimizer step
    /// uses: the sums over micro-batches).
    pub fn gradients(&self) -> Result<Vec<(String, Tensor)>> {
        self.opt.gradients_f32()
    }

    /// The policy's completion-position hidden states of one micro-batch, with the graph.
    fn score_for_backward(&self, pairs: &[(Vec<i64>, Vec<i64>)]) -> Result<Scored> {
        let c = &self.policy.config;
        let comp = Completions::new(
            pairs,
            self.tok.pad_id,
            c.vocab_size,
            c.max_position_embeddings,
            self.policy.device,
        )?;
        let hidden = tch::with_grad(|| {
            let h =
                self.policy
                    .hidden_states(&comp.ids, &comp.attention_mask, &comp.position_ids)?;
            comp.gather(&h)
        })?;
        let zero = || {
            Tensor::f_zeros([0], (Kind::Float, self.policy.device))
                .map_err(|e| Error::backend("scoring", e))
        };
        Ok(Scored {
            comp,
            hidden: Some(hidden),
            seq_logprob: zero()?,
            anchor_logprob: zero()?,
            kl_anchor: zero()?,
            kl_init: None,
            entropy_sum: zero()?,
        })
    }

    /// θ_ema ← (1 − μ) θ_ema + μ θ, in f32, from the optimizer's exact f32 weights (the master
    /// copies when the policy trains in bf16: the EMA then averages the trained trajectory, not
    /// its bf16 rounding, and equals the EMA of the f32 policies the run saves); then the bf16
    /// copy the anchor forward uses.
    fn update_ema(&mut self) -> Result<()> {
        let mu = self.cfg.mu;
        let weights: HashMap<&str, Tensor> = self.opt.weights_f32().into_iter().collect();
        tch::no_grad(|| -> Result<()> {
            for (name, mut e) in self.ema.vs.variables() {
                let p = weights.get(name.as_str()).ok_or_else(|| {
                    Error::Internal(format!("EMA parameter '{name}' is not optimised"))
                })?;
                let _ = e
                    .f_mul_scalar_(1.0 - mu)
                    .and_then(|mut e| e.f_add_(&p.f_mul_scalar(mu)?))
                    .map_err(|err| Error::backend(format!("EMA update of '{name}'"), err))?;
            }
            Ok(())
        })?;
        if let Some(e) = &self.ema_compute {
            copy_weights(&self.ema, e)?;
        }
        Ok(())
    }

    /// Reward and KL(ema ‖ init) of the EMA's own samples on this step's prompts, scored as
    /// training scores them ([`Self::rewards`]: the prompt file's text, not a decoding of its
    /// tokens), so that `ema_reward_mean` and `reward_mean` measure two models the same way.
    fn probe_ema(
        &mut self,
        sample_prompts: &[usize],
        pairs: &[(Vec<i64>, Vec<i64>)],
        seed: u64,
    ) -> Result<(f64, Option<f64>)> {
        let prompts: Vec<Vec<i64>> = pairs.iter().map(|(p, _)| p.clone()).collect();
        let completions = self.sample(
            self.ema_compute.as_ref().unwrap_or(&self.ema),
            &prompts,
            seed,
        )?;
        let rewards = self.rewards(sample_prompts, &completions)?;
        let ema = self.ema_compute.as_ref().unwrap_or(&self.ema);
        let reward = rewards.iter().sum::<f64>() / rewards.len() as f64;
        let Some(init) = &self.init else {
            return Ok((reward, None));
        };
        let pairs: Vec<(Vec<i64>, Vec<i64>)> = prompts.into_iter().zip(completions).collect();
        let c = &ema.config;
        let mut total = 0.0;
        for chunk in pairs.chunks(self.cfg.micro_batch.max(1)) {
            let comp = Completions::new(
                chunk,
                self.tok.pad_id,
                c.vocab_size,
                c.max_position_embeddings,
                ema.device,
            )?;
            total += tch::no_grad(|| -> Result<f64> {
                let hidden_of = |m: &LlamaModel| -> Result<Tensor> {
                    let h = m.hidden_states(&comp.ids, &comp.attention_mask, &comp.position_ids)?;
                    comp.gather(&h)
                };
                let (he, hi) = (hidden_of(ema)?, hidden_of(init)?);
                let (eh, ih) = (head_of(ema)?, head_of(init)?);
                let s = token_stats(
                    &he,
                    &eh,
                    &comp.targets,
                    &[Reference {
                        hidden: &hi,
                        head: &ih,
                    }],
                    &StatsOptions {
                        temperature: self.cfg.temperature,
                        chunk: self.chunk,
                        entropy: false,
                    },
                )?;
                s.references[0]
                    .kl
                    .f_sum(Kind::Double)
                    .and_then(|t| t.f_double_value(&[]))
                    .map_err(|e| Error::backend("KL(ema ‖ init)", e))
            })?;
        }
        Ok((reward, Some(total / pairs.len() as f64)))
    }

    /// Writes `dest/{policy,ema}` (HF layout, model cards; f32 or the init's dtypes by
    /// `save_dtype`) and, for a resumable checkpoint, `dest/trainer/` (optimizer moments and
    /// master copies, exact f32 weights when the folders are not exact, the step): all or
    /// nothing.
    pub fn save_checkpoint(&self, dest: &Path, resumable: bool) -> Result<PathBuf> {
        let staging = Staging::new(dest, false)?;
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
                    if self.cfg.baseline == Baseline::Rloo {
                        "RLOO"
                    } else {
                        "no"
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
                    match self.cfg.save_dtype {
                        SaveDtype::F32 => "f32 (the trained weights exactly)",
                        SaveDtype::Same => "the init's dtypes",
                    }
                )],
            };
            let readme = dir.join("README.md");
            std::fs::write(&readme, card.render()).at(&readme)?;
        }
        if resumable {
            let dir = RlRunLayout::trainer_dir(staging.path());
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
            write_f32_tensors(&dir, &named)?;
            let state = TrainerState {
                step: self.step,
                config: self.cfg.clone(),
            };
            write_json(&dir.join(TRAINER_STATE), &state)?;
        }
        staging.commit()
    }

    /// Writes named weights (the policy's parameters, in their save order) as an HF checkpoint
    /// folder with the init's companion files, in f32 or the init's dtypes.
    fn write_model(&self, dir: &Path, named: &[(String, Tensor)]) -> Result<()> {
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
                .map_err(|e| Error::backend(format!("saving {}", dir.display()), e))?;
            w.write(&bytes)?;
        }
        companion::copy_companions(&self.model_dir, &mut w)?;
        w.finish()?;
        Ok(())
    }
}

impl Sums {
    fn add(&mut self, s: &Scored) {
        self.kl_anchor.push(s.kl_anchor.shallow_clone());
        if let Some(k) = &s.kl_init {
            self.kl_init.push(k.shallow_clone());
        }
        self.entropy.push(s.entropy_sum.shallow_clone());
    }

    /// The sums and the squared gradient norm, read from the device at once.
    fn read(&self, grad_sq: &Tensor, init_metrics: bool) -> Result<ReadBack> {
        let sum = |v: &[Tensor]| -> std::result::Result<Tensor, tch::TchError> {
            if v.is_empty() {
                Tensor::f_zeros([], (Kind::Double, grad_sq.device()))
            } else {
                let parts = v
                    .iter()
                    .map(|t| t.f_sum(Kind::Double))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                Tensor::f_stack(&parts, 0)?.f_sum(Kind::Double)
            }
        };
        let all = (|| {
            let t = Tensor::f_stack(
                &[
                    grad_sq.f_to_kind(Kind::Double)?,
                    sum(&self.objective)?,
                    sum(&self.kl_anchor)?,
                    sum(&self.kl_init)?,
                    sum(&self.entropy)?,
                ],
                0,
            )?;
            Vec::<f64>::try_from(t.f_to_device_(Device::Cpu, Kind::Double, false, false)?)
        })()
        .map_err(|e| Error::backend("reading the step's metrics", e))?;
        Ok(ReadBack {
            grad_sq: all[0],
            objective: all[1],
            kl_anchor: all[2],
            kl_init: init_metrics.then_some(all[3]),
            entropy: all[4],
        })
    }
}

/// A step's loss and metrics, as [`Trainer::accumulate_gradient`] computed them.
#[derive(Debug, Clone, Copy)]
pub struct StepSums {
    /// Global norm of the summed gradient (before clipping).
    pub grad_norm: f64,
    /// −mean(A · log π(y|x)).
    pub loss: f64,
    /// Mean over the samples of Σ_t KL(π ‖ anchor) along each.
    pub kl_anchor: f64,
    pub kl_init: Option<f64>,
    /// Mean per-token entropy.
    pub entropy: f64,
}

/// What [`Sums::read`] brought back.
struct ReadBack {
    grad_sq: f64,
    objective: f64,
    kl_anchor: f64,
    kl_init: Option<f64>,
    entropy: f64,
}

/// `t` as little-endian bytes of `kind` (on the CPU).
fn tensor_bytes(t: &Tensor, kind: Kind, elt: usize) -> std::result::Result<Vec<u8>, tch::TchError> {
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

/// The parameters of `m` by name, in its save order.
fn named_weights(m: &LlamaModel) -> Result<Vec<(String, Tensor)>> {
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
fn copy_weights(from: &LlamaModel, to: &LlamaModel) -> Result<()> {
    let src = from.vs.variables();
    tch::no_grad(|| {
        for (name, mut dst) in to.vs.variables() {
            let s = src
                .get(&name)
                .ok_or_else(|| Error::Internal(format!("no parameter '{name}' to copy")))?;
            dst.f_copy_(s)
                .map_err(|e| Error::backend(format!("copying '{name}'"), e))?;
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
    super::memory::check_fits(&plan.input, limit)
        .map(|_| ())
        .map_err(|e| Error::setting("max_memory", e.to_string()))
}

/// Makes glibc's malloc serve every allocation of 1 MiB or more (libtorch's CPU tensors) with
/// its own mapping, returned to the system when the tensor is freed. By default the threshold
/// adapts upwards (to 32 MiB) as large blocks are freed, after which such tensors come from the
/// heap and their freed space stays in the process: on the 49.7M-parameter benchmark the RSS then
/// stayed ~1 GB above the live tensors after the first step (docs/PERFORMANCE.md).
fn release_freed_tensors() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before the training
    // allocates, and changing the threshold is valid at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
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

fn load_init(
    cfg: &RlConfig,
    ck: &Checkpoint,
    config: &super::LlamaConfig,
    device: Device,
) -> Result<Option<LlamaModel>> {
    if !needs_init(cfg) {
        return Ok(None);
    }
    let mut init = LlamaModel::from_checkpoint(ck, config.clone(), device, train_kind(cfg))?;
    init.vs.freeze();
    Ok(Some(init))
}

/// The frozen init, and the policy and EMA starting from it; the policy's f32 master copies (in
/// bf16) start from the init's exact weights, not their bf16 rounding.
fn fresh_models(
    cfg: &RlConfig,
    ck: &Checkpoint,
    config: super::LlamaConfig,
    device: Device,
) -> Result<Models> {
    let init = load_init(cfg, ck, &config, device)?;
    let policy = LlamaModel::from_checkpoint(ck, config.clone(), device, train_kind(cfg))?;
    let mut ema = LlamaModel::from_checkpoint(ck, config, device, Kind::Float)?;
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
fn restore_models(
    cfg: &RlConfig,
    ck: &Checkpoint,
    config: super::LlamaConfig,
    dir: &Path,
    exact_on_disk: bool,
    device: Device,
) -> Result<Models> {
    let init = load_init(cfg, ck, &config, device)?;
    let policy = LlamaModel::load_with_kind(dir.join("policy"), device, train_kind(cfg))?;
    let mut ema = LlamaModel::load_with_kind(dir.join("ema"), device, Kind::Float)?;
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
                        .map_err(|e| Error::backend(format!("restoring '{name}'"), e))?;
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

/// The prompt set of the run (plain and conversation lines) and its token ids; a line that
/// cannot be encoded (e.g. a conversation without a chat template) or is too long for the model
/// is an error naming it.
fn read_training_prompts(
    cfg: &RlConfig,
    tok: &Tokenizer,
    policy: &LlamaModel,
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

/// Policy-gradient weights of samples grouped by prompt (`n` consecutive samples each):
/// r_β itself (REINFORCE), or r_β minus the mean r_β of the prompt's other n − 1 samples (RLOO).
pub fn advantages(r_beta: &Tensor, n: usize, baseline: Baseline) -> Tensor {
    match baseline {
        Baseline::None => r_beta.shallow_clone(),
        Baseline::Rloo => {
            let grp = r_beta.view([-1, n as i64]);
            let others = (grp.sum_dim_intlist(-1, true, Kind::Float) - &grp) / (n as f64 - 1.0);
            (grp - others).view([-1])
        }
    }
}

fn adam_config(c: &RlConfig) -> AdamConfig {
    AdamConfig {
        lr: c.lr,
        warmup: c.warmup,
        grad_clip: c.grad_clip,
        ..AdamConfig::default()
    }
}

fn check_rewards(rewards: &[f64], expected: usize, name: &str) -> Result<()> {
    if rewards.len() != expected {
        return Err(Error::reward(
            name,
            format!(
                "returned {} values for {expected} completions",
                rewards.len()
            ),
        ));
    }
    if let Some((i, x)) = rewards.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(Error::reward(
            name,
            format!("returned {x} for completion {i}"),
        ));
    }
    Ok(())
}

/// Named tensors as one f32 safetensors file in a new folder `dir`.
fn write_f32_tensors(dir: &Path, named: &[(String, Tensor)]) -> Result<()> {
    let out: Vec<OutTensor> = named
        .iter()
        .map(|(n, t)| OutTensor {
            name: n.clone(),
            dtype: DType::F32,
            shape: t.size().iter().map(|&d| d as usize).collect(),
        })
        .collect();
    let opts = WriterOptions {
        max_shard_size: u64::MAX,
        ..WriterOptions::default()
    };
    let mut w = CheckpointWriter::create(dir, out, &opts)?;
    for (_, t) in named {
        let t = t
            .detach()
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous();
        let n = t.numel();
        let mut buf = vec![0u8; n * 4];
        t.f_copy_data_u8(&mut buf, n)
            .map_err(|e| Error::backend(format!("saving {}", dir.display()), e))?;
        w.write(&buf)?;
    }
    w.finish()?;
    Ok(())
}
