//! The cipher task's SFT policy: its corpus and its training.

use std::path::Path;

use tch::{Device, Kind};

use super::CipherConfig;
use crate::error::{Error, Result};
use crate::progress::Reporter;
use crate::rl::data::PromptRecord;
use crate::rl::generate::score;
use crate::rl::model::CausalLm;
use crate::rl::optim::Adam;
use crate::rl::sft::{adam_schedule, fit, Chatter};
use crate::rl::tokenizer::Tokenizer;
use crate::rng::SplitMix64;
use crate::tasks::cipher::{corrupt, word_of, Style};

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

/// Trains the policy on the corpus: cross-entropy of the answer tokens (EOS included).
pub(super) fn train_policy(
    c: &CipherConfig,
    init: &Path,
    train: &[PromptRecord],
    reporter: &dyn Reporter,
) -> Result<(CausalLm, f64)> {
    let model = CausalLm::load(init, Device::Cpu)?;
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
    let t = &c.sft;
    let mut opt = Adam::new(&model, adam_schedule(t.lr, t.warmup, t.steps))?;
    let mut rng = SplitMix64::stream(c.seed, 2);
    let mean = fit("sft", t.steps, &mut opt, Chatter::Quiet, reporter, |_| {
        let pairs: Vec<(Vec<i64>, Vec<i64>)> = (0..t.batch)
            .map(|_| {
                let k = rng.below(words.len() as u64) as usize;
                let mut ids = tok.encode_plain(&corpus_answer(words[k], c, &mut rng))?;
                ids.push(eos);
                Ok((prompt_ids[k].clone(), ids))
            })
            .collect::<Result<_>>()?;
        let s = score(&model, &pairs, tok.pad_id)?;
        Ok(-s.logprobs.sum(Kind::Float) / s.mask.sum(Kind::Float))
    })?;
    Ok((model, mean))
}
