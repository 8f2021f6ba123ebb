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

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use super::data::{read_prompt_lines, Prompt};
use super::eval::token_kl;
use super::generate::{generate, score_at, GenerateOptions};
use super::model::{read_tensor, LlamaModel};
use super::optim::{Adam, AdamConfig};
use super::reward::{self, Reward};
use super::rng::SplitMix64;
use super::tokenizer::Tokenizer;
use crate::error::{Error, IoContext, Result};
use crate::io::companion::ModelCard;
use crate::io::writer::{CheckpointWriter, OutTensor, Staging, WriterOptions};
use crate::io::{write_file_atomic, Checkpoint, DType};
use crate::pipeline::layout::{RlRunLayout, TRAINER_STATE};
use crate::progress::Reporter;

pub use super::settings::{Anchor, Baseline, RlConfig, TrainDtype};

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
    pub kl_init: f64,
    /// Mean per-token entropy of the sampling distribution.
    pub entropy: f64,
    pub completion_len: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub loss: f64,
    pub samples_per_s: f64,
    /// At checkpoint steps: the EMA's own samples' reward and KL(ema ‖ init).
    pub ema: Option<(f64, f64)>,
}

impl StepMetrics {
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "step": self.step, "reward_mean": self.reward_mean, "reward_std": self.reward_std,
            "kl_anchor": self.kl_anchor, "kl_init": self.kl_init, "entropy": self.entropy,
            "completion_len": self.completion_len, "lr": self.lr, "grad_norm": self.grad_norm,
            "loss": self.loss, "samples_per_s": self.samples_per_s,
        });
        if let Some((r, kl)) = self.ema {
            v["ema_reward_mean"] = json!(r);
            v["ema_kl_init"] = json!(kl);
        }
        v
    }
}

fn to_vec(t: &Tensor) -> Result<Vec<f64>> {
    Vec::<f64>::try_from(
        t.to_device(Device::Cpu)
            .to_kind(Kind::Double)
            .flatten(0, -1),
    )
    .map_err(|e| Error::backend("reading the rewards back from libtorch", e))
}

/// A run in progress: the three models, the optimizer, the reward and the prompts.
pub struct Trainer {
    pub cfg: RlConfig,
    pub out: PathBuf,
    /// Folder of the init model (companion files of every checkpoint come from there).
    model_dir: PathBuf,
    tok: Tokenizer,
    pub policy: LlamaModel,
    pub ema: LlamaModel,
    /// The frozen init (anchor of `--anchor init`; reference of every KL-to-init metric).
    pub init: LlamaModel,
    opt: Adam,
    reward: Box<dyn Reward>,
    prompts: Vec<Prompt>,
    prompt_ids: Vec<Vec<i64>>,
    /// Whether the saved policy/ema folders hold the exact training state (all f32); else the
    /// trainer state keeps f32 copies for resuming.
    exact_on_disk: bool,
    layout: RlRunLayout,
    pub step: u64,
}

/// The complete resumable checkpoints of a run folder, by step.
pub fn checkpoints(out: &Path) -> Result<Vec<(u64, PathBuf)>> {
    RlRunLayout::new(out).checkpoints()
}

/// The three models of a run and the optimizer, fresh or restored from a checkpoint.
struct Models {
    policy: LlamaModel,
    ema: LlamaModel,
    init: LlamaModel,
    opt: Adam,
    step: u64,
}

impl Trainer {
    /// Starts a new run in `out` (which must not exist, or be empty).
    pub fn new(cfg: RlConfig, out: &Path, reporter: &dyn Reporter) -> Result<Trainer> {
        cfg.check()?;
        if out.exists() && std::fs::read_dir(out).at(out)?.next().is_some() {
            return Err(Error::Usage(format!(
                "run folder {} exists and is not empty",
                out.display()
            )));
        }
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
        if let Some(s) = steps {
            cfg.steps = s;
        }
        cfg.check()?;
        // Staging folders of checkpoints a killed run was writing: never complete, never used.
        for e in std::fs::read_dir(out).at(out)?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') && name.contains(".warp-tmp-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let last = layout.checkpoints()?.pop();
        let t = Self::build(cfg, out, last.as_ref().map(|(_, p)| p.as_path()), reporter)?;
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
            cfg.dtype == TrainDtype::F32 && ck.tensors().iter().all(|t| t.dtype == DType::F32);
        let m = match from {
            None => fresh_models(&cfg, &ck, config, device)?,
            Some(dir) => restore_models(&cfg, &ck, config, dir, exact_on_disk, device)?,
        };
        let (prompts, prompt_ids) = read_training_prompts(&cfg, &tok, &m.policy)?;
        let reward = reward::from_spec_opts(
            &cfg.reward,
            &reward::RewardOptions {
                timeout: std::time::Duration::from_secs_f64(cfg.reward_timeout),
                device,
                ..reward::RewardOptions::default()
            },
        )?;
        Ok(Trainer {
            prompts,
            prompt_ids,
            out: out.to_path_buf(),
            layout: RlRunLayout::new(out),
            model_dir,
            tok,
            policy: m.policy,
            ema: m.ema,
            init: m.init,
            opt: m.opt,
            reward,
            exact_on_disk,
            step: m.step,
            cfg,
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
            reporter.status(&format!(
                "reward {:.3}  KL(anchor) {:.3}  KL(init) {:.3}",
                m.reward_mean, m.kl_anchor, m.kl_init
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
        let gen_opts = GenerateOptions {
            max_new_tokens: c.max_new_tokens,
            temperature: c.temperature,
            top_k: 0,
            top_p: 1.0,
            seed: rng.next_u64(),
            eos_ids: self.tok.eos_ids.clone(),
            pad_id: self.tok.pad_id,
            record_logits: false,
        };
        let g = generate(&self.policy, &ids, &gen_opts)?;
        let sample_prompts: Vec<usize> = chosen
            .iter()
            .flat_map(|&i| std::iter::repeat(i).take(c.n))
            .collect();
        let rewards = self.rewards(&sample_prompts, &g.completions)?;
        let pairs: Vec<(Vec<i64>, Vec<i64>)> = ids.into_iter().zip(g.completions).collect();

        self.opt.zero_grad();
        let pol = score_at(&self.policy, &pairs, self.tok.pad_id, c.temperature)?;
        let (anchor_scores, init_scores) = tch::no_grad(|| -> Result<_> {
            let init = score_at(&self.init, &pairs, self.tok.pad_id, c.temperature)?;
            Ok(match c.anchor {
                Anchor::Ema => (
                    Some(score_at(&self.ema, &pairs, self.tok.pad_id, c.temperature)?),
                    init,
                ),
                Anchor::Init => (None, init),
            })
        })?;
        let anc = anchor_scores.as_ref().unwrap_or(&init_scores);
        let dev = self.policy.device;
        let seq_lp = pol.logprobs.sum_dim_intlist(-1, false, Kind::Float);
        let log_ratio = seq_lp.detach() - anc.logprobs.sum_dim_intlist(-1, false, Kind::Float);
        let lens = pol.mask.sum_dim_intlist(-1, false, Kind::Float);
        let r = Tensor::from_slice(&rewards)
            .to_kind(Kind::Float)
            .to_device(dev);
        let r_beta = &r - &log_ratio * c.beta - &lens * c.length_penalty;
        let adv = advantages(&r_beta, c.n, c.baseline);
        let loss = -(adv.detach() * &seq_lp).mean(Kind::Float);
        loss.backward();
        let info = self.opt.step()?;
        self.update_ema();
        self.step = step;

        let (kl_anchor, kl_init, entropy) = tch::no_grad(|| {
            let seq = |t: Tensor| (t * &pol.mask).sum_dim_intlist(-1, false, Kind::Float);
            let kl_a = seq(token_kl(&pol.logits, &anc.logits, c.temperature)).mean(Kind::Float);
            let kl_i =
                seq(token_kl(&pol.logits, &init_scores.logits, c.temperature)).mean(Kind::Float);
            let lp = (&pol.logits / c.temperature).log_softmax(-1, Kind::Float);
            let ent = -(lp.exp() * &lp).sum_dim_intlist(-1, false, Kind::Float);
            let ent = (ent * &pol.mask).sum(Kind::Float) / pol.mask.sum(Kind::Float);
            (
                kl_a.double_value(&[]),
                kl_i.double_value(&[]),
                ent.double_value(&[]),
            )
        });
        let rv = to_vec(&r)?;
        let mean = rv.iter().sum::<f64>() / rv.len() as f64;
        let std = (rv.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / rv.len() as f64).sqrt();
        let samples_per_s = rv.len() as f64 / started.elapsed().as_secs_f64();
        let ema = if probe_ema {
            Some(self.probe_ema(&sample_prompts, &pairs, &gen_opts)?)
        } else {
            None
        };
        Ok(StepMetrics {
            step,
            reward_mean: mean,
            reward_std: std,
            kl_anchor,
            kl_init,
            entropy,
            completion_len: lens.mean(Kind::Float).double_value(&[]),
            lr: info.lr,
            grad_norm: info.grad_norm,
            loss: loss.double_value(&[]),
            samples_per_s,
            ema,
        })
    }

    /// θ_ema ← (1 − μ) θ_ema + μ θ, in f32.
    fn update_ema(&mut self) {
        let mu = self.cfg.mu;
        let pol = self.policy.vs.variables();
        tch::no_grad(|| {
            for (name, mut e) in self.ema.vs.variables() {
                let p = pol[&name].to_kind(Kind::Float);
                e *= 1.0 - mu;
                e += p * mu;
            }
        });
    }

    /// Reward and KL(ema ‖ init) of the EMA's own samples on this step's prompts, scored as
    /// training scores them ([`Self::rewards`]: the prompt file's text, not a decoding of its
    /// tokens), so that `ema_reward_mean` and `reward_mean` measure two models the same way.
    fn probe_ema(
        &mut self,
        sample_prompts: &[usize],
        pairs: &[(Vec<i64>, Vec<i64>)],
        o: &GenerateOptions,
    ) -> Result<(f64, f64)> {
        let prompts: Vec<Vec<i64>> = pairs.iter().map(|(p, _)| p.clone()).collect();
        let g = generate(&self.ema, &prompts, o)?;
        let rewards = self.rewards(sample_prompts, &g.completions)?;
        let pairs: Vec<(Vec<i64>, Vec<i64>)> = prompts.into_iter().zip(g.completions).collect();
        let kl = tch::no_grad(|| -> Result<f64> {
            let e = score_at(&self.ema, &pairs, self.tok.pad_id, o.temperature)?;
            let i = score_at(&self.init, &pairs, self.tok.pad_id, o.temperature)?;
            let kl = (token_kl(&e.logits, &i.logits, o.temperature) * &e.mask)
                .sum_dim_intlist(-1, false, Kind::Float)
                .mean(Kind::Float);
            Ok(kl.double_value(&[]))
        })?;
        Ok((rewards.iter().sum::<f64>() / rewards.len() as f64, kl))
    }

    /// Writes `dest/{policy,ema}` (HF layout, the init's dtypes, model cards) and, for a
    /// resumable checkpoint, `dest/trainer/` (optimizer moments, exact f32 weights when the
    /// folders are not exact, the step): all or nothing.
    pub fn save_checkpoint(&self, dest: &Path, resumable: bool) -> Result<PathBuf> {
        let staging = Staging::new(dest, false)?;
        let opts = WriterOptions::default();
        for (which, m) in [("policy", &self.policy), ("ema", &self.ema)] {
            let dir = staging.path().join(which);
            m.save(&dir, Some(&self.model_dir), None, &opts)?;
            let recipe = json!({"method": "warp-rl", "which": which, "step": self.step,
                                "config": self.cfg.to_json()});
            let card = ModelCard {
                title: &format!("warp-rl {which} at step {}", self.step),
                base_model: &self.cfg.model,
                method: "rl",
                recipe: &recipe,
                notes: vec![format!(
                    "RL fine-tuning (policy gradient, {} baseline) with a KL penalty β = {} \
                     towards the {} anchor; EMA rate μ = {}. `{which}` is {}.",
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
                for (prefix, m) in [("policy", &self.policy), ("ema", &self.ema)] {
                    for name in m.parameter_names() {
                        named.push((
                            format!("{prefix}.{name}"),
                            m.vs.variables()[name].shallow_clone(),
                        ));
                    }
                }
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
}

fn train_kind(cfg: &RlConfig) -> Kind {
    match cfg.dtype {
        TrainDtype::F32 => Kind::Float,
        TrainDtype::Bf16 => Kind::BFloat16,
    }
}

/// The frozen init, and the policy and EMA starting from it.
fn fresh_models(
    cfg: &RlConfig,
    ck: &Checkpoint,
    config: super::LlamaConfig,
    device: Device,
) -> Result<Models> {
    let mut init = LlamaModel::from_checkpoint(ck, config.clone(), device, Kind::Float)?;
    init.vs.freeze();
    let policy = LlamaModel::from_checkpoint(ck, config.clone(), device, train_kind(cfg))?;
    let mut ema = LlamaModel::from_checkpoint(ck, config, device, Kind::Float)?;
    ema.vs.freeze();
    let opt = Adam::new(&policy, adam_config(cfg));
    Ok(Models {
        policy,
        ema,
        init,
        opt,
        step: 0,
    })
}

/// The frozen init, and the policy, EMA and optimizer of checkpoint `dir`. When the saved
/// folders are not exact (bf16 training, or a non-f32 init whose dtypes the folders keep), the
/// exact f32 weights come from the trainer state.
fn restore_models(
    cfg: &RlConfig,
    ck: &Checkpoint,
    config: super::LlamaConfig,
    dir: &Path,
    exact_on_disk: bool,
    device: Device,
) -> Result<Models> {
    let mut init = LlamaModel::from_checkpoint(ck, config, device, Kind::Float)?;
    init.vs.freeze();
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
    if !exact_on_disk {
        for (prefix, m) in [("policy", &policy), ("ema", &ema)] {
            tch::no_grad(|| -> Result<()> {
                for (name, mut var) in m.vs.variables() {
                    let t = get(&format!("{prefix}.{name}"), &var.size())?;
                    var.copy_(&t.to_kind(var.kind()));
                }
                Ok(())
            })?;
        }
    }
    let mut opt = Adam::new(&policy, adam_config(cfg));
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
