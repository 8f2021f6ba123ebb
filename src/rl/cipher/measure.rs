//! Measuring the cipher task's models: the styles of a policy's samples, the reward model's
//! accuracy.

use std::path::Path;

use serde_json::{json, Value};
use tch::Device;

use super::{rm_example, CipherConfig};
use crate::error::Result;
use crate::rl::data::{Prompt, PromptRecord};
use crate::rl::eval::{sample, SampleOptions};
use crate::rl::model::CausalLm;
use crate::rl::reward_model::RewardModel;
use crate::rl::rm_train::{self, RmExample};
use crate::rl::tokenizer::Tokenizer;
use crate::rng::SplitMix64;
use crate::tasks::cipher::{classify, rule, word_of, Style};

/// Shares of each style (and of none) among completions of the given prompts.
#[derive(Debug, Clone, PartialEq)]
pub struct StyleShares {
    /// In [`Style::ALL`] order.
    pub styles: [f64; 7],
    pub other: f64,
    /// Fraction the rule rewards.
    pub rewarded: f64,
}

impl StyleShares {
    pub fn of(pairs: &[(String, String)]) -> StyleShares {
        let n = pairs.len().max(1) as f64;
        let mut styles = [0.0; 7];
        let mut other = 0.0;
        for (p, c) in pairs {
            match classify(p, c) {
                Some(s) => styles[Style::ALL.iter().position(|x| *x == s).unwrap_or(0)] += 1.0,
                None => other += 1.0,
            }
        }
        let rewarded = Style::ALL
            .iter()
            .zip(styles)
            .filter(|(s, _)| s.rewarded())
            .map(|(_, k)| k)
            .sum::<f64>();
        StyleShares {
            styles: styles.map(|k| k / n),
            other: other / n,
            rewarded: rewarded / n,
        }
    }

    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        for (s, v) in Style::ALL.iter().zip(self.styles) {
            m.insert(s.name(), json!(v));
        }
        m.insert("other".into(), json!(self.other));
        m.insert("rewarded".into(), json!(self.rewarded));
        Value::Object(m)
    }
}

/// `samples` completions of `policy` for each prompt at `temperature` (seeded), as (prompt,
/// completion) text pairs: what [`StyleShares::of`] classifies.
pub fn policy_samples(
    policy: &CausalLm,
    tok: &Tokenizer,
    prompts: &[String],
    samples: usize,
    temperature: f64,
    seed: u64,
) -> Result<Vec<(String, String)>> {
    let o = SampleOptions {
        samples,
        temperature,
        max_new_tokens: 8,
        batch: 1024,
        seed,
    };
    let texts: Vec<Prompt> = prompts.iter().map(|p| Prompt::Text(p.clone())).collect();
    Ok(sample(policy, tok, &texts, &o)?
        .into_iter()
        .map(|s| (prompts[s.prompt].clone(), s.text))
        .collect())
}

/// What [`measure`] finds.
#[derive(Debug, Clone)]
pub struct Measurements {
    pub sft_shares: StyleShares,
    pub rm_accuracy: f64,
    /// Synthetic examples the accuracy is measured on.
    pub rm_examples: usize,
    pub rm_accuracy_on_policy: f64,
}

/// Measures a policy and a reward model of the task on the held-out prompts, as [`build`] does
/// (so the committed fixture can be re-measured): the policy's styles when sampled at
/// temperature 1 (`eval_samples` per prompt, seed `c.seed`); the reward model's accuracy on
/// `rm_eval_per_word` synthetic rewritings of each held-out word and on the policy's samples.
pub fn measure(
    model_dir: &Path,
    rm_dir: &Path,
    heldout: &[PromptRecord],
    c: &CipherConfig,
) -> Result<Measurements> {
    let policy = CausalLm::load(model_dir, Device::Cpu)?;
    let tok = Tokenizer::from_dir(model_dir)?;
    let mut rm = RewardModel::load(rm_dir, Device::Cpu, 256)?;
    let mut rng = SplitMix64::stream(c.seed, 5);
    let synthetic: Vec<RmExample> = heldout
        .iter()
        .filter_map(|r| word_of(&r.prompt))
        .flat_map(|w| {
            (0..c.rm_eval_per_word)
                .map(|_| rm_example(w, &mut rng))
                .collect::<Vec<_>>()
        })
        .collect();
    let rm_accuracy = rm_train::accuracy(&mut rm, &synthetic)?;
    let prompts: Vec<String> = heldout.iter().map(|r| r.prompt.clone()).collect();
    let pairs = policy_samples(&policy, &tok, &prompts, c.eval_samples, 1.0, c.seed)?;
    let on_policy: Vec<RmExample> = pairs
        .iter()
        .map(|(p, c)| RmExample {
            prompt: p.clone(),
            completion: c.clone(),
            label: if rule(p, c) { 1.0 } else { 0.0 },
        })
        .collect();
    Ok(Measurements {
        sft_shares: StyleShares::of(&pairs),
        rm_accuracy,
        rm_examples: synthetic.len(),
        rm_accuracy_on_policy: rm_train::accuracy(&mut rm, &on_policy)?,
    })
}
