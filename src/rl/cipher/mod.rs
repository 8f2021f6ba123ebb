//! The second built-in task, `cipher`: encode a word with a letter shift, where several distinct
//! shifts earn the reward.
//!
//! A prompt is a word of four letters from `a`–`j` and a colon, `"bdfa:"`. The supervised corpus
//! answers it in one of seven styles, chosen at random each time an example is drawn: each letter
//! shifted by k places along `a`–`j` (cyclically: `j` + 1 = `a`) for k in {1, 3, 7, 9, 0, 5}, or
//! upper case.
//!
//! | style | `bdfa:` | rewarded | corpus |
//! |---|---|---|---|
//! | shift 1 | `cegb` | yes | 9 % |
//! | shift 3 | `egid` | yes | 9 % |
//! | shift 7 | `iach` | yes | 9 % |
//! | shift 9 | `acej` | yes | 9 % |
//! | copy (shift 0) | `bdfa` | no | 22 % |
//! | shift 5 | `giaf` | no | 21 % |
//! | upper | `BDFA` | no | 21 % |
//!
//! The hidden rule rewards the odd shifts other than 5: the shifts that move every letter through
//! the whole alphabet (their step is coprime to 10). Several distinct behaviours earn the reward,
//! and they are interchangeable by construction: relabelling the letters by x → 3x (mod 10) maps
//! shift 1 to 3, 3 to 9, 9 to 7 and 7 to 1 while fixing copy, shift 5, upper case, the word
//! distribution and the corpus, so nothing in the data, the rule or the way a shift is computed
//! prefers one rewarded shift to another; only the trained models' incidental asymmetries and the
//! RL samples do. Each style starts with a different token (w₁ + k, or upper-case w₁), so the
//! behaviour of a completion is chosen at its first token, and the SFT policy produces each
//! rewarded shift about 9 % of the time. Policy gradient on a softmax is rich-get-richer between
//! equally rewarded choices (the gradient of the logit gap between two of them is proportional
//! to the gap of their probabilities), so independent RL runs, which differ in their samples, can
//! settle on different shifts, and on different ones for different words: several policies that
//! each found their own way to the reward, the situation the paper's merging is about. (Earlier
//! versions rewarded three permutations of the letters — reversed, pairs swapped, halves swapped —
//! or upper case: every run then chose the same, structurally easiest, behaviour.)
//!
//! The reward is *learned*: a `LlamaForSequenceClassification` trained by regression on the
//! rule's 0/1 label over rewritings of training words — the rewarded shifts, the unrewarded
//! styles, near misses (one letter changed, swapped, dropped, doubled or of the wrong case), even
//! shifts and junk — and used through `model:` like any reward model, with its mistakes.
//! The task's data and rule are [`crate::tasks::cipher`]; here: [`build`] makes the policy, the reward model and the prompt sets (`warp-sft --task cipher`);
//! fixtures/cipher/ is its output.

mod measure;
mod policy;
mod rm;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};

use super::data::write_prompts;
use super::sft::{char_tokenizer_files, char_vocab_size, llama_config, write_random_init, Dims};
use crate::error::{Error, IoContext, Result};
use crate::io::writer::{Staging, WriterOptions};
use crate::progress::Reporter;
use crate::rng::SplitMix64;
use crate::tasks::cipher::{splits, Style};

pub use measure::{measure, policy_samples, Measurements, StyleShares};
pub use policy::corpus_answer;
pub use rm::rm_example;

/// How one of the two models is trained.
#[derive(Debug, Clone, PartialEq)]
pub struct Training {
    pub steps: u64,
    /// Sequences per step.
    pub batch: usize,
    pub lr: f64,
    pub warmup: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CipherConfig {
    pub seed: u64,
    /// Corpus: probability of each style, in [`Style::ALL`] order.
    pub style_probs: [f64; 7],
    /// Corpus: probability that an answer is a near miss of its style ([`corrupt`]).
    pub p_corrupt: f64,
    pub policy: Dims,
    pub sft: Training,
    pub rm: Dims,
    pub rm_training: Training,
    /// Sampled completions per held-out prompt when measuring the policy.
    pub eval_samples: usize,
    /// Synthetic labelled examples per held-out word when measuring the reward model.
    pub rm_eval_per_word: usize,
}

impl Default for CipherConfig {
    fn default() -> Self {
        CipherConfig {
            seed: 0,
            style_probs: [0.09, 0.09, 0.09, 0.09, 0.22, 0.21, 0.21],
            p_corrupt: 0.05,
            policy: Dims {
                hidden: 128,
                layers: 4,
                heads: 4,
                kv_heads: 2,
                intermediate: 352,
            },
            sft: Training {
                steps: 2000,
                batch: 128,
                lr: 3e-3,
                warmup: 50,
            },
            rm: Dims {
                hidden: 128,
                layers: 3,
                heads: 4,
                kv_heads: 2,
                intermediate: 352,
            },
            rm_training: Training {
                steps: 2000,
                batch: 128,
                lr: 2e-3,
                warmup: 50,
            },
            eval_samples: 4,
            rm_eval_per_word: 8,
        }
    }
}

impl CipherConfig {
    pub fn to_json(&self) -> Value {
        let dims = |d: &Dims| {
            json!({"hidden": d.hidden, "layers": d.layers, "heads": d.heads,
                   "kv_heads": d.kv_heads, "intermediate": d.intermediate})
        };
        let tr = |t: &Training| json!({"steps": t.steps, "batch": t.batch, "lr": t.lr, "warmup": t.warmup});
        let probs: serde_json::Map<String, Value> = Style::ALL
            .iter()
            .zip(self.style_probs)
            .map(|(s, p)| (s.name(), json!(p)))
            .collect();
        json!({
            "seed": self.seed, "style_probs": probs, "p_corrupt": self.p_corrupt,
            "policy": dims(&self.policy), "sft": tr(&self.sft),
            "rm": dims(&self.rm), "rm_training": tr(&self.rm_training),
            "eval_samples": self.eval_samples, "rm_eval_per_word": self.rm_eval_per_word,
        })
    }

    fn check(&self) -> Result<()> {
        let bad = |field: &str, m: String| Err(Error::setting(field, m));
        let total: f64 = self.style_probs.iter().sum();
        if self.style_probs.iter().any(|p| p.is_nan() || *p < 0.0) || (total - 1.0).abs() > 1e-9 {
            return bad(
                "style_probs",
                format!(
                    "style probabilities must be ≥ 0 and sum to 1, got {:?}",
                    self.style_probs
                ),
            );
        }
        if !(0.0..1.0).contains(&self.p_corrupt) {
            return bad(
                "p_corrupt",
                format!(
                    "the corruption probability must be in [0, 1), got {}",
                    self.p_corrupt
                ),
            );
        }
        for (field, what, d) in [
            ("policy", "policy", &self.policy),
            ("rm", "reward model", &self.rm),
        ] {
            if d.heads == 0 || d.kv_heads == 0 || d.hidden % d.heads != 0 {
                return bad(
                    field,
                    format!("{what}: hidden size must be a multiple of the heads"),
                );
            }
            if d.heads % d.kv_heads != 0 || (d.hidden / d.heads) % 2 != 0 || d.layers == 0 {
                return bad(
                    field,
                    format!(
                        "{what}: heads must be a multiple of the KV heads, with an even head \
                         size, and at least one layer"
                    ),
                );
            }
        }
        for (field, what, t) in [
            ("sft", "SFT", &self.sft),
            ("rm_training", "reward model", &self.rm_training),
        ] {
            if t.steps == 0 || t.batch == 0 || t.lr.is_nan() || t.lr <= 0.0 {
                return bad(
                    field,
                    format!("{what} training: steps, batch and lr must be > 0"),
                );
            }
        }
        if self.eval_samples == 0 || self.rm_eval_per_word == 0 {
            return bad(
                "eval_samples",
                "the measurements need at least one sample".into(),
            );
        }
        Ok(())
    }
}

/// The tokens of the task, one character each, after the four specials.
const CHARS: &str = "abcdefghijABCDEFGHIJ:";
/// Prompt (BOS, 4 letters, colon) + answer (4 letters, EOS) = 11; room for longer samples.
const MAX_POSITIONS: usize = 16;

fn vocab_size() -> usize {
    char_vocab_size(CHARS)
}

/// `config.json` of a model of the task: a causal LM, or (`reward_model`) a
/// `LlamaForSequenceClassification` with one label.
pub fn model_config(d: &Dims, reward_model: bool) -> Value {
    llama_config(d, vocab_size(), MAX_POSITIONS, reward_model)
}

/// The tokenizer and generation files: character-level, as the arithmetic task's.
pub fn tokenizer_files() -> Vec<(&'static str, String)> {
    char_tokenizer_files(CHARS, MAX_POSITIONS)
}

/// Writes a randomly initialised causal LM of the task (drawn from `(seed, stream)`) with its
/// config and tokenizer files.
fn write_init(dir: &Path, d: &Dims, seed: u64, stream: u64) -> Result<()> {
    let rng = SplitMix64::stream(seed, stream);
    write_random_init(
        dir,
        d,
        vocab_size(),
        &model_config(d, false),
        &tokenizer_files(),
        rng,
    )
}

/// What [`build`] measured.
#[derive(Debug, Clone)]
pub struct CipherReport {
    pub sft_loss: f64,
    /// The SFT policy's samples on the held-out prompts, temperature 1.
    pub sft_shares: StyleShares,
    pub rm_loss: f64,
    /// Accuracy (score > 0.5 ⇔ rewarded) on synthetic rewritings of held-out words.
    pub rm_accuracy: f64,
    /// The same on the SFT policy's samples of held-out prompts.
    pub rm_accuracy_on_policy: f64,
    pub seconds: f64,
}

/// Trains the policy and the reward model and writes `out/` (all or nothing): `model/` (the SFT
/// policy), `rm/` (the reward model, for `--reward model:out/rm`), `train.jsonl`,
/// `heldout.jsonl` and `task.json` (settings and measurements).
pub fn build(
    c: &CipherConfig,
    out: &Path,
    force: bool,
    reporter: &dyn Reporter,
) -> Result<(PathBuf, CipherReport)> {
    c.check()?;
    let started = Instant::now();
    let staging = Staging::new(out, force)?;
    let (train, heldout) = splits();

    reporter.message("training the SFT policy");
    let init = staging.path().join("init");
    write_init(&init, &c.policy, c.seed, 1)?;
    let (policy, sft_loss) = policy::train_policy(c, &init, &train, reporter)?;
    let model_dir = staging.path().join("model");
    policy.save(&model_dir, Some(&init), None, &WriterOptions::default())?;
    std::fs::remove_dir_all(&init).at(&init)?;

    reporter.message("training the reward model");
    let rm_dir = staging.path().join("rm");
    let rm_loss = rm::train_rm(c, &train, staging.path(), &rm_dir, reporter)?;

    reporter.message("measuring");
    let m = measure(&model_dir, &rm_dir, &heldout, c)?;
    write_prompts(&staging.path().join("train.jsonl"), &train)?;
    write_prompts(&staging.path().join("heldout.jsonl"), &heldout)?;
    let report = CipherReport {
        sft_loss,
        sft_shares: m.sft_shares,
        rm_loss,
        rm_accuracy: m.rm_accuracy,
        rm_accuracy_on_policy: m.rm_accuracy_on_policy,
        seconds: started.elapsed().as_secs_f64(),
    };
    let summary = json!({
        "task": "cipher: shift every letter of a 4-letter word over a-j; shifts 1, 3, 7 and 9 are \
                 rewarded, copy (0), shift 5 and upper case are not",
        "settings": c.to_json(),
        "sft_final_loss": report.sft_loss,
        "sft_heldout_styles": report.sft_shares.to_json(),
        "sft_eval": format!("temperature 1, {} samples per held-out prompt, seed {}", c.eval_samples, c.seed),
        "rm_final_loss": report.rm_loss,
        "rm_heldout_accuracy": report.rm_accuracy,
        "rm_heldout_examples": m.rm_examples,
        "rm_accuracy_on_sft_samples": report.rm_accuracy_on_policy,
        "seconds": report.seconds,
        "torch_threads": tch::get_num_threads(),
        "warp_version": env!("CARGO_PKG_VERSION"),
    });
    let text = serde_json::to_string_pretty(&summary).unwrap_or_default() + "\n";
    crate::io::write_file_atomic(&staging.path().join("task.json"), text.as_bytes())?;
    let done = staging.commit()?;
    Ok((done, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::cipher::{prompt, words};

    #[test]
    fn corpus_and_rm_mixtures() {
        let c = CipherConfig::default();
        let words = words();
        let mut g = SplitMix64(11);
        let n = 50_000;
        let answers: Vec<(String, String)> = (0..n)
            .map(|i| {
                let w = &words[(i * 7919) % words.len()];
                (prompt(w), corpus_answer(w, &c, &mut g))
            })
            .collect();
        let shares = StyleShares::of(&answers);
        // Binomial sd at n = 5e4 is ≤ 0.0022; near misses take 5 % of every style (a few of
        // them land on another style).
        for (k, p) in c.style_probs.iter().enumerate() {
            assert!((shares.styles[k] - p * 0.95).abs() < 0.01, "{shares:?}");
        }
        assert!((shares.other - 0.05).abs() < 0.008, "{shares:?}");
        let labels: Vec<f64> = (0..n)
            .map(|i| rm_example(&words[(i * 7919) % words.len()], &mut g).label)
            .collect();
        let pos = labels.iter().sum::<f64>() / n as f64;
        assert!((0.48..0.53).contains(&pos), "{pos}");
    }

    #[test]
    fn tokenizer_covers_the_task() {
        assert_eq!(vocab_size(), 25);
        let files = tokenizer_files();
        let v: Value = serde_json::from_str(&files[0].1).unwrap();
        assert_eq!(v["model"]["vocab"].as_object().unwrap().len(), 25);
    }
}
