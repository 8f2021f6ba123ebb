//! The built-in task `cipher`: encode a word with a letter shift, where several distinct shifts
//! earn the reward (the styles, the hidden rule and the prompt sets; why it is built this way:
//! [`crate::rl::cipher`], which trains its policy and reward model).

use serde_json::json;

use super::{PromptRecord, Task};
use crate::rng::SplitMix64;

/// The registry entry ([`super::TASKS`]).
pub const TASK: Task = Task {
    name: "cipher",
    about: "shift the letters of a word; a learned reward model rewards four of the shifts",
    // A learned reward model (rm/, for `model:builtin:cipher/rm`) rewards four of the shifts;
    // `warp sft --task cipher`'s output with the defaults (src/rl/cipher/).
    files: super::embed!("cipher":
        "model/config.json",
        "model/generation_config.json",
        "model/model.safetensors",
        "model/special_tokens_map.json",
        "model/tokenizer.json",
        "model/tokenizer_config.json",
        "rm/config.json",
        "rm/model.safetensors",
        "rm/special_tokens_map.json",
        "rm/tokenizer.json",
        "rm/tokenizer_config.json",
        "train.jsonl",
        "heldout.jsonl",
        "task.json",
    ),
    // lr 1e-3: at 3e-4 the runs all drift to the same mixture of the four rewarded shifts
    // (docs/RESULTS.md); faster, each commits to its own. More checkpoints: the reward is
    // reached within the first ~20 steps, which a trajectory should show.
    pipeline: || {
        json!({
            "model": "builtin:cipher/model",
            "prompts": "builtin:cipher/train.jsonl",
            "heldout": "builtin:cipher/heldout.jsonl",
            "reward": "model:builtin:cipher/rm",
            "checkpoints": 10,
            "rl": {"lr": 1e-3},
        })
    },
    // Its reward is learned (`model:builtin:cipher/rm`), with the model's mistakes.
    verifier: None,
};

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

/// The letters relabelled by x → 3x (mod 10): the symmetry that permutes the rewarded shifts.
pub fn relabel(word: &str) -> String {
    word.bytes()
        .map(|b| match b {
            b'a'..=b'j' => (b'a' + (3 * (b - b'a')) % 10) as char,
            _ => b as char,
        })
        .collect()
}

/// Held out or not is decided for a whole orbit of the relabelling (the word and its images
/// under x → 3x, 9x, 7x), keyed by the orbit's smallest word: a word and its relabelled image are
/// always on the same side, so the split, like the corpus and the rule, prefers no rewarded shift.
fn is_heldout(word: &str) -> bool {
    let mut key = word.to_string();
    let mut w = relabel(word);
    while w != word {
        key = key.min(w.clone());
        w = relabel(&w);
    }
    let key = key.bytes().fold(0u64, |h, b| h * 131 + b as u64);
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

pub fn random_letter(rng: &mut SplitMix64, upper: bool) -> char {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The relabelling x → 3x (mod 10) maps the rewarded shifts onto each other and keeps the
    /// corpus; the split is decided per orbit, so it is kept too. The reference here is an
    /// independent statement of the symmetry: each letter index multiplied by 3 mod 10.
    #[test]
    fn the_split_is_invariant_under_the_relabelling() {
        let times3 = |w: &str| -> String {
            w.chars()
                .map(|c| {
                    let i = LETTERS.find(c).unwrap();
                    LETTERS.as_bytes()[(3 * i) % 10] as char
                })
                .collect()
        };
        let words = words();
        assert!(words.iter().all(|w| relabel(w) == times3(w)));
        let moved = words
            .iter()
            .filter(|w| is_heldout(w) != is_heldout(&times3(w)))
            .count();
        assert_eq!(
            moved,
            0,
            "{moved} of {} words change sides under x -> 3x",
            words.len()
        );
        // Not a degenerate split: about one word in ten is held out, from many orbits.
        let held = words.iter().filter(|w| is_heldout(w)).count();
        assert!((800..1200).contains(&held), "{held} held-out words");
    }

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
        assert!((800..1200).contains(&heldout.len()), "{}", heldout.len());
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
}
