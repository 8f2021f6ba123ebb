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

use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use super::data::read_prompts;
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
use crate::progress::Reporter;

/// The built-in task (`warp-sft` output committed in the source tree): model/, train.jsonl,
/// heldout.jsonl.
pub const BUILTIN_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/arith");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    /// Leave-one-out: each sample's baseline is the mean r_β of the prompt's other samples.
    Rloo,
    /// Plain REINFORCE (the paper's).
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    Ema,
    Init,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RlConfig {
    /// Init policy: a local checkpoint folder or a hub id.
    pub model: String,
    /// JSONL prompt set.
    pub prompts: PathBuf,
    /// `verify:arith`, `model:PATH` or `cmd:PROGRAM`.
    pub reward: String,
    /// Optimizer steps T.
    pub steps: u64,
    /// Prompts per step.
    pub batch: usize,
    /// Completions per prompt.
    pub n: usize,
    pub beta: f64,
    pub mu: f64,
    pub temperature: f64,
    pub max_new_tokens: usize,
    pub lr: f64,
    pub warmup: u64,
    pub grad_clip: f64,
    pub baseline: Baseline,
    pub anchor: Anchor,
    /// Subtracted from the reward per completion token (paper App. E: 0.0005).
    pub length_penalty: f64,
    pub seed: u64,
    /// A resumable checkpoint every this many steps (and at the end).
    pub save_every: u64,
    /// Parameter dtype of the policy while training: f32 or bf16 (the EMA is always f32).
    pub bf16: bool,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Seconds a `cmd:` reward may take per call.
    pub reward_timeout: f64,
}

impl Default for RlConfig {
    fn default() -> Self {
        RlConfig {
            model: format!("{BUILTIN_DIR}/model"),
            prompts: format!("{BUILTIN_DIR}/train.jsonl").into(),
            reward: "verify:arith".into(),
            steps: 100,
            batch: 16,
            n: 4,
            beta: 0.1,
            // The paper's μ = 0.01 gives the EMA a horizon of ~100 steps in a 9k-step run; the
            // built-in task trains for ~100 steps, so the horizon is scaled down to ~20.
            mu: 0.05,
            temperature: 0.9,
            max_new_tokens: 8,
            lr: 3e-4,
            warmup: 10,
            grad_clip: 1.0,
            baseline: Baseline::Rloo,
            anchor: Anchor::Ema,
            length_penalty: 0.0,
            seed: 0,
            save_every: 50,
            bf16: false,
            device: "auto".into(),
            reward_timeout: 60.0,
        }
    }
}

impl RlConfig {
    pub fn to_json(&self) -> Value {
        json!({
            "model": self.model, "prompts": self.prompts, "reward": self.reward,
            "steps": self.steps, "batch": self.batch, "n": self.n, "beta": self.beta,
            "mu": self.mu, "temperature": self.temperature,
            "max_new_tokens": self.max_new_tokens, "lr": self.lr, "warmup": self.warmup,
            "grad_clip": self.grad_clip,
            "baseline": match self.baseline { Baseline::Rloo => "rloo", Baseline::None => "none" },
            "anchor": match self.anchor { Anchor::Ema => "ema", Anchor::Init => "init" },
            "length_penalty": self.length_penalty, "seed": self.seed,
            "save_every": self.save_every, "dtype": if self.bf16 { "bf16" } else { "f32" },
            "device": self.device, "reward_timeout": self.reward_timeout,
        })
    }

    /// Reads what [`to_json`](Self::to_json) wrote (`run.json` of a run folder).
    pub fn from_json(v: &Value, path: &Path) -> Result<RlConfig> {
        let bad = |k: &str| Error::format(path, format!("missing or invalid field '{k}'"));
        let s = |k: &str| v.get(k).and_then(Value::as_str).ok_or_else(|| bad(k));
        let f = |k: &str| v.get(k).and_then(Value::as_f64).ok_or_else(|| bad(k));
        let u = |k: &str| v.get(k).and_then(Value::as_u64).ok_or_else(|| bad(k));
        Ok(RlConfig {
            model: s("model")?.into(),
            prompts: s("prompts")?.into(),
            reward: s("reward")?.into(),
            steps: u("steps")?,
            batch: u("batch")? as usize,
            n: u("n")? as usize,
            beta: f("beta")?,
            mu: f("mu")?,
            temperature: f("temperature")?,
            max_new_tokens: u("max_new_tokens")? as usize,
            lr: f("lr")?,
            warmup: u("warmup")?,
            grad_clip: f("grad_clip")?,
            baseline: parse_baseline(s("baseline")?).map_err(|_| bad("baseline"))?,
            anchor: parse_anchor(s("anchor")?).map_err(|_| bad("anchor"))?,
            length_penalty: f("length_penalty")?,
            seed: u("seed")?,
            save_every: u("save_every")?,
            bf16: s("dtype")? == "bf16",
            device: s("device")?.into(),
            reward_timeout: f("reward_timeout")?,
        })
    }

    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Usage(m));
        if self.steps == 0 || self.batch == 0 || self.n == 0 || self.max_new_tokens == 0 {
            return bad("--steps, --batch, --n and --max-new-tokens must be > 0".into());
        }
        if self.baseline == Baseline::Rloo && self.n < 2 {
            return bad(format!(
                "--baseline rloo needs --n ≥ 2 completions per prompt, got {}",
                self.n
            ));
        }
        if !(self.mu > 0.0 && self.mu <= 1.0) {
            return bad(format!("--mu must be in (0, 1], got {}", self.mu));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad(format!(
                "--temperature must be > 0, got {}",
                self.temperature
            ));
        }
        for (k, x) in [
            ("--beta", self.beta),
            ("--lr", self.lr),
            ("--grad-clip", self.grad_clip),
            ("--length-penalty", self.length_penalty),
        ] {
            if !(x.is_finite() && x >= 0.0) {
                return bad(format!("{k} must be a finite number ≥ 0, got {x}"));
            }
        }
        if self.save_every == 0 {
            return bad("--save-every must be > 0".into());
        }
        Ok(())
    }
}

pub fn parse_baseline(s: &str) -> std::result::Result<Baseline, String> {
    match s {
        "rloo" => Ok(Baseline::Rloo),
        "none" => Ok(Baseline::None),
        _ => Err(format!("unknown baseline '{s}' (rloo or none)")),
    }
}

pub fn parse_anchor(s: &str) -> std::result::Result<Anchor, String> {
    match s {
        "ema" => Ok(Anchor::Ema),
        "init" => Ok(Anchor::Init),
        _ => Err(format!("unknown anchor '{s}' (ema or init)")),
    }
}

/// `auto` (CUDA when libtorch sees one), `cpu`, `cuda`, `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| Error::Usage(format!("unknown device '{s}' (auto, cpu, cuda[:N])"))),
    }
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

fn tch_err(e: tch::TchError) -> Error {
    Error::Usage(format!("libtorch: {e}"))
}

fn to_vec(t: &Tensor) -> Result<Vec<f64>> {
    Vec::<f64>::try_from(
        t.to_device(Device::Cpu)
            .to_kind(Kind::Double)
            .flatten(0, -1),
    )
    .map_err(tch_err)
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
    prompts: Vec<String>,
    prompt_ids: Vec<Vec<i64>>,
    /// Whether the saved policy/ema folders hold the exact training state (all f32); else the
    /// trainer state keeps f32 copies for resuming.
    exact_on_disk: bool,
    pub step: u64,
}

const STATE_FILE: &str = "state.json";

fn step_dir_name(step: u64) -> String {
    format!("step-{step:06}")
}

/// The completed checkpoints of a run folder, by step (a staged, unfinished one is hidden and
/// never matches).
pub fn checkpoints(out: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(out).at(out)? {
        let e = e.at(out)?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(n) = name.strip_prefix("step-").and_then(|n| n.parse().ok()) {
            if e.path().join("trainer").join(STATE_FILE).is_file() {
                v.push((n, e.path()));
            }
        }
    }
    v.sort();
    Ok(v)
}

impl Trainer {
    /// Starts a new run in `out` (which must not exist, or be empty).
    pub fn new(cfg: RlConfig, out: &Path, reporter: &dyn Reporter) -> Result<Trainer> {
        cfg.check()?;
        if out.exists() && std::fs::read_dir(out).at(out)?.next().is_some() {
            return Err(Error::Usage(format!(
                "run folder {} exists and is not empty (continue it with --resume {0})",
                out.display()
            )));
        }
        let t = Self::build(cfg, out, None, reporter)?;
        std::fs::create_dir_all(out).at(out)?;
        let text = serde_json::to_string_pretty(&json!({
            "warp_version": env!("CARGO_PKG_VERSION"),
            "config": t.cfg.to_json(),
        }))
        .unwrap_or_default();
        write_file_atomic(&out.join("run.json"), (text + "\n").as_bytes())?;
        std::fs::File::create(out.join("metrics.jsonl")).at(out.join("metrics.jsonl"))?;
        Ok(t)
    }

    /// Continues the run in `out` from its last complete checkpoint (or from the start if it
    /// has none), with its recorded settings; `steps` may extend it.
    pub fn resume(out: &Path, steps: Option<u64>, reporter: &dyn Reporter) -> Result<Trainer> {
        let run_json = out.join("run.json");
        let text = std::fs::read_to_string(&run_json).at(&run_json)?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(&run_json, format!("not valid JSON: {e}")))?;
        let mut cfg = RlConfig::from_json(
            v.get("config")
                .ok_or_else(|| Error::format(&run_json, "no 'config'"))?,
            &run_json,
        )?;
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
        let last = checkpoints(out)?.pop();
        let t = Self::build(cfg, out, last.as_ref().map(|(_, p)| p.as_path()), reporter)?;
        // Metrics of steps after the checkpoint are redone.
        let mpath = out.join("metrics.jsonl");
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
        let device = parse_device(&cfg.device)?;
        let kind = if cfg.bf16 {
            Kind::BFloat16
        } else {
            Kind::Float
        };
        let ck = crate::io::open_spec(&cfg.model, reporter)?;
        let model_dir = ck.dir.clone();
        let config = super::LlamaConfig::from_dir(&model_dir)?;
        let tok = Tokenizer::from_dir(&model_dir)?;
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
        let exact_on_disk = !cfg.bf16 && ck.tensors().iter().all(|t| t.dtype == DType::F32);
        let mut init = LlamaModel::from_checkpoint(&ck, config.clone(), device, Kind::Float)?;
        init.vs.freeze();
        let (policy, mut ema, opt, step) = match from {
            None => {
                let policy = LlamaModel::from_checkpoint(&ck, config.clone(), device, kind)?;
                let ema = LlamaModel::from_checkpoint(&ck, config, device, Kind::Float)?;
                let opt = Adam::new(&policy, adam_config(&cfg))?;
                (policy, ema, opt, 0)
            }
            Some(dir) => {
                let policy = LlamaModel::load_with_kind(dir.join("policy"), device, kind)?;
                let ema = LlamaModel::load_with_kind(dir.join("ema"), device, Kind::Float)?;
                let state_dir = dir.join("trainer");
                let sj = state_dir.join(STATE_FILE);
                let sv: Value = serde_json::from_str(&std::fs::read_to_string(&sj).at(&sj)?)
                    .map_err(|e| Error::format(&sj, format!("not valid JSON: {e}")))?;
                let step = sv
                    .get("step")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| Error::format(&sj, "no 'step'"))?;
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
                let mut opt = Adam::new(&policy, adam_config(&cfg))?;
                opt.load_state(step, &mut get)?;
                (policy, ema, opt, step)
            }
        };
        ema.vs.freeze();
        let records = read_prompts(&cfg.prompts)?;
        let mut prompt_ids = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            let ids = tok.encode(&r.prompt)?;
            if ids.len() + cfg.max_new_tokens > policy.config.max_position_embeddings {
                return Err(Error::format(
                    &cfg.prompts,
                    format!(
                        "line {}: prompt of {} tokens + --max-new-tokens {} exceeds the model's \
                         max_position_embeddings {}",
                        i + 1,
                        ids.len(),
                        cfg.max_new_tokens,
                        policy.config.max_position_embeddings
                    ),
                ));
            }
            prompt_ids.push(ids);
        }
        if !(cfg.reward_timeout.is_finite() && cfg.reward_timeout > 0.0) {
            return Err(Error::Usage(format!(
                "--reward-timeout must be > 0 seconds, got {}",
                cfg.reward_timeout
            )));
        }
        let reward = reward::from_spec_opts(
            &cfg.reward,
            &reward::RewardOptions {
                timeout: std::time::Duration::from_secs_f64(cfg.reward_timeout),
                device,
                ..reward::RewardOptions::default()
            },
        )?;
        Ok(Trainer {
            prompts: records.into_iter().map(|r| r.prompt).collect(),
            prompt_ids,
            out: out.to_path_buf(),
            model_dir,
            tok,
            policy,
            ema,
            init,
            opt,
            reward,
            exact_on_disk,
            step,
            cfg,
        })
    }

    /// Runs the remaining steps, checkpointing every `save_every` and at the end; writes
    /// `final/{policy,ema}`. Returns the path of `final`.
    pub fn run(&mut self, reporter: &dyn Reporter) -> Result<PathBuf> {
        let mpath = self.out.join("metrics.jsonl");
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
                self.save_checkpoint(&self.out.join(step_dir_name(self.step)), true)?;
            }
        }
        reporter.finish();
        let fin = self.out.join("final");
        if !fin.exists() {
            self.save_checkpoint(&fin, false)?;
        }
        Ok(fin)
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
        let texts: Vec<(String, String)> = chosen
            .iter()
            .flat_map(|&i| std::iter::repeat(i).take(c.n))
            .zip(&g.completions)
            .map(|(i, comp)| Ok((self.prompts[i].clone(), self.tok.decode(comp)?)))
            .collect::<Result<_>>()?;
        let rewards = self.reward.score(&texts)?;
        check_rewards(&rewards, texts.len(), self.reward.name())?;
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
        self.update_ema()?;
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
            Some(self.probe_ema(&pairs, &gen_opts)?)
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

    /// θ_ema ← (1 − μ) θ_ema + μ θ, in f32, from the optimizer's exact f32 weights (the master
    /// copies when the policy trains in bf16: the EMA then averages the trained trajectory, not
    /// its bf16 rounding, and equals the EMA of the f32 policies the run saves).
    fn update_ema(&mut self) -> Result<()> {
        let mu = self.cfg.mu;
        let weights: std::collections::HashMap<&str, Tensor> =
            self.opt.weights_f32().into_iter().collect();
        tch::no_grad(|| {
            for (name, mut e) in self.ema.vs.variables() {
                let p = weights.get(name.as_str()).ok_or_else(|| {
                    Error::Internal(format!("EMA parameter '{name}' is not optimised"))
                })?;
                e *= 1.0 - mu;
                e += p * mu;
            }
            Ok(())
        })
    }

    /// Reward and KL(ema ‖ init) of the EMA's own samples on this step's prompts.
    fn probe_ema(
        &mut self,
        pairs: &[(Vec<i64>, Vec<i64>)],
        o: &GenerateOptions,
    ) -> Result<(f64, f64)> {
        let prompts: Vec<Vec<i64>> = pairs.iter().map(|(p, _)| p.clone()).collect();
        let g = generate(&self.ema, &prompts, o)?;
        let texts: Vec<(String, String)> = prompts
            .iter()
            .zip(&g.completions)
            .map(|(p, comp)| Ok((self.tok.decode(p)?, self.tok.decode(comp)?)))
            .collect::<Result<_>>()?;
        let rewards = self.reward.score(&texts)?;
        check_rewards(&rewards, texts.len(), self.reward.name())?;
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
            let dir = staging.path().join("trainer");
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
            let state = json!({"step": self.step, "config": self.cfg.to_json()});
            let text = serde_json::to_string_pretty(&state).unwrap_or_default() + "\n";
            write_file_atomic(&dir.join(STATE_FILE), text.as_bytes())?;
        }
        staging.commit()
    }
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
        return Err(Error::Usage(format!(
            "reward {name} returned {} values for {expected} completions",
            rewards.len()
        )));
    }
    if let Some((i, x)) = rewards.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(Error::Usage(format!(
            "reward {name} returned {x} for completion {i}"
        )));
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
        t.f_copy_data_u8(&mut buf, n).map_err(tch_err)?;
        w.write(&buf)?;
    }
    w.finish()?;
    Ok(())
}
