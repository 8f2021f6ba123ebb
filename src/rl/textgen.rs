//! Text in, text out: the library side of `warp generate`. Prompts (plain or conversations) are
//! encoded as training encodes them ([`Tokenizer::encode_prompt`]), sampled in batches with
//! [`super::generate::generate`] (KV cache, stop at any EOS id), decoded, and handed out one
//! record per completion, in prompt order, as each batch finishes.

use serde_json::{json, Value};

use super::data::Prompt;
use super::generate::{generate, GenerateOptions};
use super::model::CausalLm;
use super::tokenizer::Tokenizer;
use crate::error::{Error, Result};

/// Sampling settings of [`generate_texts`]. `temperature` 0 is greedy (then `top_k`, `top_p`
/// and `seed` do not matter); `top_k` 0 and `top_p` 1 switch those filters off.
#[derive(Debug, Clone)]
pub struct TextGenOptions {
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub top_k: usize,
    pub top_p: f64,
    /// Completions per prompt.
    pub samples: usize,
    pub seed: u64,
    /// Sequences per generation batch (a prompt's samples may span batches).
    pub batch_size: usize,
}

impl Default for TextGenOptions {
    /// 128 new tokens at temperature 1, no top-k/top-p, one sample, seed 0, batches of 16.
    fn default() -> Self {
        TextGenOptions {
            max_new_tokens: 128,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            samples: 1,
            seed: 0,
            batch_size: 16,
        }
    }
}

/// Why a completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model emitted an EOS id (it is the last of the token ids).
    Eos,
    /// The new-token limit was reached first.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Length => "length",
        }
    }
}

/// One completion.
#[derive(Debug, Clone, PartialEq)]
pub struct TextCompletion {
    /// Index of its prompt in the input.
    pub prompt_index: usize,
    /// Which of the prompt's samples (0-based).
    pub sample: usize,
    /// Length of the encoded prompt.
    pub prompt_tokens: usize,
    /// The generated ids, EOS included when emitted.
    pub token_ids: Vec<i64>,
    /// Their text, special tokens skipped.
    pub text: String,
    pub finish_reason: FinishReason,
}

impl TextCompletion {
    /// The JSONL record: `index`, `sample`, the prompt (`prompt` or `messages`, as given),
    /// `completion`, `token_ids`, `finish_reason` (`eos` or `length`), `prompt_tokens`.
    pub fn to_json(&self, prompt: &Prompt) -> Value {
        let (key, value) = prompt.json_field();
        let mut v = json!({"index": self.prompt_index, "sample": self.sample});
        v[key] = value;
        v["completion"] = json!(self.text);
        v["token_ids"] = json!(self.token_ids);
        v["finish_reason"] = json!(self.finish_reason.as_str());
        v["prompt_tokens"] = json!(self.prompt_tokens);
        v
    }
}

/// Encodes every prompt ([`Tokenizer::encode_prompt`]); an error names the prompt's index.
pub fn encode_prompts(tok: &Tokenizer, prompts: &[Prompt]) -> Result<Vec<Vec<i64>>> {
    prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            tok.encode_prompt(p).map_err(|e| match e {
                Error::Format { path, msg } => Error::Format {
                    path,
                    msg: format!("prompt {i}: {msg}"),
                },
                e => e,
            })
        })
        .collect()
}

impl TextGenOptions {
    /// Rejects settings that cannot generate anything (messages name the settings, not flags).
    pub fn check(&self) -> Result<()> {
        let bad = |field: &str, m: String| Err(Error::setting(field, m));
        if self.max_new_tokens == 0 {
            return bad(
                "max_new_tokens",
                "the number of new tokens must be at least 1".into(),
            );
        }
        if self.samples == 0 {
            return bad(
                "samples",
                "the number of samples per prompt must be at least 1".into(),
            );
        }
        if self.batch_size == 0 {
            return bad("batch_size", "the batch size must be at least 1".into());
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(
                "temperature",
                format!(
                    "the temperature must be a finite number ≥ 0, got {}",
                    self.temperature
                ),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(
                "top_p",
                format!("top-p must be in (0, 1], got {}", self.top_p),
            );
        }
        Ok(())
    }
}

/// `samples` completions of every encoded prompt in `prompt_ids`, in batches of `batch_size`
/// sequences, given to `emit` in order (prompt, then sample) as each batch finishes. Stops at
/// any of the tokenizer's EOS ids. Deterministic given the seed and batch size (batch `k` draws
/// from its own stream, derived from both). Checks for cancellation between batches.
pub fn generate_texts(
    model: &CausalLm,
    tok: &Tokenizer,
    prompt_ids: &[Vec<i64>],
    o: &TextGenOptions,
    mut emit: impl FnMut(TextCompletion) -> Result<()>,
) -> Result<()> {
    o.check()?;
    let jobs: Vec<(usize, usize)> = (0..prompt_ids.len())
        .flat_map(|i| (0..o.samples).map(move |k| (i, k)))
        .collect();
    for (b, chunk) in jobs.chunks(o.batch_size).enumerate() {
        crate::interrupt::check()?;
        let ids: Vec<Vec<i64>> = chunk.iter().map(|&(i, _)| prompt_ids[i].clone()).collect();
        let g = generate(
            model,
            &ids,
            &GenerateOptions {
                max_new_tokens: o.max_new_tokens,
                temperature: o.temperature,
                top_k: o.top_k,
                top_p: o.top_p,
                seed: o.seed.wrapping_mul(0x9E37_79B9).wrapping_add(b as u64),
                eos_ids: tok.eos_ids.clone(),
                pad_id: tok.pad_id,
                record_logits: false,
            },
        )?;
        for ((&(i, k), token_ids), finished) in chunk.iter().zip(g.completions).zip(g.finished) {
            emit(TextCompletion {
                prompt_index: i,
                sample: k,
                prompt_tokens: prompt_ids[i].len(),
                text: tok.decode(&token_ids)?,
                token_ids,
                finish_reason: if finished {
                    FinishReason::Eos
                } else {
                    FinishReason::Length
                },
            })?;
        }
    }
    Ok(())
}
