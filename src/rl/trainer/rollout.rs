//! Sampling and scoring: the completions of a step, their log-probabilities under the policy,
//! the anchor and the init, and their rewards.

#[allow(unused_imports)]
use super::*;

/// The LM head of `m` (with the final logit soft-capping of the families that have one) as a
/// function of hidden states: f32 logits.
pub(super) fn head_of(m: &CausalLm) -> Result<impl Fn(&Tensor) -> Result<Tensor> + '_> {
    Ok(move |h: &Tensor| m.logits_from_hidden(h))
}

/// What scoring one micro-batch gave (device tensors, per sequence unless said otherwise).
pub(super) struct Scored {
    pub(super) comp: Completions,
    /// The policy's hidden states at the completion positions, with the decoder's graph when
    /// scored for the backward pass.
    pub(super) hidden: Option<Tensor>,
    pub(super) seq_logprob: Tensor,
    /// The policy's log-probability of each completion token `[N]` (no graph).
    pub(super) token_logprob: Tensor,
    pub(super) anchor_logprob: Tensor,
    pub(super) kl_anchor: Tensor,
    pub(super) kl_init: Option<Tensor>,
    /// Summed over the micro-batch's tokens.
    pub(super) entropy_sum: Tensor,
    /// The anchor's hidden states at the completion positions (no graph), kept for the top-k KL
    /// term of the backward pass (`--kl-estimator topk`).
    pub(super) anchor_hidden: Option<Tensor>,
}

pub(super) fn check_rewards(rewards: &[f64], expected: usize, name: &str) -> Result<()> {
    if rewards.len() != expected {
        return Err(Error::reward(
            name,
            format!(
                "returned {} values for {expected} completions",
                rewards.len()
            ),
        ));
    }
    if let Some((i, x)) = rewards.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(Error::reward(
            name,
            format!("returned {x} for completion {i}"),
        ));
    }
    Ok(())
}
impl Trainer {
    /// Completions of `prompts`, `micro_batch` sequences per generation call, each call drawing
    /// from its own stream (derived from `seed` and the call's index).
    pub(super) fn sample(
        &self,
        model: &CausalLm,
        prompts: &[Vec<i64>],
        seed: u64,
    ) -> Result<Vec<Vec<i64>>> {
        let mut out = Vec::with_capacity(prompts.len());
        let k = self.cfg.micro_batch.max(1);
        for (i, chunk) in prompts.chunks(k).enumerate() {
            let o = GenerateOptions {
                max_new_tokens: self.cfg.max_new_tokens,
                temperature: self.cfg.temperature,
                top_k: 0,
                top_p: 1.0,
                seed: if i == 0 {
                    seed
                } else {
                    SplitMix64::stream(seed, i as u64).next_u64()
                },
                eos_ids: self.tok.eos_ids.clone(),
                pad_id: self.tok.pad_id,
                record_logits: false,
            };
            out.extend(generate(model, chunk, &o)?.completions);
        }
        Ok(out)
    }

    /// The (prompt, completion) pairs of a micro-batch laid out for scoring by `model`.
    pub(super) fn completions(
        &self,
        model: &CausalLm,
        pairs: &[(Vec<i64>, Vec<i64>)],
    ) -> Result<Completions> {
        let c = &model.config;
        Completions::new(
            pairs,
            self.tok.pad_id,
            c.vocab_size,
            c.max_position_embeddings,
            model.device,
        )
    }

    /// Scores the (prompt, completion) pairs of one micro-batch: the policy's log-probabilities
    /// of the sampled tokens (keeping the decoder's graph when `grad`), the anchor's, the KL to
    /// the anchor (and to the init when `init_metrics`) and the entropy.
    pub(super) fn score(
        &self,
        pairs: &[(Vec<i64>, Vec<i64>)],
        grad: bool,
        init_metrics: bool,
    ) -> Result<Scored> {
        let comp = self.completions(&self.policy, pairs)?;
        let hidden_of = |m: &CausalLm| -> Result<Tensor> {
            let h = m.hidden_states(&comp.ids, &comp.attention_mask, &comp.position_ids)?;
            comp.gather(&h)
        };
        let hidden = if grad {
            tch::with_grad(|| hidden_of(&self.policy))?
        } else {
            tch::no_grad(|| hidden_of(&self.policy))?
        };
        let keep_anchor = grad && self.cfg.kl_estimator == KlEstimator::Topk;
        let mut anchor_hidden = None;
        let (token_logprob, anchor_logprob, kl_anchor, kl_init, entropy_sum) = tch::no_grad(
            || -> Result<(Tensor, Tensor, Tensor, Option<Tensor>, Tensor)> {
                let anchor = self.anchor_model()?;
                let ha = hidden_of(anchor)?;
                if keep_anchor {
                    anchor_hidden = Some(ha.shallow_clone());
                }
                let init = match (&self.init, init_metrics, self.cfg.anchor) {
                    (Some(m), true, Anchor::Ema) => Some((m, hidden_of(m)?)),
                    _ => None,
                };
                let (hp, hd) = (head_of(&self.policy)?, hidden.detach());
                let ah = head_of(anchor)?;
                let ih = match &init {
                    Some((m, _)) => Some(head_of(m)?),
                    None => None,
                };
                let mut refs = vec![Reference {
                    hidden: &ha,
                    head: &ah,
                }];
                if let (Some((_, hi)), Some(ih)) = (&init, &ih) {
                    refs.push(Reference {
                        hidden: hi,
                        head: ih,
                    });
                }
                let s = token_stats(
                    &hd,
                    &hp,
                    &comp.targets,
                    &refs,
                    &StatsOptions {
                        temperature: self.cfg.temperature,
                        chunk: self.chunk,
                        entropy: true,
                    },
                )?;
                let seq = |t: &Tensor| comp.per_sequence(t);
                let kl_anchor = seq(&s.references[0].kl)?;
                let kl_init = match (s.references.get(1), self.cfg.anchor) {
                    (Some(r), _) => Some(seq(&r.kl)?),
                    (None, Anchor::Init) => Some(kl_anchor.shallow_clone()),
                    (None, Anchor::Ema) => None,
                };
                let entropy_sum = s
                    .entropy
                    .as_ref()
                    .ok_or_else(|| Error::Internal("no entropy".into()))?
                    .f_sum(Kind::Float)
                    .map_err(|e| Error::compute("entropy", e))?;
                Ok((
                    s.logprobs.shallow_clone(),
                    seq(&s.references[0].logprobs)?,
                    kl_anchor,
                    kl_init,
                    entropy_sum,
                ))
            },
        )?;
        Ok(Scored {
            seq_logprob: comp.per_sequence(&token_logprob)?,
            token_logprob,
            anchor_logprob,
            kl_anchor,
            kl_init,
            entropy_sum,
            hidden: grad.then_some(hidden),
            anchor_hidden,
            comp,
        })
    }

    /// Checked rewards of `completions` (token ids), the i-th a completion of prompt
    /// `sample_prompts[i]`.
    pub(super) fn rewards(
        &mut self,
        sample_prompts: &[usize],
        completions: &[Vec<i64>],
    ) -> Result<Vec<f64>> {
        let texts = completions
            .iter()
            .map(|c| self.tok.decode(c))
            .collect::<Result<Vec<_>>>()?;
        let pairs: Vec<(&Prompt, &str)> = sample_prompts
            .iter()
            .zip(&texts)
            .map(|(&i, t)| (&self.prompts[i], t.as_str()))
            .collect();
        let rewards = self.reward.score_prompts(&pairs)?;
        check_rewards(&rewards, pairs.len(), self.reward.name())?;
        Ok(rewards)
    }

    /// The policy's completion-position hidden states of one micro-batch, with the graph.
    pub(super) fn score_for_backward(&self, pairs: &[(Vec<i64>, Vec<i64>)]) -> Result<Scored> {
        let comp = self.completions(&self.policy, pairs)?;
        let hidden = tch::with_grad(|| {
            let h =
                self.policy
                    .hidden_states(&comp.ids, &comp.attention_mask, &comp.position_ids)?;
            comp.gather(&h)
        })?;
        let zero = || {
            Tensor::f_zeros([0], (Kind::Float, self.policy.device))
                .map_err(|e| Error::compute("scoring", e))
        };
        // The top-k KL term needs the anchor at the same positions (the current anchor: an EMA
        // anchor moves after every update).
        let anchor_hidden = match self.cfg.kl_estimator {
            KlEstimator::Topk => Some(tch::no_grad(|| -> Result<Tensor> {
                let a = self.anchor_model()?;
                let h = a.hidden_states(&comp.ids, &comp.attention_mask, &comp.position_ids)?;
                comp.gather(&h)
            })?),
            KlEstimator::Sampled => None,
        };
        Ok(Scored {
            comp,
            hidden: Some(hidden),
            seq_logprob: zero()?,
            token_logprob: zero()?,
            anchor_logprob: zero()?,
            kl_anchor: zero()?,
            kl_init: None,
            entropy_sum: zero()?,
            anchor_hidden,
        })
    }
}
