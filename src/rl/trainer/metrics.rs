//! What a step measured (`metrics.jsonl`), and the EMA's own samples at checkpoints.

#[allow(unused_imports)]
use super::*;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone)]
pub struct StepMetrics {
    pub step: u64,
    pub reward_mean: f64,
    pub reward_std: f64,
    /// Mean of the sequence-level KL(π ‖ anchor), estimated with per-token full-vocabulary KL
    /// along the samples (at the sampling temperature).
    pub kl_anchor: f64,
    /// The same towards the init: on the steps `metrics_every` selects (and every step with
    /// `--anchor init`, where it is the anchor's).
    pub kl_init: Option<f64>,
    /// Mean per-token entropy of the sampling distribution.
    pub entropy: f64,
    pub completion_len: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub loss: f64,
    /// With several updates per batch: the share of completion tokens whose gradient the
    /// clipping removed, over the batch's later updates.
    pub clip_frac: Option<f64>,
    pub samples_per_s: f64,
    /// Where the step's wall time went: sampling (with its KV caches), the reward, and the rest
    /// (scoring, backward, optimizer, EMA). On a GPU, work is timed when it is waited for.
    pub generate_s: f64,
    pub reward_s: f64,
    pub train_s: f64,
    /// Sampled tokens (EOS included) per second of sampling.
    pub gen_tokens_per_s: f64,
    /// At checkpoint steps: the EMA's own samples' reward and KL(ema ‖ init) (when the init is
    /// held).
    pub ema: Option<(f64, Option<f64>)>,
}

impl StepMetrics {
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "step": self.step, "reward_mean": self.reward_mean, "reward_std": self.reward_std,
            "kl_anchor": self.kl_anchor, "kl_init": self.kl_init, "entropy": self.entropy,
            "completion_len": self.completion_len, "lr": self.lr, "grad_norm": self.grad_norm,
            "loss": self.loss, "samples_per_s": self.samples_per_s,
            "generate_s": self.generate_s, "reward_s": self.reward_s, "train_s": self.train_s,
            "gen_tokens_per_s": self.gen_tokens_per_s,
        });
        if let Some(c) = self.clip_frac {
            v["clip_frac"] = json!(c);
        }
        if let Some((r, kl)) = self.ema {
            v["ema_reward_mean"] = json!(r);
            v["ema_kl_init"] = json!(kl);
        }
        v
    }
}
impl Trainer {
    /// Reward and KL(ema ‖ init) of the EMA's own samples on this step's prompts, scored as
    /// training scores them ([`Self::rewards`]: the prompt file's text, not a decoding of its
    /// tokens), so that `ema_reward_mean` and `reward_mean` measure two models the same way.
    pub(super) fn probe_ema(
        &mut self,
        sample_prompts: &[usize],
        pairs: &[(Vec<i64>, Vec<i64>)],
        seed: u64,
    ) -> Result<(f64, Option<f64>)> {
        let prompts: Vec<Vec<i64>> = pairs.iter().map(|(p, _)| p.clone()).collect();
        let completions = self.sample(
            self.ema_compute.as_ref().unwrap_or(&self.ema),
            &prompts,
            seed,
        )?;
        let rewards = self.rewards(sample_prompts, &completions)?;
        let ema = self.ema_compute.as_ref().unwrap_or(&self.ema);
        let reward = rewards.iter().sum::<f64>() / rewards.len() as f64;
        let Some(init) = &self.init else {
            return Ok((reward, None));
        };
        let pairs: Vec<(Vec<i64>, Vec<i64>)> = prompts.into_iter().zip(completions).collect();
        let mut total = 0.0;
        for chunk in pairs.chunks(self.cfg.micro_batch.max(1)) {
            let comp = self.completions(ema, chunk)?;
            total += tch::no_grad(|| -> Result<f64> {
                let hidden_of = |m: &CausalLm| -> Result<Tensor> {
                    let h = m.hidden_states(&comp.ids, &comp.attention_mask, &comp.position_ids)?;
                    comp.gather(&h)
                };
                let (he, hi) = (hidden_of(ema)?, hidden_of(init)?);
                let (eh, ih) = (head_of(ema)?, head_of(init)?);
                let s = token_stats(
                    &he,
                    &eh,
                    &comp.targets,
                    &[Reference {
                        hidden: &hi,
                        head: &ih,
                    }],
                    &StatsOptions {
                        temperature: self.cfg.temperature,
                        chunk: self.chunk,
                        entropy: false,
                    },
                )?;
                s.references[0]
                    .kl
                    .f_sum(Kind::Double)
                    .and_then(|t| t.f_double_value(&[]))
                    .map_err(|e| Error::compute("KL(ema ‖ init)", e))
            })?;
        }
        Ok((reward, Some(total / pairs.len() as f64)))
    }
}
