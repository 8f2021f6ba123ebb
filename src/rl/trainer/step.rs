//! The loss and the optimizer step: advantages, loss weights, gradient accumulation over
//! micro-batches, Adam and the EMA update.

#[allow(unused_imports)]
use super::*;

/// Sums of a step's per-sequence metrics over its micro-batches (device tensors).
#[derive(Default)]
pub(super) struct Sums {
    pub(super) kl_anchor: Vec<Tensor>,
    pub(super) kl_init: Vec<Tensor>,
    pub(super) entropy: Vec<Tensor>,
    pub(super) objective: Vec<Tensor>,
}

impl Sums {
    pub(super) fn add(&mut self, s: &Scored) {
        self.kl_anchor.push(s.kl_anchor.shallow_clone());
        if let Some(k) = &s.kl_init {
            self.kl_init.push(k.shallow_clone());
        }
        self.entropy.push(s.entropy_sum.shallow_clone());
    }

    /// The sums and the squared gradient norm, read from the device at once.
    pub(super) fn read(&self, grad_sq: &Tensor, init_metrics: bool) -> Result<ReadBack> {
        let sum = |v: &[Tensor]| -> std::result::Result<Tensor, tch::TchError> {
            if v.is_empty() {
                Tensor::f_zeros([], (Kind::Double, grad_sq.device()))
            } else {
                let parts = v
                    .iter()
                    .map(|t| t.f_sum(Kind::Double))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                Tensor::f_stack(&parts, 0)?.f_sum(Kind::Double)
            }
        };
        let all = (|| {
            let t = Tensor::f_stack(
                &[
                    grad_sq.f_to_kind(Kind::Double)?,
                    sum(&self.objective)?,
                    sum(&self.kl_anchor)?,
                    sum(&self.kl_init)?,
                    sum(&self.entropy)?,
                ],
                0,
            )?;
            Vec::<f64>::try_from(t.f_to_device_(Device::Cpu, Kind::Double, false, false)?)
        })()
        .map_err(|e| Error::compute("reading the step's metrics", e))?;
        Ok(ReadBack {
            grad_sq: all[0],
            objective: all[1],
            kl_anchor: all[2],
            kl_init: init_metrics.then_some(all[3]),
            entropy: all[4],
        })
    }
}

/// A step's loss and metrics, as [`Trainer::accumulate_gradient`] computed them.
#[derive(Debug, Clone, Copy)]
pub struct StepSums {
    /// Global norm of the summed gradient (before clipping).
    pub grad_norm: f64,
    /// −mean(A · log π(y|x)).
    pub loss: f64,
    /// Mean over the samples of Σ_t KL(π ‖ anchor) along each.
    pub kl_anchor: f64,
    pub kl_init: Option<f64>,
    /// Mean per-token entropy.
    pub entropy: f64,
}

/// What [`Sums::read`] brought back.
pub(super) struct ReadBack {
    pub(super) grad_sq: f64,
    pub(super) objective: f64,
    pub(super) kl_anchor: f64,
    pub(super) kl_init: Option<f64>,
    pub(super) entropy: f64,
}

/// Added to a group's standard deviation before dividing by it (GRPO; TRL's GRPOTrainer adds
/// the same), so that a group of equal rewards gets advantages 0, not NaN.
pub const GRPO_STD_EPS: f64 = 1e-4;

/// Policy-gradient weights of samples grouped by prompt (`n` consecutive samples each):
/// r_β itself (REINFORCE), r_β minus the mean r_β of the prompt's other n − 1 samples (RLOO),
/// r_β minus the group's mean (Dr. GRPO), divided by the group's standard deviation (unbiased,
/// + [`GRPO_STD_EPS`]; GRPO).
pub fn advantages(r_beta: &Tensor, n: usize, baseline: Baseline) -> Tensor {
    let grp = || r_beta.view([-1, n as i64]);
    let centred = || {
        let g = grp();
        &g - g.mean_dim(-1, true, Kind::Float)
    };
    match baseline {
        Baseline::None => r_beta.shallow_clone(),
        Baseline::Rloo => {
            let grp = grp();
            let others = (grp.sum_dim_intlist(-1, true, Kind::Float) - &grp) / (n as f64 - 1.0);
            (grp - others).view([-1])
        }
        Baseline::DrGrpo => centred().view([-1]),
        Baseline::Grpo => {
            let std = grp().std_dim(-1, true, true);
            (centred() / (std + GRPO_STD_EPS)).view([-1])
        }
    }
}

/// What the first update of a batch recorded for the later ones (`--updates-per-batch`).
pub(super) struct Rollout {
    /// Per micro-batch, the log-probability `[N]` of each completion token under the policy
    /// that sampled it.
    old: Vec<Tensor>,
    /// Per sample, its loss weight −A/(batch size) `[total]`.
    weights: Tensor,
    /// The micro-batch size the tokens were laid out with.
    micro_batch: usize,
    total: usize,
}

impl Rollout {
    fn new(old: Vec<Tensor>, weights: &[Tensor], micro_batch: usize, total: usize) -> Result<Self> {
        Ok(Rollout {
            old,
            weights: Tensor::f_cat(weights, 0).map_err(|e| Error::compute("advantages", e))?,
            micro_batch,
            total,
        })
    }
}

impl ReadBack {
    /// The step's sums as means over the samples of `pairs` (entropy: per token).
    fn step_sums(&self, pairs: &[(Vec<i64>, Vec<i64>)]) -> StepSums {
        let total = pairs.len() as f64;
        let tokens: f64 = pairs.iter().map(|(_, y)| y.len() as f64).sum();
        StepSums {
            grad_norm: self.grad_sq.sqrt(),
            loss: self.objective,
            kl_anchor: self.kl_anchor / total,
            kl_init: self.kl_init.map(|x| x / total),
            entropy: if tokens > 0.0 {
                self.entropy / tokens
            } else {
                0.0
            },
        }
    }
}

/// What a later update of a batch computed ([`Trainer::accumulate_update`]).
#[derive(Debug, Clone, Copy)]
pub struct UpdateSums {
    /// Global norm of the summed gradient (before clipping).
    pub grad_norm: f64,
    /// Share of the completion tokens whose gradient the clipping removed.
    pub clip_frac: f64,
    /// Completion tokens.
    pub tokens: f64,
}

pub(super) fn adam_config(c: &RlConfig) -> AdamConfig {
    AdamConfig {
        lr: c.lr,
        warmup: c.warmup,
        grad_clip: c.grad_clip,
        ..AdamConfig::default()
    }
}
impl Trainer {
    /// The model the anchor log-probabilities come from.
    pub(super) fn anchor_model(&self) -> Result<&CausalLm> {
        match self.cfg.anchor {
            Anchor::Ema => Ok(self.ema_compute.as_ref().unwrap_or(&self.ema)),
            Anchor::Init => self
                .init
                .as_ref()
                .ok_or_else(|| Error::Internal("the init anchor is not loaded".into())),
        }
    }

    /// Whether step `step` scores the init for the KL-to-init metric.
    pub(super) fn init_metrics_at(&self, step: u64) -> bool {
        self.cfg.anchor == Anchor::Init
            || (self.cfg.metrics_every > 0 && step % self.cfg.metrics_every == 0)
    }

    /// Back-propagates Σ_t w_t · log π(y_t) of one micro-batch, w_t the weight of its sequence:
    /// `weights` `[sequences]` (constants). Returns the objective on the device.
    pub(super) fn backward(
        &mut self,
        s: &Scored,
        weights: &Tensor,
        total: usize,
    ) -> Result<Tensor> {
        let w = weights
            .f_index_select(0, &s.comp.seq)
            .map_err(|e| Error::compute("loss weights", e))?;
        self.backward_tokens(s, Weights::Fixed(&w), None, total)
    }

    /// Back-propagates Σ_t w_t · log π(y_t) of one micro-batch with per-token weights (plus the
    /// top-k KL term with `--kl-estimator topk`: β/`total` per token, `old` the log-probabilities
    /// the tokens were sampled with in a later update), folding the head's bf16 gradient into f32
    /// after every chunk.
    pub(super) fn backward_tokens(
        &mut self,
        s: &Scored,
        weights: Weights,
        old: Option<&Tensor>,
        total: usize,
    ) -> Result<Tensor> {
        let h = s
            .hidden
            .as_ref()
            .ok_or_else(|| Error::Internal("scored without the graph".into()))?;
        let head = head_of(&self.policy)?;
        // The anchor by its fields (not `anchor_model`, which borrows all of self: the optimizer
        // is borrowed mutably below).
        let anchor = match self.cfg.anchor {
            Anchor::Ema => Some(self.ema_compute.as_ref().unwrap_or(&self.ema)),
            Anchor::Init => self.init.as_ref(),
        };
        let anchor_head = match (&s.anchor_hidden, anchor) {
            (Some(_), Some(a)) => Some(head_of(a)?),
            (Some(_), None) => return Err(Error::Internal("the init anchor is not loaded".into())),
            (None, _) => None,
        };
        let kl = match (&s.anchor_hidden, &anchor_head) {
            (Some(hidden), Some(head)) => Some(TopKl {
                anchor: Reference { hidden, head },
                k: self.cfg.kl_topk.min(i64::MAX as usize) as i64,
                scale: self.cfg.beta / total as f64,
                old,
            }),
            _ => None,
        };
        let (opt, slots) = (&mut self.opt, &self.head_slots);
        let mut fold = || {
            if slots.is_empty() {
                Ok(())
            } else {
                opt.accumulate_slots(slots)
            }
        };
        backward_weighted(
            h,
            &head,
            &s.comp.targets,
            weights,
            kl.as_ref(),
            (self.cfg.temperature, self.chunk),
            &mut fold,
        )
    }

    /// Weights of the sequences' log-probabilities in the loss −mean(A · log π): −A / (batch
    /// size), A the advantages of r_β = r − β·(log π − log π_anchor) − length penalty · |y|.
    pub(super) fn loss_weights(
        &self,
        r: &Tensor,
        s_lp: &Tensor,
        a_lp: &Tensor,
        lens: &Tensor,
        total: usize,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        tch::no_grad(|| {
            // With the top-k estimator the KL is a loss term of its own (backward_tokens).
            let beta = match c.kl_estimator {
                KlEstimator::Sampled => c.beta,
                KlEstimator::Topk => 0.0,
            };
            let log_ratio = s_lp.f_sub(a_lp)?;
            let r_beta = r
                .f_sub(&log_ratio.f_mul_scalar(beta)?)?
                .f_sub(&lens.f_mul_scalar(c.length_penalty)?)?;
            advantages(&r_beta, c.n, c.baseline).f_mul_scalar(-1.0 / total as f64)
        })
        .map_err(|e| Error::compute("advantages", e))
    }

    /// One optimizer step (and EMA update); `probe_ema` also samples from the EMA for its metrics.
    pub fn train_step(&mut self, probe_ema: bool) -> Result<StepMetrics> {
        let started = Instant::now();
        let c = self.cfg.clone();
        let step = self.step + 1;
        let mut rng = SplitMix64::stream(c.seed, 1 << 32 | step);
        let chosen: Vec<usize> = (0..c.batch)
            .map(|_| rng.below(self.prompts.len() as u64) as usize)
            .collect();
        let ids: Vec<Vec<i64>> = chosen
            .iter()
            .flat_map(|&i| std::iter::repeat(self.prompt_ids[i].clone()).take(c.n))
            .collect();
        let gen_seed = rng.next_u64();
        let completions = self.sample(&self.policy, &ids, gen_seed)?;
        let generate_s = started.elapsed().as_secs_f64();
        let sample_prompts: Vec<usize> = chosen
            .iter()
            .flat_map(|&i| std::iter::repeat(i).take(c.n))
            .collect();
        let t_reward = Instant::now();
        let rewards = self.rewards(&sample_prompts, &completions)?;
        let reward_s = t_reward.elapsed().as_secs_f64();
        let t_train = Instant::now();
        let pairs: Vec<(Vec<i64>, Vec<i64>)> = ids.into_iter().zip(completions).collect();
        let total = pairs.len();
        let init_metrics = self.init_metrics_at(step) && self.init.is_some();
        let summed = self.accumulate_gradient(&pairs, &rewards, init_metrics)?;
        let info = self.update(summed.grad_norm)?;
        let mut clip = (0.0, 0.0);
        for _ in 1..c.updates_per_batch {
            let u = self.accumulate_update(&pairs)?;
            self.update(u.grad_norm)?;
            clip = (clip.0 + u.clip_frac * u.tokens, clip.1 + u.tokens);
        }
        self.rollout = None;
        self.step = step;
        let train_s = t_train.elapsed().as_secs_f64();

        let rv = &rewards;
        let mean = rv.iter().sum::<f64>() / rv.len() as f64;
        let std = (rv.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / rv.len() as f64).sqrt();
        let tokens: f64 = pairs.iter().map(|(_, y)| y.len() as f64).sum();
        let samples_per_s = total as f64 / started.elapsed().as_secs_f64();
        let ema = if probe_ema {
            Some(self.probe_ema(&sample_prompts, &pairs, gen_seed)?)
        } else {
            None
        };
        Ok(StepMetrics {
            step,
            reward_mean: mean,
            reward_std: std,
            kl_anchor: summed.kl_anchor,
            kl_init: summed.kl_init,
            entropy: summed.entropy,
            completion_len: tokens / total as f64,
            lr: info.lr,
            grad_norm: info.grad_norm,
            loss: summed.loss,
            clip_frac: (c.updates_per_batch > 1).then_some(if clip.1 > 0.0 {
                clip.0 / clip.1
            } else {
                0.0
            }),
            samples_per_s,
            generate_s,
            reward_s,
            train_s,
            gen_tokens_per_s: if generate_s > 0.0 {
                tokens / generate_s
            } else {
                0.0
            },
            ema,
        })
    }

    /// The gradient of the step's loss −mean(A · log π(y|x)) for `pairs` and their `rewards`,
    /// summed over micro-batches into the policy's gradients (in f32 by the optimizer when the
    /// policy is bf16), and the step's sums, read from the device once with the squared
    /// gradient norm. `init_metrics` also scores the init (KL to the init).
    pub fn accumulate_gradient(
        &mut self,
        pairs: &[(Vec<i64>, Vec<i64>)],
        rewards: &[f64],
        init_metrics: bool,
    ) -> Result<StepSums> {
        let c = self.cfg.clone();
        let total = pairs.len();
        if rewards.len() != total || total == 0 || total % c.n != 0 {
            return Err(Error::Internal(format!(
                "{} rewards for {total} samples in groups of {}",
                rewards.len(),
                c.n
            )));
        }
        let dev = self.policy.device;
        let to_dev = |v: Vec<f32>| -> Result<Tensor> {
            Tensor::f_from_slice(&v)
                .and_then(|t| t.f_to_device_(dev, Kind::Float, false, false))
                .map_err(|e| Error::compute("rewards to the device", e))
        };
        let r_all = to_dev(rewards.iter().map(|&x| x as f32).collect())?;
        let len_all = to_dev(pairs.iter().map(|(_, y)| y.len() as f32).collect())?;
        let k = c.micro_batch.max(1);
        let n_mb = total.div_ceil(k);
        // One pass when every micro-batch holds whole prompt groups (their baselines are
        // inside), else a no-graph pass for every log-probability first.
        let one_pass = !c.baseline.grouped() || k % c.n == 0;
        let record = c.updates_per_batch > 1;
        let (mut old, mut ws) = (Vec::new(), Vec::new());
        let rows = |i: usize| -> Result<(usize, usize, Tensor, Tensor)> {
            let (a, b) = (i * k, ((i + 1) * k).min(total));
            let narrow = |t: &Tensor| {
                t.f_narrow(0, a as i64, (b - a) as i64)
                    .map_err(|e| Error::compute("micro-batch", e))
            };
            Ok((a, b, narrow(&r_all)?, narrow(&len_all)?))
        };
        self.opt.zero_grad();
        let mut sums = Sums::default();
        let accumulate = n_mb > 1 && self.opt.has_masters();
        if one_pass {
            for i in 0..n_mb {
                let (a, b, r, l) = rows(i)?;
                let s = self.score(&pairs[a..b], true, init_metrics)?;
                let w = self.loss_weights(&r, &s.seq_logprob, &s.anchor_logprob, &l, total)?;
                sums.objective.push(self.backward(&s, &w, total)?);
                sums.add(&s);
                if record {
                    old.push(s.token_logprob.shallow_clone());
                    ws.push(w);
                }
                if accumulate {
                    self.opt.accumulate()?;
                }
            }
        } else {
            let mut lp = Vec::with_capacity(n_mb);
            let mut alp = Vec::with_capacity(n_mb);
            for i in 0..n_mb {
                let (a, b, _, _) = rows(i)?;
                let s = self.score(&pairs[a..b], false, init_metrics)?;
                lp.push(s.seq_logprob.shallow_clone());
                alp.push(s.anchor_logprob.shallow_clone());
                sums.add(&s);
                if record {
                    old.push(s.token_logprob.shallow_clone());
                }
            }
            let cat =
                |v: &[Tensor]| Tensor::f_cat(v, 0).map_err(|e| Error::compute("log-probs", e));
            let w_all = self.loss_weights(&r_all, &cat(&lp)?, &cat(&alp)?, &len_all, total)?;
            if record {
                ws.push(w_all.shallow_clone());
            }
            for i in 0..n_mb {
                let (a, b, _, _) = rows(i)?;
                let s = self.score_for_backward(&pairs[a..b])?;
                let w = w_all
                    .f_narrow(0, a as i64, (b - a) as i64)
                    .map_err(|e| Error::compute("micro-batch", e))?;
                sums.objective.push(self.backward(&s, &w, total)?);
                if accumulate {
                    self.opt.accumulate()?;
                }
            }
        }
        self.rollout = record
            .then(|| Rollout::new(old, &ws, k, total))
            .transpose()?;
        let grad_sq = self.opt.grad_sq_norm()?;
        let read = sums.read(&grad_sq, init_metrics)?;
        Ok(read.step_sums(pairs))
    }

    /// The gradient of a later update of the batch [`accumulate_gradient`](Self::accumulate_gradient)
    /// last worked on (the same `pairs`), summed over the same micro-batches into the policy's
    /// gradients: token t of sample i weighted by −A_i·ρ_t/(batch size), ρ_t = π_θ(y_t)/π_old(y_t),
    /// and by 0 where the clipped surrogate is flat (see the module docs).
    pub fn accumulate_update(&mut self, pairs: &[(Vec<i64>, Vec<i64>)]) -> Result<UpdateSums> {
        let ro = self
            .rollout
            .take()
            .ok_or_else(|| Error::Internal("a later update without a first one".into()))?;
        let result = self.clipped_gradient(pairs, &ro);
        self.rollout = Some(ro);
        result
    }

    fn clipped_gradient(
        &mut self,
        pairs: &[(Vec<i64>, Vec<i64>)],
        ro: &Rollout,
    ) -> Result<UpdateSums> {
        let (k, total) = (ro.micro_batch, ro.total);
        if pairs.len() != total || ro.old.len() != total.div_ceil(k) {
            return Err(Error::Internal(format!(
                "a later update of {} samples for a batch of {total}",
                pairs.len()
            )));
        }
        let eps = self.cfg.clip_eps;
        self.opt.zero_grad();
        let mut clipped = Vec::new();
        let mut tokens = 0i64;
        let accumulate = ro.old.len() > 1 && self.opt.has_masters();
        for (i, old) in ro.old.iter().enumerate() {
            let (a, b) = (i * k, ((i + 1) * k).min(total));
            let s = self.score_for_backward(&pairs[a..b])?;
            let w_tok = ro
                .weights
                .f_narrow(0, a as i64, (b - a) as i64)
                .and_then(|w| w.f_index_select(0, &s.comp.seq))
                .map_err(|e| Error::compute("loss weights", e))?;
            if old.size() != w_tok.size() {
                return Err(Error::Internal(format!(
                    "micro-batch {i}: {:?} old log-probabilities for {:?} tokens",
                    old.size(),
                    w_tok.size()
                )));
            }
            tokens += s.comp.n_tokens;
            let mut weigh = |start: i64, len: i64, lp: &Tensor| -> Result<Tensor> {
                let (w, cnt) = clipped_weights(
                    &w_tok.f_narrow(0, start, len).map_err(be_chunk)?,
                    &old.f_narrow(0, start, len).map_err(be_chunk)?,
                    lp,
                    eps,
                )?;
                clipped.push(cnt);
                Ok(w)
            };
            // The surrogate's value is not the objective: not reported.
            let _ = self.backward_tokens(&s, Weights::Of(&mut weigh), Some(old), total)?;
            if accumulate {
                self.opt.accumulate()?;
            }
        }
        let grad_sq = self.opt.grad_sq_norm()?;
        let read = (|| {
            let mut parts = vec![grad_sq.f_to_kind(Kind::Double)?];
            for c in &clipped {
                parts.push(c.f_to_kind(Kind::Double)?);
            }
            let t = Tensor::f_stack(&parts, 0)?;
            Vec::<f64>::try_from(t.f_to_device_(Device::Cpu, Kind::Double, false, false)?)
        })()
        .map_err(|e| Error::compute("reading the update's metrics", e))?;
        let n_clipped: f64 = read[1..].iter().sum();
        Ok(UpdateSums {
            grad_norm: read[0].sqrt(),
            clip_frac: if tokens > 0 {
                n_clipped / tokens as f64
            } else {
                0.0
            },
            tokens: tokens as f64,
        })
    }

    /// One optimizer step from the gradients accumulated (their global norm `grad_norm`), then
    /// the EMA update.
    pub fn update(&mut self, grad_norm: f64) -> Result<crate::rl::optim::StepInfo> {
        let info = self.opt.apply(grad_norm)?;
        self.update_ema()?;
        Ok(info)
    }

    /// The policy's gradients as f32 tensors by parameter name (what the next optimizer step
    /// uses: the sums over micro-batches).
    pub fn gradients(&self) -> Result<Vec<(String, Tensor)>> {
        self.opt.gradients_f32()
    }

    /// θ_ema ← (1 − μ) θ_ema + μ θ, in f32, from the optimizer's exact f32 weights (the master
    /// copies when the policy trains in bf16: the EMA then averages the trained trajectory, not
    /// its bf16 rounding, and equals the EMA of the f32 policies the run saves); then the bf16
    /// copy the anchor forward uses.
    pub(super) fn update_ema(&mut self) -> Result<()> {
        let mu = self.cfg.mu;
        let weights: HashMap<&str, Tensor> = self.opt.weights_f32().into_iter().collect();
        // A LoRA run averages the factors A and B (not the deltas s·B·A).
        let targets: Vec<(String, Tensor)> = match &self.lora {
            Some(l) => l.ema.named(),
            None => self.ema.vs.variables().into_iter().collect(),
        };
        tch::no_grad(|| -> Result<()> {
            for (name, mut e) in targets {
                let p = weights.get(name.as_str()).ok_or_else(|| {
                    Error::Internal(format!("EMA parameter '{name}' is not optimised"))
                })?;
                let _ = e
                    .f_mul_scalar_(1.0 - mu)
                    .and_then(|mut e| e.f_add_(&p.f_mul_scalar(mu)?))
                    .map_err(|err| Error::compute(format!("EMA update of '{name}'"), err))?;
            }
            Ok(())
        })?;
        if let Some(e) = &self.ema_compute {
            copy_weights(&self.ema, e)?;
        }
        Ok(())
    }
}

fn be_chunk(e: tch::TchError) -> Error {
    Error::compute("chunk", e)
}

/// Per-token weights of a later update: `w` (−A/(batch size) per token) × ρ, ρ = exp(lp − old),
/// and 0 where the clipped surrogate min(ρA, clip(ρ, 1 ± ε)A) is flat — ρ > 1 + ε with A > 0
/// (w < 0), ρ < 1 − ε with A < 0 (w > 0). Also the number of such tokens (a 0-dim tensor).
pub(super) fn clipped_weights(
    w: &Tensor,
    old: &Tensor,
    lp: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    (|| {
        let ratio = lp.f_sub(old)?.f_exp()?;
        let flat = w
            .f_lt(0.0)?
            .f_logical_and(&ratio.f_gt(1.0 + eps)?)?
            .f_logical_or(&w.f_gt(0.0)?.f_logical_and(&ratio.f_lt(1.0 - eps)?)?)?;
        let weights = w.f_mul(&ratio)?.f_masked_fill(&flat, 0.0)?;
        Ok((weights, flat.f_sum(Kind::Float)?))
    })()
    .map_err(|e: tch::TchError| Error::compute("clipped importance ratios", e))
}
