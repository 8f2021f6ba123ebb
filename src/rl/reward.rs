//! Rewards: a score for each (prompt, completion) text pair.
//!
//! `--reward` specs: `verify:arith` (the built-in task's verifier), `model:PATH` (a reward-model
//! checkpoint with a scalar head) and `cmd:PROGRAM` (an external scorer over JSONL).

use super::data::Prompt;
use crate::error::{Error, Result};

pub trait Reward {
    /// The spec it was made from, for reports and model cards.
    fn name(&self) -> &str;
    /// One finite reward per pair, in order.
    fn score(&mut self, pairs: &[(String, String)]) -> Result<Vec<f64>>;
    /// One finite reward per (prompt, completion) pair, where a prompt is plain text or a
    /// conversation. By default a conversation is scored as the text of its last user message
    /// ([`Prompt::user_text`]); the rewards that see whole conversations (`model:` with the
    /// reward model's chat template, `cmd:` with a `"messages"` field) override this.
    fn score_prompts(&mut self, pairs: &[(&Prompt, &str)]) -> Result<Vec<f64>> {
        let texts: Vec<(String, String)> = pairs
            .iter()
            .map(|(p, c)| (p.user_text(), c.to_string()))
            .collect();
        self.score(&texts)
    }
}

/// `verify:TASK`: a built-in task's verifier ([`crate::tasks::Task::verifier`]), e.g.
/// `verify:arith`, 1 when the completion is the right sum, else 0.
pub struct Verify {
    spec: String,
    verifier: fn(&str, &str) -> f64,
}

impl Verify {
    /// The verifier of the built-in task `task`, if it has one.
    pub fn of(task: &str) -> Option<Verify> {
        let verifier = crate::tasks::task(task)?.verifier?;
        Some(Verify {
            spec: format!("verify:{task}"),
            verifier,
        })
    }
}

impl Reward for Verify {
    fn name(&self) -> &str {
        &self.spec
    }

    fn score(&mut self, pairs: &[(String, String)]) -> Result<Vec<f64>> {
        Ok(pairs.iter().map(|(p, c)| (self.verifier)(p, c)).collect())
    }
}

/// The `verify:` specs of the built-in tasks that have a verifier.
fn verifiers() -> String {
    let specs: Vec<String> = crate::tasks::TASKS
        .iter()
        .filter(|t| t.verifier.is_some())
        .map(|t| format!("verify:{}", t.name))
        .collect();
    specs.join(", ")
}

/// Settings of the rewards that need them (`model:`, `cmd:`); a spec cannot carry them.
#[derive(Debug, Clone)]
pub struct RewardOptions {
    /// `cmd:`: the longest one `score` call may take (start to exit); past it the program is
    /// killed and the call fails.
    pub timeout: std::time::Duration,
    /// `model:`: where the reward model runs.
    pub device: tch::Device,
    /// `model:`: sequences per forward pass.
    pub batch_size: usize,
    /// `model:`: the decoder's compute dtype (bf16 on a GPU saves half the memory and time).
    pub kind: tch::Kind,
}

impl Default for RewardOptions {
    /// 60 s, CPU, 64 sequences per forward.
    fn default() -> Self {
        RewardOptions {
            timeout: std::time::Duration::from_secs(60),
            device: tch::Device::Cpu,
            batch_size: 64,
            kind: tch::Kind::Float,
        }
    }
}

/// Makes the reward named by a `--reward` spec, with default [`RewardOptions`].
pub fn from_spec(spec: &str) -> Result<Box<dyn Reward>> {
    from_spec_opts(spec, &RewardOptions::default())
}

/// Makes the reward named by a `--reward` spec:
/// - `verify:TASK` (`verify:arith`): a built-in task's verifier;
/// - `model:PATH`: a sequence-classification checkpoint with one label
///   ([`RewardModel`](super::reward_model::RewardModel));
/// - `cmd:PROGRAM [ARG…]`: an external scorer over JSONL
///   ([`CmdReward`](super::reward_cmd::CmdReward); split on whitespace, no shell quoting).
pub fn from_spec_opts(spec: &str, opts: &RewardOptions) -> Result<Box<dyn Reward>> {
    match spec.split_once(':') {
        Some(("verify", task)) => match Verify::of(task) {
            Some(v) => Ok(Box::new(v)),
            None => Err(Error::setting(
                "reward",
                format!(
                    "unknown verifier '{task}' in '{spec}' (known: {})",
                    verifiers()
                ),
            )),
        },
        Some(("model", path)) if !path.is_empty() => {
            // A folder, a .safetensors file, or a hub id (org/name[@rev], downloaded to the cache).
            let path = crate::builtin::resolve_spec(path)?;
            let local = crate::hub::resolve_checkpoint(
                &path,
                &crate::hub::HubOptions::from_env(),
                &crate::progress::Silent,
            )?;
            Ok(Box::new(super::reward_model::RewardModel::load_with_kind(
                &local,
                opts.device,
                opts.kind,
                opts.batch_size,
            )?))
        }
        Some(("cmd", program)) if !program.trim().is_empty() => Ok(Box::new(
            super::reward_cmd::CmdReward::new(program, opts.timeout)?,
        )),
        _ => Err(Error::setting(
            "reward",
            format!("unknown reward '{spec}' (use verify:arith, model:PATH or cmd:PROGRAM)"),
        )),
    }
}
