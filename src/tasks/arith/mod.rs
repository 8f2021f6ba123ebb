//! The built-in task `arith`: two-number addition, `"37+58="` → `"95"`.
//!
//! Small enough for a model of a few MB trained from scratch on a CPU in minutes, and verifiable,
//! so a reward needs no reward model. The supervised corpus is deliberately noisy: each answer in
//! it is right with probability `p_correct` (65 %) and otherwise off by ±1, ±2 or ±10 (the slips a
//! person makes), drawn afresh each time an example is seen. The SFT model therefore learns to be
//! right about 65 % of the time when sampled, and a verifiable reward has clear room to raise that.

use serde_json::json;

use super::{PromptRecord, Task};
use crate::rng::SplitMix64;

/// The registry entry ([`super::TASKS`]).
pub const TASK: Task = Task {
    name: "arith",
    about: "two-number addition, verifiable reward (the default)",
    // The model is `warp sft`'s output with the defaults (docs/RL.md).
    files: super::embed!("arith":
        "model/config.json",
        "model/generation_config.json",
        "model/model.safetensors",
        "model/special_tokens_map.json",
        "model/tokenizer.json",
        "model/tokenizer_config.json",
        "train.jsonl",
        "heldout.jsonl",
        "sft.json",
    ),
    pipeline: || {
        json!({
            "model": "builtin:arith/model",
            "prompts": "builtin:arith/train.jsonl",
            "heldout": "builtin:arith/heldout.jsonl",
            "reward": "verify:arith",
        })
    },
    verifier: Some(arith_reward),
};

/// Operands are in `0..=MAX_OPERAND`.
pub const MAX_OPERAND: u64 = 99;
/// One prompt pair in `HELDOUT_EVERY` (chosen by a hash, not by value) is held out.
pub const HELDOUT_EVERY: u64 = 10;
/// The wrong answers of the corpus: the right one plus one of these.
const SLIPS: [i64; 6] = [-10, -2, -1, 1, 2, 10];

pub fn prompt(a: u64, b: u64) -> String {
    format!("{a}+{b}=")
}

/// The operands of a prompt ending in `"a+b="` (text before them, e.g. a preamble, is ignored).
pub fn parse_prompt(prompt: &str) -> Option<(u64, u64)> {
    let body = prompt.trim_end().strip_suffix('=')?;
    let start = body
        .char_indices()
        .rev()
        .find(|&(_, c)| !(c.is_ascii_digit() || c == '+'))
        .map_or(0, |(i, c)| i + c.len_utf8());
    let (a, b) = body[start..].split_once('+')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 6 && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(a) || !digits(b) {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The verifiable reward: 1 when the completion (whitespace trimmed) is exactly the sum, else 0.
/// A prompt that is not an addition scores 0.
pub fn arith_reward(prompt: &str, completion: &str) -> f64 {
    match parse_prompt(prompt) {
        Some((a, b)) if completion.trim() == (a + b).to_string() => 1.0,
        _ => 0.0,
    }
}

fn is_heldout(a: u64, b: u64) -> bool {
    let mut g = SplitMix64(a * 1_000_003 + b);
    g.next_u64() % HELDOUT_EVERY == 0
}

/// Every pair of operands, split into (train, held-out) prompt sets, in a fixed order.
pub fn splits() -> (Vec<PromptRecord>, Vec<PromptRecord>) {
    let (mut train, mut heldout) = (Vec::new(), Vec::new());
    for a in 0..=MAX_OPERAND {
        for b in 0..=MAX_OPERAND {
            let r = PromptRecord {
                prompt: prompt(a, b),
                answer: Some((a + b).to_string()),
            };
            if is_heldout(a, b) {
                heldout.push(r);
            } else {
                train.push(r);
            }
        }
    }
    (train, heldout)
}

/// The answer the noisy corpus shows for `a + b`: right with probability `p_correct`, else a slip
/// (never negative).
pub fn noisy_answer(a: u64, b: u64, p_correct: f64, rng: &mut SplitMix64) -> u64 {
    let c = (a + b) as i64;
    if rng.next_open01() < p_correct {
        return c as u64;
    }
    loop {
        let wrong = c + SLIPS[rng.below(SLIPS.len() as u64) as usize];
        if wrong >= 0 {
            return wrong as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_parse_and_verify() {
        assert_eq!(parse_prompt("37+58="), Some((37, 58)));
        assert_eq!(parse_prompt("Q: 3+4="), Some((3, 4)));
        assert_eq!(parse_prompt("é3+4="), Some((3, 4)));
        assert_eq!(parse_prompt("3*4="), None);
        assert_eq!(parse_prompt("+4="), None);
        assert_eq!(arith_reward("37+58=", "95"), 1.0);
        assert_eq!(arith_reward("37+58=", " 95 "), 1.0);
        assert_eq!(arith_reward("37+58=", "96"), 0.0);
        assert_eq!(arith_reward("37+58=", "095"), 0.0);
        assert_eq!(arith_reward("37+58=", ""), 0.0);
        assert_eq!(arith_reward("hello", "95"), 0.0);
    }

    #[test]
    fn splits_cover_every_pair_once() {
        let (train, heldout) = splits();
        assert_eq!(train.len() + heldout.len(), 100 * 100);
        // About one in ten held out.
        assert!((800..1200).contains(&heldout.len()), "{}", heldout.len());
        let mut all: Vec<&str> = train
            .iter()
            .chain(&heldout)
            .map(|r| r.prompt.as_str())
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 10_000);
    }

    #[test]
    fn corpus_noise_rate_and_slips() {
        let mut g = SplitMix64(7);
        let n = 100_000;
        let mut right = 0;
        for i in 0..n {
            let (a, b) = (i % 100, (i / 100) % 100);
            let ans = noisy_answer(a, b, 0.65, &mut g) as i64;
            let d = ans - (a + b) as i64;
            if d == 0 {
                right += 1;
            } else {
                assert!(SLIPS.contains(&d));
            }
            assert!(ans >= 0);
        }
        let p = right as f64 / n as f64;
        // Binomial standard error at n = 1e5 is 0.0015; slips below zero are redrawn, never right.
        assert!((p - 0.65).abs() < 0.006, "{p}");
    }
}
