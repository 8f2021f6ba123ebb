//! The cipher task's reward model: its labelled examples and its training.

use std::path::Path;

use super::{model_config, write_init, CipherConfig};
use crate::error::{IoContext, Result};
use crate::progress::Reporter;
use crate::rl::data::PromptRecord;
use crate::rl::rm_train::{self, RmExample};
use crate::rl::sft::adam_schedule;
use crate::rng::SplitMix64;
use crate::tasks::cipher::{corrupt, prompt, random_letter, rule, word_of, Style};

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

/// Trains the reward model (initialised in `scratch/rm-init`, removed after) on examples of the
/// training words, saved at `out`; returns the mean loss of the last 100 steps.
pub(super) fn train_rm(
    c: &CipherConfig,
    train: &[PromptRecord],
    scratch: &Path,
    out: &Path,
    reporter: &dyn Reporter,
) -> Result<f64> {
    let rm_init = scratch.join("rm-init");
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
    let t = &c.rm_training;
    let rm_loss = rm_train::train(
        &rm_init,
        out,
        &model_config(&c.rm, true),
        &rm_train::RmTraining {
            steps: t.steps,
            batch: t.batch,
            adam: adam_schedule(t.lr, t.warmup, t.steps),
        },
        &mut next,
        reporter,
    )?;
    std::fs::remove_dir_all(&rm_init).at(&rm_init)?;
    Ok(rm_loss)
}
