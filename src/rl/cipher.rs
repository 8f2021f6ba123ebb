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
//! [`build`] makes the policy, the reward model and the prompt sets (`warp-sft --task cipher`);
//! fixtures/cipher/ is its output.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};
use tch::{Device, Kind};

use super::data::{write_prompts, Prompt, PromptRecord};
use super::eval::{sample, SampleOptions};
use super::generate::score;
use super::model::LlamaModel;
use super::optim::{Adam, AdamConfig};
use super::reward_model::RewardModel;
use super::rm_train::{self, RmExample};
use super::rng::SplitMix64;
use super::tokenizer::Tokenizer;
use crate::error::{Error, IoContext, Result};
use crate::io::writer::{CheckpointWriter, OutTensor, Staging, WriterOptions};
use crate::io::DType;
use crate::progress::Reporter;

/// The letters words are made of, in shift order.
pub const LETTERS: &str = "abcdefghij";
/// Letters per word.
pub const WORD_LEN: usize = 4;
/// One word in `HELDOUT_EVERY` (chosen by a hash) is held out.
pub const HELDOUT_EVERY: u64 = 10;

/// How a completion rewrites the prompt's word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Style {
    /// Every letter moved k places along [`LETTERS`], cyclically (0: a copy).
    Shift(u8),
    Upper,
}

impl Style {
    pub const ALL: [Style; 7] = [
        Style::Shift(1),
        Style::Shift(3),
        Style::Shift(7),
        Style::Shift(9),
        Style::Shift(0),
        Style::Shift(5),
        Style::Upper,
    ];
    /// The styles the hidden rule rewards.
    pub const REWARDED: [Style; 4] = [
        Style::Shift(1),
        Style::Shift(3),
        Style::Shift(7),
        Style::Shift(9),
    ];

    pub fn name(self) -> String {
        match self {
            Style::Shift(0) => "copy".into(),
            Style::Shift(k) => format!("shift{k}"),
            Style::Upper => "upper".into(),
        }
    }

    pub fn rewarded(self) -> bool {
        Style::REWARDED.contains(&self)
    }

    /// The word rewritten in this style (characters outside [`LETTERS`] are kept).
    pub fn apply(self, word: &str) -> String {
        match self {
            Style::Upper => word.to_ascii_uppercase(),
            Style::Shift(k) => word
                .chars()
                .map(|c| match LETTERS.find(c) {
                    Some(i) => LETTERS.as_bytes()[(i + k as usize) % LETTERS.len()] as char,
                    None => c,
                })
                .collect(),
        }
    }
}

pub fn prompt(word: &str) -> String {
    format!("{word}:")
}

/// The word of a prompt `"bdfa:"` (four letters of [`LETTERS`] and a colon).
pub fn word_of(prompt: &str) -> Option<&str> {
    let w = prompt.strip_suffix(':')?;
    (w.len() == WORD_LEN && w.chars().all(|c| LETTERS.contains(c))).then_some(w)
}

/// Which style `completion` is for `prompt` (`None`: none of them, or not a task prompt).
pub fn classify(prompt: &str, completion: &str) -> Option<Style> {
    let w = word_of(prompt)?;
    Style::ALL.into_iter().find(|s| s.apply(w) == completion)
}

/// The hidden rule: the completion is the word in a rewarded style.
pub fn rule(prompt: &str, completion: &str) -> bool {
    classify(prompt, completion).is_some_and(Style::rewarded)
}

fn is_heldout(word: &str) -> bool {
    let key = word.bytes().fold(0u64, |h, b| h * 131 + b as u64);
    SplitMix64(key).next_u64() % HELDOUT_EVERY == 0
}

/// Every word of four letters, in lexicographic order.
pub fn words() -> Vec<String> {
    let l: Vec<char> = LETTERS.chars().collect();
    let n = l.len();
    (0..n.pow(WORD_LEN as u32))
        .map(|mut i| {
            let mut w = vec![' '; WORD_LEN];
            for c in w.iter_mut().rev() {
                *c = l[i % n];
                i /= n;
            }
            w.into_iter().collect()
        })
        .collect()
}

/// All prompts, split into (train, held-out) sets in a fixed order.
pub fn splits() -> (Vec<PromptRecord>, Vec<PromptRecord>) {
    let (mut train, mut heldout) = (Vec::new(), Vec::new());
    for w in words() {
        let r = PromptRecord {
            prompt: prompt(&w),
            answer: None,
        };
        if is_heldout(&w) {
            heldout.push(r);
        } else {
            train.push(r);
        }
    }
    (train, heldout)
}

fn random_letter(rng: &mut SplitMix64, upper: bool) -> char {
    let c = LETTERS.as_bytes()[rng.below(LETTERS.len() as u64) as usize] as char;
    if upper {
        c.to_ascii_uppercase()
    } else {
        c
    }
}

/// A near miss of `s`: one letter replaced by another of the same case, two neighbours swapped,
/// one letter's case flipped, one letter dropped, or one doubled (a letter when `s` is empty).
pub fn corrupt(s: &str, rng: &mut SplitMix64) -> String {
    let mut c: Vec<char> = s.chars().collect();
    if c.is_empty() {
        return random_letter(rng, false).to_string();
    }
    let i = rng.below(c.len() as u64) as usize;
    match rng.below(5) {
        0 => loop {
            let r = random_letter(rng, c[i].is_ascii_uppercase());
            if r != c[i] {
                c[i] = r;
                break;
            }
        },
        1 if c.len() > 1 => {
            let j = if i + 1 < c.len() { i + 1 } else { i - 1 };
            c.swap(i, j);
        }
        2 => {
            c[i] = if c[i].is_ascii_uppercase() {
                c[i].to_ascii_lowercase()
            } else {
                c[i].to_ascii_uppercase()
            }
        }
        3 => {
            c.remove(i);
        }
        _ => c.insert(i, c[i]),
    }
    c.into_iter().collect()
}

/// The settings of a tiny Llama.
#[derive(Debug, Clone, PartialEq)]
pub struct Dims {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
}

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
        let bad = |m: String| Err(Error::Usage(m));
        let total: f64 = self.style_probs.iter().sum();
        if self.style_probs.iter().any(|p| p.is_nan() || *p < 0.0) || (total - 1.0).abs() > 1e-9 {
            return bad(format!(
                "style probabilities must be ≥ 0 and sum to 1, got {:?}",
                self.style_probs
            ));
        }
        if !(0.0..1.0).contains(&self.p_corrupt) {
            return bad(format!(
                "the corruption probability must be in [0, 1), got {}",
                self.p_corrupt
            ));
        }
        for (what, d) in [("policy", &self.policy), ("reward model", &self.rm)] {
            if d.heads == 0 || d.kv_heads == 0 || d.hidden % d.heads != 0 {
                return bad(format!(
                    "{what}: hidden size must be a multiple of the heads"
                ));
            }
            if d.heads % d.kv_heads != 0 || (d.hidden / d.heads) % 2 != 0 || d.layers == 0 {
                return bad(format!(
                    "{what}: heads must be a multiple of the KV heads, with an even head size, \
                     and at least one layer"
                ));
            }
        }
        for (what, t) in [("SFT", &self.sft), ("reward model", &self.rm_training)] {
            if t.steps == 0 || t.batch == 0 || t.lr.is_nan() || t.lr <= 0.0 {
                return bad(format!("{what} training: steps, batch and lr must be > 0"));
            }
        }
        if self.eval_samples == 0 || self.rm_eval_per_word == 0 {
            return bad("the measurements need at least one sample".into());
        }
        Ok(())
    }
}

/// The tokens of the task, one character each, after the four specials.
const CHARS: &str = "abcdefghijABCDEFGHIJ:";
const SPECIALS: [&str; 4] = ["<pad>", "<s>", "</s>", "<unk>"];
/// Prompt (BOS, 4 letters, colon) + answer (4 letters, EOS) = 11; room for longer samples.
const MAX_POSITIONS: usize = 16;

fn vocab_size() -> usize {
    SPECIALS.len() + CHARS.chars().count()
}

/// `config.json` of a model of the task: a causal LM, or (`reward_model`) a
/// `LlamaForSequenceClassification` with one label.
pub fn model_config(d: &Dims, reward_model: bool) -> Value {
    let mut v = json!({
        "architectures": [if reward_model { "LlamaForSequenceClassification" } else { "LlamaForCausalLM" }],
        "model_type": "llama",
        "vocab_size": vocab_size(),
        "hidden_size": d.hidden,
        "intermediate_size": d.intermediate,
        "num_hidden_layers": d.layers,
        "num_attention_heads": d.heads,
        "num_key_value_heads": d.kv_heads,
        "head_dim": d.hidden / d.heads,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": null,
        "attention_bias": false,
        "mlp_bias": false,
        "tie_word_embeddings": false,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "torch_dtype": "float32",
    });
    if reward_model {
        v["id2label"] = json!({"0": "LABEL_0"});
        v["label2id"] = json!({"LABEL_0": 0});
    }
    v
}

/// The tokenizer and generation files: character-level, as the arithmetic task's.
pub fn tokenizer_files() -> Vec<(&'static str, String)> {
    super::sft::char_tokenizer_files(CHARS, MAX_POSITIONS)
}

/// Writes a randomly initialised causal LM of the task (N(0, 0.02) matrices, unit norms, drawn
/// from `(seed, stream)` by our own generator so the start does not depend on libtorch) with its
/// config and tokenizer files.
fn write_init(dir: &Path, d: &Dims, seed: u64, stream: u64) -> Result<()> {
    let (h, i, v) = (d.hidden, d.intermediate, vocab_size());
    let kv = d.kv_heads * (d.hidden / d.heads);
    let mut shapes = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
    for l in 0..d.layers {
        for (n, s) in [
            ("input_layernorm.weight", vec![h]),
            ("self_attn.q_proj.weight", vec![h, h]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.o_proj.weight", vec![h, h]),
            ("post_attention_layernorm.weight", vec![h]),
            ("mlp.gate_proj.weight", vec![i, h]),
            ("mlp.up_proj.weight", vec![i, h]),
            ("mlp.down_proj.weight", vec![h, i]),
        ] {
            shapes.push((format!("model.layers.{l}.{n}"), s));
        }
    }
    shapes.push(("model.norm.weight".into(), vec![h]));
    shapes.push(("lm_head.weight".into(), vec![v, h]));
    let tensors: Vec<OutTensor> = shapes
        .into_iter()
        .map(|(name, shape)| OutTensor {
            name,
            dtype: DType::F32,
            shape,
        })
        .collect();
    let mut w = CheckpointWriter::create(dir, tensors.clone(), &WriterOptions::default())?;
    let mut rng = SplitMix64::stream(seed, stream);
    for t in &tensors {
        let n: usize = t.shape.iter().product();
        let norm = t.name.ends_with("norm.weight");
        let bytes: Vec<u8> = (0..n)
            .flat_map(|_| {
                let x = if norm {
                    1.0
                } else {
                    0.02 * rng.normal() as f32
                };
                x.to_le_bytes()
            })
            .collect();
        w.write(&bytes)?;
    }
    let cfg = serde_json::to_string_pretty(&model_config(d, false)).unwrap_or_default() + "\n";
    w.add_file("config.json", cfg.as_bytes())?;
    for (name, text) in tokenizer_files() {
        w.add_file(name, text.as_bytes())?;
    }
    w.finish()?;
    Ok(())
}

/// An Adam schedule: warm-up, then cosine decay to 10 %; weight decay 0.01, clip 1.
fn adam_config(t: &Training) -> AdamConfig {
    AdamConfig {
        lr: t.lr,
        weight_decay: 0.01,
        warmup: t.warmup,
        grad_clip: 1.0,
        decay_steps: t.steps.saturating_sub(t.warmup),
        ..AdamConfig::default()
    }
}

/// One SFT answer for `word`: a style drawn from the corpus mixture, sometimes a near miss.
pub fn corpus_answer(word: &str, c: &CipherConfig, rng: &mut SplitMix64) -> String {
    let u = rng.next_open01();
    let mut acc = 0.0;
    let mut style = Style::ALL[Style::ALL.len() - 1];
    for (s, p) in Style::ALL.iter().zip(c.style_probs) {
        acc += p;
        if u < acc {
            style = *s;
            break;
        }
    }
    let answer = style.apply(word);
    if rng.next_open01() < c.p_corrupt {
        corrupt(&answer, rng)
    } else {
        answer
    }
}

/// A labelled rewriting of `word` for the reward model: half of them rewarded shifts, the rest
/// the unrewarded styles, near misses of rewarded shifts, even shifts and junk. The label is the
/// rule's, whatever the construction.
pub fn rm_example(word: &str, rng: &mut SplitMix64) -> RmExample {
    let p = prompt(word);
    let pick = |set: &[Style], rng: &mut SplitMix64| set[rng.below(set.len() as u64) as usize];
    let u = rng.next_open01();
    let completion = if u < 0.5 {
        pick(&Style::REWARDED, rng).apply(word)
    } else if u < 0.66 {
        pick(&[Style::Shift(0), Style::Shift(5), Style::Upper], rng).apply(word)
    } else if u < 0.9 {
        let r = pick(&Style::REWARDED, rng).apply(word);
        corrupt(&r, rng)
    } else if u < 0.95 {
        let even = [2, 4, 6, 8].map(Style::Shift);
        pick(&even, rng).apply(word)
    } else {
        let n = rng.below(9) as usize;
        (0..n)
            .map(|_| {
                let upper = rng.below(2) == 0;
                random_letter(rng, upper)
            })
            .collect()
    };
    let label = if rule(&p, &completion) { 1.0 } else { 0.0 };
    RmExample {
        prompt: p,
        completion,
        label,
    }
}

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

/// Trains the policy on the corpus: cross-entropy of the answer tokens (EOS included).
fn train_policy(
    c: &CipherConfig,
    init: &Path,
    train: &[PromptRecord],
    reporter: &dyn Reporter,
) -> Result<(LlamaModel, f64)> {
    let model = LlamaModel::load(init, Device::Cpu)?;
    let tok = Tokenizer::from_dir(init)?;
    let eos = *tok
        .eos_ids
        .first()
        .ok_or_else(|| Error::format(init, "no EOS id"))?;
    let words: Vec<&str> = train.iter().filter_map(|r| word_of(&r.prompt)).collect();
    let prompt_ids: Vec<Vec<i64>> = train
        .iter()
        .map(|r| tok.encode(&r.prompt))
        .collect::<Result<_>>()?;
    let mut opt = Adam::new(&model, adam_config(&c.sft))?;
    let mut rng = SplitMix64::stream(c.seed, 2);
    let mut recent = std::collections::VecDeque::with_capacity(100);
    reporter.start_steps("sft", c.sft.steps);
    for _ in 0..c.sft.steps {
        crate::cancel::check()?;
        let pairs: Vec<(Vec<i64>, Vec<i64>)> = (0..c.sft.batch)
            .map(|_| {
                let k = rng.below(words.len() as u64) as usize;
                let mut ids = tok.encode_plain(&corpus_answer(words[k], c, &mut rng))?;
                ids.push(eos);
                Ok((prompt_ids[k].clone(), ids))
            })
            .collect::<Result<_>>()?;
        opt.zero_grad();
        let s = score(&model, &pairs, tok.pad_id)?;
        let loss = -s.logprobs.sum(Kind::Float) / s.mask.sum(Kind::Float);
        loss.backward();
        opt.step()?;
        if recent.len() == 100 {
            recent.pop_front();
        }
        recent.push_back(loss.double_value(&[]));
        reporter.advance(1);
    }
    reporter.finish();
    let mean = recent.iter().sum::<f64>() / recent.len().max(1) as f64;
    Ok((model, mean))
}

/// `samples` completions of `policy` for each prompt at `temperature` (seeded), as (prompt,
/// completion) text pairs: what [`StyleShares::of`] classifies.
pub fn policy_samples(
    policy: &LlamaModel,
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
    let policy = LlamaModel::load(model_dir, Device::Cpu)?;
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
    let (policy, sft_loss) = train_policy(c, &init, &train, reporter)?;
    let model_dir = staging.path().join("model");
    policy.save(&model_dir, Some(&init), None, &WriterOptions::default())?;
    std::fs::remove_dir_all(&init).at(&init)?;

    reporter.message("training the reward model");
    let rm_init = staging.path().join("rm-init");
    write_init(&rm_init, &c.rm, c.seed, 3)?;
    let train_words: Vec<String> = train
        .iter()
        .filter_map(|r| word_of(&r.prompt).map(str::to_string))
        .collect();
    let mut rng = SplitMix64::stream(c.seed, 4);
    let mut next = |_: usize| {
        let w = &train_words[rng.below(train_words.len() as u64) as usize];
        rm_example(w, &mut rng)
    };
    let rm_dir = staging.path().join("rm");
    let rm_loss = rm_train::train(
        &rm_init,
        &rm_dir,
        &model_config(&c.rm, true),
        &rm_train::RmTraining {
            steps: c.rm_training.steps,
            batch: c.rm_training.batch,
            adam: adam_config(&c.rm_training),
        },
        &mut next,
        reporter,
    )?;
    std::fs::remove_dir_all(&rm_init).at(&rm_init)?;

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

    #[test]
    fn styles_start_with_different_tokens() {
        let w = "bdfa";
        let out: Vec<String> = Style::ALL.iter().map(|s| s.apply(w)).collect();
        assert_eq!(
            out,
            ["cegb", "egid", "iach", "acej", "bdfa", "giaf", "BDFA"]
        );
        let firsts: std::collections::HashSet<char> =
            out.iter().filter_map(|s| s.chars().next()).collect();
        assert_eq!(firsts.len(), 7);
        for s in Style::ALL {
            assert_eq!(classify("bdfa:", &s.apply(w)), Some(s));
            assert_eq!(rule("bdfa:", &s.apply(w)), s.rewarded());
        }
        assert_eq!(Style::Shift(1).apply("ja"), "ab");
        assert_eq!(classify("bdfa:", "ceg"), None);
        assert_eq!(classify("bdfa:", "CEGB"), None);
        assert!(!rule("bdfa:", ""));
        assert!(!rule("bdfa", "cegb"));
        assert!(!rule("bdfa:", "dfhc"), "shift 2 is not rewarded");
        assert!(rule("aaaa:", "bbbb"));
        assert!(!rule("bdfk:", "cegl"));
    }

    #[test]
    fn relabelling_by_three_permutes_the_rewarded_shifts() {
        // x → 3x (mod 10) turns shift k into shift 3k: the rewarded shifts are interchangeable.
        let relabel = |w: &str| -> String {
            w.chars()
                .map(|c| LETTERS.as_bytes()[(3 * LETTERS.find(c).unwrap()) % 10] as char)
                .collect()
        };
        for w in ["bdfa", "jjab", "cafe"] {
            for k in [0u8, 1, 3, 5, 7, 9] {
                let lhs = relabel(&Style::Shift(k).apply(w));
                let rhs = Style::Shift((3 * k) % 10).apply(&relabel(w));
                assert_eq!(lhs, rhs, "{w} {k}");
            }
        }
        let mapped: Vec<Style> = Style::REWARDED
            .iter()
            .map(|s| match s {
                Style::Shift(k) => Style::Shift((3 * k) % 10),
                s => *s,
            })
            .collect();
        assert!(mapped.iter().all(|s| s.rewarded()));
    }

    #[test]
    fn words_and_splits() {
        let w = words();
        assert_eq!(w.len(), 10_000);
        assert_eq!((w[0].as_str(), w[9_999].as_str()), ("aaaa", "jjjj"));
        let (train, heldout) = splits();
        assert_eq!(train.len() + heldout.len(), w.len());
        assert!((900..1100).contains(&heldout.len()), "{}", heldout.len());
        assert!(heldout.iter().all(|r| word_of(&r.prompt).is_some()));
        assert_eq!(word_of("abck:"), None);
        assert_eq!(word_of("abc:"), None);
        assert_eq!(word_of("abca:"), Some("abca"));
    }

    #[test]
    fn corruptions_are_near_misses() {
        let mut g = SplitMix64(3);
        let mut changed = 0;
        for _ in 0..2000 {
            let s = Style::Shift(3).apply("bdfa");
            let c = corrupt(&s, &mut g);
            assert!((3..=5).contains(&c.chars().count()), "{c}");
            if c != s {
                changed += 1;
            }
        }
        // Only a swap of two equal letters could leave it unchanged, and the letters differ.
        assert_eq!(changed, 2000);
    }

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
