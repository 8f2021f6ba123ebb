//! The settings of the RL tools, each defined once: one struct is the command's flags (clap:
//! the doc comments are the `--help` text, the `default_value`s the defaults), its config file
//! and its record in the run folder (serde). `Default` parses an empty command line, so a
//! default is written in one place; adding a setting is adding one field.
//!
//! Compiled in every build (the commands appear in `warp --help` without the `rl` feature and
//! say that they need it); the code that uses the settings is behind the feature.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::device::Device;
use crate::error::{Error, IoContext, Result};

/// Policy-gradient baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Baseline {
    /// Leave-one-out: each sample's baseline is the mean r_β of the prompt's other samples.
    Rloo,
    /// Plain REINFORCE (the paper's).
    None,
    /// GRPO: r_β minus the mean r_β of the prompt's n samples, divided by their standard
    /// deviation (unbiased, + 1e-4).
    Grpo,
    /// Dr. GRPO: r_β minus the mean r_β of the prompt's n samples, not divided by the standard
    /// deviation.
    #[serde(rename = "dr-grpo")]
    #[value(name = "dr-grpo")]
    DrGrpo,
}

impl Baseline {
    /// Whether a sample's advantage depends on the other samples of its prompt.
    pub fn grouped(self) -> bool {
        self != Baseline::None
    }
}

/// What the KL penalty points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Anchor {
    /// The policy's own exponential moving average (WARP).
    Ema,
    /// The frozen init (the classic RLHF anchor; the paper's ablation).
    Init,
}

/// How the KL penalty to the anchor enters the objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KlEstimator {
    /// β·log(π/π_anchor) of each sampled completion subtracted from its reward (the paper's
    /// KL-regularised reward: a sequence-level estimate inside the advantages).
    Sampled,
    /// A token-level loss β·Σ_t KL(π ‖ π_anchor) at each completion position, summed exactly
    /// over the policy's --kl-topk most likely tokens with a sampled correction for the rest
    /// (unbiased in value and gradient; EMA-PG's "top-k KL", arXiv 2602.04417).
    Topk,
}

/// Compute dtype of the policy while it trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainDtype {
    /// bf16 on a GPU, f32 on the CPU (a run records the dtype it chose).
    Auto,
    F32,
    /// bf16 forward and backward; f32 master weights, Adam moments and EMA.
    Bf16,
}

impl TrainDtype {
    /// The dtype `auto` stands for on `cuda` (a GPU) or not.
    pub fn resolve(self, cuda: bool) -> TrainDtype {
        match self {
            TrainDtype::Auto if cuda => TrainDtype::Bf16,
            TrainDtype::Auto => TrainDtype::F32,
            d => d,
        }
    }
}

/// Dtype of the saved policy and EMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaveDtype {
    /// f32: the trained weights exactly (task vectors are not rounded to the init's precision).
    F32,
    /// The init's dtype, tensor by tensor (bf16 rounds away changes below half a bf16 step).
    Same,
}

/// Which trainer runs the RL stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trainer {
    /// warp's own trainer (libtorch, one device).
    Warp,
    /// TRL's RLOOTrainer or GRPOTrainer under `accelerate launch` (FSDP / DeepSpeed across GPUs
    /// and nodes; docs/SCALE.md), same run layout.
    Trl,
}

/// The settings of one RL run (`warp rl`): its flags, its `--config` file and the `config` of
/// the run folder's `run.json`.
///
/// Paths and model specs may name the built-in task's files: `builtin:arith/model`,
/// `builtin:arith/train.jsonl` (see [`crate::builtin`]).
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RlConfig {
    /// Init policy: checkpoint folder or hub id org/name[@rev] (default: the built-in SFT model).
    #[arg(value_name = "MODEL", default_value = "builtin:arith/model")]
    pub model: String,
    /// Prompt set, JSONL: one {"prompt": "…"} (plain text) or {"messages": [{"role": …,
    /// "content": …}, …]} (a conversation, rendered with the chat template) per line.
    #[arg(long, value_name = "FILE", default_value = "builtin:arith/train.jsonl")]
    pub prompts: PathBuf,
    /// Chat template of "messages" prompts: auto (the model's own), none (refuse them), or a
    /// Jinja file (or the name of one of the model's named templates).
    #[arg(long, value_name = "auto|none|FILE", default_value_t = crate::rl::chat::TemplateChoice::Auto)]
    pub chat_template: crate::rl::chat::TemplateChoice,
    /// verify:arith (built-in task), model:PATH (reward model with a scalar head) or
    /// cmd:PROGRAM (reads JSONL {prompt, completion} on stdin, prints one number per line).
    #[arg(long, value_name = "SPEC", default_value = "verify:arith")]
    pub reward: String,
    /// Steps T: each samples a batch and makes --updates-per-batch optimizer updates on it.
    #[arg(long, default_value_t = 100)]
    pub steps: u64,
    /// Prompts per step.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Completions per prompt.
    #[arg(short, long, default_value_t = 4)]
    pub n: usize,
    /// KL penalty coefficient β.
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
    /// EMA update rate μ: θema ← (1−μ)θema + μθ after every step. (The paper's μ = 0.01 gives
    /// the EMA a horizon of ~100 steps in a 9k-step run; the built-in task trains for ~100
    /// steps, so the default scales the horizon down to ~20.)
    #[arg(long, default_value_t = 0.05)]
    pub mu: f64,
    /// Sampling temperature of the RL samples (log-probabilities are those of the tempered
    /// distribution, so the gradient is on-policy).
    #[arg(long, default_value_t = 0.9)]
    pub temperature: f64,
    /// Longest completion, in tokens.
    #[arg(long, default_value_t = 8)]
    pub max_new_tokens: usize,
    /// Adam learning rate (after warm-up).
    #[arg(long, default_value_t = 3e-4)]
    pub lr: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 10)]
    pub warmup: u64,
    /// Global gradient-norm clip (0: none).
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,
    /// Policy-gradient baseline.
    #[arg(long, value_enum, default_value_t = Baseline::Rloo)]
    pub baseline: Baseline,
    /// Optimizer updates per batch of samples K. The first is on-policy; the next K − 1 weight
    /// each token by the clipped importance ratio π_θ/π_old against the log-probabilities the
    /// batch was sampled with (PPO/GRPO's surrogate, --clip-eps), the advantages kept.
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub updates_per_batch: usize,
    /// Clip range ε of the importance ratio (updates after the first of a batch): a token whose
    /// ratio left [1 − ε, 1 + ε] in the direction its advantage pushes gets no gradient.
    #[arg(long, value_name = "EPS", default_value_t = 0.2)]
    pub clip_eps: f64,
    /// Anchor of the KL penalty.
    #[arg(long, value_enum, default_value_t = Anchor::Ema)]
    pub anchor: Anchor,
    /// Estimator of the KL penalty: sampled (in the reward, the paper's) or topk (a token-level
    /// loss, exact over the top --kl-topk tokens; docs/RL.md).
    #[arg(long, value_enum, default_value_t = KlEstimator::Sampled)]
    pub kl_estimator: KlEstimator,
    /// Tokens summed exactly at each position by --kl-estimator topk (the vocabulary size or more:
    /// the exact KL).
    #[arg(long, value_name = "K", default_value_t = 32)]
    pub kl_topk: usize,
    /// Reward minus this times the completion length in tokens (paper App. E: 0.0005).
    #[arg(long, default_value_t = 0.0)]
    pub length_penalty: f64,
    /// Seed of every random choice (prompts, samples): a run is reproducible from it.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Resumable checkpoint every this many steps (and at the end).
    #[arg(long, default_value_t = 50)]
    pub save_every: u64,
    /// Compute dtype of the policy: auto (bf16 on a GPU, f32 on the CPU), f32, or bf16 (bf16
    /// forward and backward with f32 master weights, Adam moments and EMA; TF32 is used for f32
    /// matrix products on a GPU).
    #[arg(long, value_enum, default_value_t = TrainDtype::Auto)]
    pub dtype: TrainDtype,
    /// Dtype of the saved policy and EMA (final/, step-*/): f32 keeps the trained weights
    /// exactly, so the merges (SLERP angles, task vectors, LITI) see every change; same rounds
    /// them to the init's dtype (a bf16 init then loses every change below half a bf16 step).
    #[arg(long, value_enum, default_value_t = SaveDtype::F32)]
    pub save_dtype: SaveDtype,
    /// Sequences per micro-batch: generation, scoring and the backward pass run on this many at a
    /// time, the gradients summed (the update equals that of the whole batch). 0: the largest
    /// multiple of n whose activations take at most 512 MiB (CPU) or 16 GiB (GPU) by the memory
    /// plan (`--dry-run` shows it); a run records the value it used.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub micro_batch: usize,
    /// Sequences sampled together, independent of the micro-batch (generation holds a KV cache
    /// and one step's logits, far less than training): each distinct prompt is prefilled once
    /// for its n samples and ended sequences leave the batch. 0: the largest multiple of n
    /// (up to the whole batch) whose generation takes no more memory than training one
    /// micro-batch, and at most 512 MiB (CPU) or 16 GiB (GPU), by the memory plan. The samples
    /// do not depend on it (each has its own random stream); a run records the value it used.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub gen_batch: usize,
    /// Score the frozen init for the kl_init metric every N steps (an extra forward pass; 0:
    /// never; other steps record kl_init as null). With --anchor init it is the anchor, scored
    /// every step anyway.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub metrics_every: u64,
    /// Sequences per forward pass of a model: reward.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub reward_batch: usize,
    /// Refuse to start (before loading any weights) when the memory plan's peak exceeds SIZE
    /// (e.g. 16GB, 2GiB), and say which micro-batch would fit.
    #[arg(long, value_name = "SIZE")]
    pub max_memory: Option<String>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value_t = Device::Auto)]
    pub device: Device,
    /// Seconds a cmd: reward may take per call before it is killed.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    pub reward_timeout: f64,
    /// The trainer: warp (libtorch, one device) or trl (TRL's RLOOTrainer, or GRPOTrainer for
    /// --baseline grpo|dr-grpo, under `accelerate launch`, for models beyond one device; needs
    /// `source scripts/setup-trl.sh`, or WARP_TRL_PYTHON; see docs/SCALE.md).
    #[arg(long, value_enum, default_value_t = Trainer::Warp)]
    pub backend: Trainer,
    /// trl backend: the accelerate config file (e.g. python/accelerate/fsdp.yaml); without one,
    /// a single process.
    #[arg(long, value_name = "FILE")]
    pub accelerate_config: Option<PathBuf>,
    /// trl backend: further RLOOConfig / GRPOConfig settings, a JSON object (e.g.
    /// '{"gradient_checkpointing": true, "gradient_accumulation_steps": 4}').
    #[arg(long, value_name = "JSON")]
    pub trl_args: Option<String>,
    /// Train LoRA adapters of rank R on the frozen init instead of every weight: the policy is
    /// W + s·B·A on each --lora-targets module (B starts at 0, A random as PEFT's), Adam and the
    /// EMA run over A and B only, and final/{policy,ema}, step-*/ are PEFT adapters (docs/RL.md).
    #[arg(long, value_name = "R")]
    pub lora: Option<usize>,
    /// LoRA α: the adapters' scale s is α/r (α/√r with --rslora). Default: r (s = 1).
    #[arg(long, value_name = "ALPHA")]
    pub lora_alpha: Option<f64>,
    /// LoRA target modules: all-linear (every attention and MLP projection of the decoder
    /// layers: q/k/v/o_proj, gate/up/down_proj, or Phi-3's fused qkv_proj/gate_up_proj), or
    /// module names separated by commas (e.g. q_proj,v_proj), matched against the last part of
    /// each module's path as PEFT does.
    #[arg(long, value_name = "NAMES", default_value = "all-linear")]
    pub lora_targets: String,
    /// rsLoRA: scale the adapters by α/√r instead of α/r.
    #[arg(long)]
    pub rslora: bool,
}

impl Default for RlConfig {
    /// The defaults of the flags.
    fn default() -> Self {
        defaults()
    }
}

/// The ids of the arguments of `m` given on the command line (not defaults).
pub fn given(m: &clap::ArgMatches) -> Vec<String> {
    m.ids()
        .map(|id| id.as_str())
        .filter(|id| m.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
        .map(str::to_string)
        .collect()
}

/// The value of a clap `Args` struct when no argument is given: its declared defaults. A field
/// without a default is a bug caught by the unit tests below.
pub(crate) fn defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let cmd = T::augment_args(clap::Command::new("defaults").no_binary_name(true));
    let parsed = cmd
        .try_get_matches_from(std::iter::empty::<String>())
        .and_then(|m| T::from_arg_matches(&m));
    match parsed {
        Ok(v) => v,
        Err(e) => panic!("a setting lacks a default value: {e}"),
    }
}

/// Most optimizer updates on one batch of samples.
pub const MAX_UPDATES_PER_BATCH: usize = 64;

fn positive(field: &str, ok: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::setting(field, msg()))
    }
}

impl RlConfig {
    /// Checks the values that no type rules out; errors name the field.
    pub fn check(&self) -> Result<()> {
        for (field, v) in [
            ("steps", self.steps),
            ("batch", self.batch as u64),
            ("n", self.n as u64),
            ("max_new_tokens", self.max_new_tokens as u64),
            ("save_every", self.save_every),
            ("reward_batch", self.reward_batch as u64),
        ] {
            positive(field, v > 0, || "must be > 0".into())?;
        }
        // Sizes that would make planning (or the first allocation) take the machine down.
        let max = crate::limits::MAX_BATCH;
        for (field, v) in [
            ("batch", self.batch),
            ("n", self.n),
            ("max_new_tokens", self.max_new_tokens),
            ("reward_batch", self.reward_batch),
            ("micro_batch", self.micro_batch),
            ("gen_batch", self.gen_batch),
            ("batch × n", self.batch.saturating_mul(self.n)),
        ] {
            positive(field, v <= max, || {
                format!("must be at most {max}, got {v}")
            })?;
        }
        positive("n", !self.baseline.grouped() || self.n >= 2, || {
            let name = serde_json::to_value(self.baseline).unwrap_or_default();
            format!(
                "the {} baseline needs at least 2 completions per prompt, got {}",
                name.as_str().unwrap_or("grouped"),
                self.n
            )
        })?;
        positive(
            "updates_per_batch",
            (1..=MAX_UPDATES_PER_BATCH).contains(&self.updates_per_batch),
            || {
                format!(
                    "must be in 1..={MAX_UPDATES_PER_BATCH}, got {}",
                    self.updates_per_batch
                )
            },
        )?;
        positive("kl_topk", (1..=1 << 24).contains(&self.kl_topk), || {
            format!("must be in 1..=16777216, got {}", self.kl_topk)
        })?;
        positive(
            "clip_eps",
            self.clip_eps.is_finite() && self.clip_eps > 0.0 && self.clip_eps < 1.0,
            || format!("must be in (0, 1), got {}", self.clip_eps),
        )?;
        positive("mu", self.mu > 0.0 && self.mu <= 1.0, || {
            format!("must be in (0, 1], got {}", self.mu)
        })?;
        positive(
            "temperature",
            self.temperature.is_finite() && self.temperature > 0.0,
            || format!("must be > 0, got {}", self.temperature),
        )?;
        for (field, x) in [
            ("beta", self.beta),
            ("lr", self.lr),
            ("grad_clip", self.grad_clip),
            ("length_penalty", self.length_penalty),
        ] {
            positive(field, x.is_finite() && x >= 0.0, || {
                format!("must be a finite number ≥ 0, got {x}")
            })?;
        }
        if let Some(m) = &self.max_memory {
            crate::io::writer::parse_size(m).map_err(|e| Error::setting("max_memory", e))?;
        }
        crate::limits::seconds("reward_timeout", self.reward_timeout, true)?;
        self.check_lora()?;
        self.check_backend()
    }

    /// The LoRA settings: a positive rank, and the other LoRA settings only with one; what
    /// LoRA cannot be combined with.
    fn check_lora(&self) -> Result<()> {
        let Some(r) = self.lora else {
            for (field, set) in [
                ("lora_alpha", self.lora_alpha.is_some()),
                ("rslora", self.rslora),
                ("lora_targets", self.lora_targets != "all-linear"),
            ] {
                positive(field, !set, || {
                    "applies to LoRA runs only (--lora R)".into()
                })?;
            }
            return Ok(());
        };
        positive("lora", (1..=65536).contains(&r), || {
            format!("the LoRA rank must be in 1..=65536, got {r}")
        })?;
        if let Some(a) = self.lora_alpha {
            positive("lora_alpha", a.is_finite() && a > 0.0, || {
                format!("must be a finite number > 0, got {a}")
            })?;
        }
        let names = self.lora_target_names();
        positive("lora_targets", !names.is_empty(), || {
            "give module names (e.g. q_proj,v_proj) or all-linear".into()
        })?;
        positive("save_dtype", self.save_dtype == SaveDtype::F32, || {
            "LoRA adapters are saved in f32 (the trained factors exactly); --save-dtype same \
             applies to full fine-tuning only"
                .into()
        })
    }

    /// The LoRA target names given (`all-linear` as itself).
    pub fn lora_target_names(&self) -> Vec<String> {
        self.lora_targets
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    /// The LoRA scale s: α/r, or α/√r with rsLoRA (α defaults to r).
    pub fn lora_scale(&self) -> Option<f64> {
        let r = self.lora? as f64;
        let alpha = self.lora_alpha.unwrap_or(r);
        Some(if self.rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        })
    }

    /// What the trl backend cannot do (RLOOTrainer: docs/SCALE.md), and its own settings.
    fn check_backend(&self) -> Result<()> {
        if self.backend == Trainer::Warp {
            for (field, set) in [
                ("accelerate_config", self.accelerate_config.is_some()),
                ("trl_args", self.trl_args.is_some()),
            ] {
                positive(field, !set, || "applies to the trl backend only".into())?;
            }
            return Ok(());
        }
        positive(
            "kl_estimator",
            self.kl_estimator == KlEstimator::Sampled,
            || "topk needs the warp backend (TRL computes its own sampled KL)".into(),
        )?;
        // rloo: RLOOTrainer; grpo, dr-grpo: GRPOTrainer (K and ε: TRL's num_iterations, epsilon).
        positive("baseline", self.baseline != Baseline::None, || {
            "the trl backend has the rloo, grpo and dr-grpo baselines (RLOOTrainer, GRPOTrainer); \
             none (plain REINFORCE) needs the warp backend"
                .into()
        })?;
        positive(
            "beta",
            self.anchor != Anchor::Ema || self.beta > 0.0,
            || {
                "must be > 0 with the EMA anchor on the trl backend (TRL keeps no reference model, \
             hence no EMA, when beta is 0)"
                    .into()
            },
        )?;
        if let Some(j) = &self.trl_args {
            let v: serde_json::Value = serde_json::from_str(j)
                .map_err(|e| Error::setting("trl_args", format!("not valid JSON: {e}")))?;
            positive("trl_args", v.is_object(), || "must be a JSON object".into())?;
        }
        Ok(())
    }

    /// Reads a config file: JSON, or TOML when the name ends in `.toml`. Keys not given keep
    /// their defaults; an unknown key is an error naming the file and the key.
    pub fn from_file(path: &Path) -> Result<RlConfig> {
        let text = std::fs::read_to_string(path).at(path)?;
        let parsed = if path.extension().is_some_and(|e| e == "toml") {
            toml::from_str(&text).map_err(|e| e.to_string())
        } else {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        };
        // A settings error: exit code 2, like a bad flag.
        parsed.map_err(|e| Error::setting(path.display().to_string(), e.trim_end().to_string()))
    }

    /// This config with the keys of `over` (a JSON object of settings) replaced; errors name
    /// `origin` and the key.
    pub fn with_overrides(
        &self,
        over: &serde_json::Map<String, serde_json::Value>,
        origin: &Path,
    ) -> Result<RlConfig> {
        let mut v = serde_json::to_value(self).map_err(|e| Error::Internal(e.to_string()))?;
        let base = v.as_object().cloned().unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            for (k, x) in over {
                obj.insert(k.clone(), x.clone());
            }
        }
        // A settings error (unknown key, wrong type, negative count) exits 2 like any other, and
        // names the key (serde's message for a wrong type does not).
        serde_json::from_value(v).map_err(|e| {
            let at = origin.display().to_string();
            let key = over.iter().find_map(|(k, x)| {
                let mut m = base.clone();
                m.insert(k.clone(), x.clone());
                serde_json::from_value::<RlConfig>(serde_json::Value::Object(m))
                    .is_err()
                    .then(|| k.clone())
            });
            match key {
                Some(k) => Error::setting(at, format!("key '{k}': {e}")),
                None => Error::setting(at, e.to_string()),
            }
        })
    }

    /// Settings layered, the later winning: this config (the defaults, or a config file's), then
    /// the keys of `over` (a table of settings), then the flags given on the command line (the
    /// arguments of `m` given there, whose values `flags`, the same command line parsed, holds).
    /// The one layering of "config file, then the flags given" (`warp rl --config`, a
    /// pipeline's `rl` table and `rl_args`); errors name `origin` and the key.
    pub fn layered(
        &self,
        over: &serde_json::Map<String, serde_json::Value>,
        flags: &RlConfig,
        m: &clap::ArgMatches,
        origin: &Path,
    ) -> Result<RlConfig> {
        let mut over = over.clone();
        let flags = serde_json::to_value(flags).map_err(|e| Error::Internal(e.to_string()))?;
        for id in given(m) {
            if let Some(v) = flags.get(&id) {
                over.insert(id, v.clone());
            }
        }
        self.with_overrides(&over, origin)
    }

    /// The settings as a JSON object (what `run.json` records under `config`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// The settings of `warp sft` (training the built-in model).
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftConfig {
    /// Optimizer steps.
    #[arg(long, default_value_t = 2500)]
    pub steps: u64,
    /// Sequences per step.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Peak learning rate (AdamW, linear warm-up then decay).
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 100)]
    pub warmup: u64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How often the corpus shows the right answer.
    #[arg(long, default_value_t = 0.65)]
    pub p_correct: f64,
    /// Hidden size of the model.
    #[arg(long, default_value_t = 128)]
    pub hidden: usize,
    /// Transformer blocks.
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Key/value heads (grouped-query attention).
    #[arg(long, default_value_t = 2)]
    pub kv_heads: usize,
    /// Hidden size of the MLP.
    #[arg(long, default_value_t = 352)]
    pub intermediate: usize,
    /// Sampled completions per held-out prompt when measuring.
    #[arg(long = "samples", default_value_t = 4)]
    pub eval_samples: usize,
}

impl Default for SftConfig {
    /// The defaults of the flags.
    fn default() -> Self {
        defaults()
    }
}

impl SftConfig {
    /// Checks the values that no type rules out; errors name the field.
    pub fn check(&self) -> Result<()> {
        positive("steps", self.steps > 0, || "must be > 0".into())?;
        positive("batch", self.batch > 0, || "must be > 0".into())?;
        positive(
            "p_correct",
            self.p_correct > 0.0 && self.p_correct <= 1.0,
            || format!("must be in (0, 1], got {}", self.p_correct),
        )?;
        positive("heads", self.heads > 0, || "must be > 0".into())?;
        positive("kv_heads", self.kv_heads > 0, || "must be > 0".into())?;
        positive("hidden", self.hidden % self.heads == 0, || {
            format!(
                "{} must be a multiple of the number of heads {}",
                self.hidden, self.heads
            )
        })?;
        positive(
            "heads",
            self.heads % self.kv_heads == 0 && (self.hidden / self.heads) % 2 == 0,
            || "must be a multiple of kv_heads, with an even head size".into(),
        )
    }

    /// The settings as a JSON object (recorded in `sft.json`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_come_from_the_flags() {
        let c = RlConfig::default();
        assert_eq!(c.model, "builtin:arith/model");
        assert_eq!(c.prompts, PathBuf::from("builtin:arith/train.jsonl"));
        assert_eq!((c.steps, c.batch, c.n, c.save_every), (100, 16, 4, 50));
        assert_eq!((c.beta, c.mu, c.temperature, c.lr), (0.1, 0.05, 0.9, 3e-4));
        assert_eq!((c.baseline, c.anchor), (Baseline::Rloo, Anchor::Ema));
        assert_eq!((c.dtype, c.device), (TrainDtype::Auto, Device::Auto));
        assert_eq!(
            (c.save_dtype, c.micro_batch, c.gen_batch, c.metrics_every),
            (SaveDtype::F32, 0, 0, 10)
        );
        c.check().unwrap();
        let s = SftConfig::default();
        assert_eq!(
            (s.steps, s.batch, s.hidden, s.eval_samples),
            (2500, 128, 128, 4)
        );
        s.check().unwrap();
    }

    #[test]
    fn json_round_trip_and_partial_files() {
        let c = RlConfig {
            anchor: Anchor::Init,
            device: Device::Cuda(1),
            dtype: TrainDtype::Bf16,
            ..RlConfig::default()
        };
        let v = c.to_json();
        assert_eq!(v["anchor"], "init");
        assert_eq!(v["device"], "cuda:1");
        assert_eq!(v["dtype"], "bf16");
        assert_eq!(v["baseline"], "rloo");
        let back: RlConfig = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
        // Missing keys take the defaults; unknown keys are refused.
        let part: RlConfig = serde_json::from_str(r#"{"steps": 7}"#).unwrap();
        assert_eq!(part.steps, 7);
        assert_eq!(part.batch, RlConfig::default().batch);
        let e = serde_json::from_str::<RlConfig>(r#"{"stepz": 7}"#).unwrap_err();
        assert!(e.to_string().contains("stepz"), "{e}");
        let g: RlConfig =
            serde_json::from_str(r#"{"baseline": "dr-grpo", "updates_per_batch": 4}"#).unwrap();
        assert_eq!((g.baseline, g.updates_per_batch), (Baseline::DrGrpo, 4));
        assert_eq!(g.to_json()["baseline"], "dr-grpo");
        let g: RlConfig = serde_json::from_str(r#"{"baseline": "grpo"}"#).unwrap();
        assert_eq!((g.baseline, g.clip_eps), (Baseline::Grpo, 0.2));
        let e = serde_json::from_str::<RlConfig>(r#"{"baseline": "ppo"}"#).unwrap_err();
        assert!(e.to_string().contains("ppo"), "{e}");
    }

    #[test]
    fn checks_name_the_field() {
        let bad = |f: fn(&mut RlConfig), field: &str| {
            let mut c = RlConfig::default();
            f(&mut c);
            match c.check() {
                Err(Error::Setting { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: {other:?}"),
            }
        };
        bad(|c| c.steps = 0, "steps");
        bad(|c| c.n = 1, "n");
        bad(
            |c| {
                c.baseline = Baseline::Grpo;
                c.n = 1;
            },
            "n",
        );
        bad(|c| c.updates_per_batch = 0, "updates_per_batch");
        bad(|c| c.updates_per_batch = 65, "updates_per_batch");
        bad(|c| c.clip_eps = 0.0, "clip_eps");
        bad(|c| c.clip_eps = 1.0, "clip_eps");
        bad(|c| c.kl_topk = 0, "kl_topk");
        bad(
            |c| {
                c.backend = Trainer::Trl;
                c.kl_estimator = KlEstimator::Topk;
            },
            "kl_estimator",
        );
        bad(
            |c| {
                c.backend = Trainer::Trl;
                c.updates_per_batch = 65;
            },
            "updates_per_batch",
        );
        bad(|c| c.mu = 0.0, "mu");
        bad(|c| c.mu = 1.5, "mu");
        bad(|c| c.temperature = f64::NAN, "temperature");
        bad(|c| c.beta = -1.0, "beta");
        bad(|c| c.reward_timeout = 0.0, "reward_timeout");
        bad(|c| c.trl_args = Some("{}".into()), "trl_args");
        bad(
            |c| {
                c.backend = Trainer::Trl;
                c.baseline = Baseline::None;
            },
            "baseline",
        );
        bad(
            |c| {
                c.backend = Trainer::Trl;
                c.beta = 0.0;
            },
            "beta",
        );
        bad(
            |c| {
                c.backend = Trainer::Trl;
                c.trl_args = Some("[1]".into());
            },
            "trl_args",
        );
        // GRPOTrainer: grpo and dr-grpo, K updates per batch (num_iterations).
        for baseline in [Baseline::Grpo, Baseline::DrGrpo, Baseline::Rloo] {
            let c = RlConfig {
                backend: Trainer::Trl,
                baseline,
                updates_per_batch: 3,
                ..RlConfig::default()
            };
            c.check().unwrap();
        }
        let c = RlConfig {
            backend: Trainer::Trl,
            anchor: Anchor::Init,
            beta: 0.0,
            trl_args: Some(r#"{"gradient_checkpointing": true}"#.into()),
            ..RlConfig::default()
        };
        c.check().unwrap();
        let c = RlConfig {
            n: 1,
            baseline: Baseline::None,
            ..RlConfig::default()
        };
        c.check().unwrap();
    }
}
