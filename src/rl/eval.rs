//! Evaluation of a policy on a prompt set: sampled completions, their mean reward, and the
//! KL divergence to a reference policy estimated on those samples.

use std::path::Path;

use tch::{Kind, Tensor};

use super::chat::TemplateChoice;
use super::chunked::{
    chunk_positions, token_stats, Completions, Reference, StatsOptions, DEFAULT_CHUNK_BYTES,
};
use super::data::{Prompt, PromptLine};
use super::generate::{generate_batched, Batching, GenerateOptions};
use super::model::CausalLm;
use super::reward::Reward;
use super::tokenizer::Tokenizer;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::stats::eval_table::{EvalRow, Point, PointKind};
use crate::stats::SampleTable;

#[derive(Debug, Clone)]
pub struct SampleOptions {
    /// Completions per prompt.
    pub samples: usize,
    pub temperature: f64,
    pub max_new_tokens: usize,
    /// Sequences per generation batch.
    pub batch: usize,
    pub seed: u64,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            samples: 4,
            temperature: 1.0,
            max_new_tokens: 8,
            batch: 512,
            seed: 0,
        }
    }
}

/// One sampled completion.
#[derive(Debug, Clone)]
pub struct Sample {
    pub prompt: usize,
    pub prompt_ids: Vec<i64>,
    /// Sampled ids, EOS included when emitted.
    pub ids: Vec<i64>,
    /// Decoded text, special tokens skipped.
    pub text: String,
}

/// `samples` completions for every prompt, in prompt order, `batch` sequences at a time;
/// deterministic given the seed, whatever the batch (each sequence draws from its own stream).
/// Each prompt is prefilled once for its samples and ended sequences leave the batch, as in the
/// trainer's rollout ([`generate_batched`]).
pub fn sample(
    model: &CausalLm,
    tok: &Tokenizer,
    prompts: &[Prompt],
    o: &SampleOptions,
) -> Result<Vec<Sample>> {
    let mut jobs = Vec::with_capacity(prompts.len() * o.samples);
    for (i, p) in prompts.iter().enumerate() {
        let ids = tok.encode_prompt(p)?;
        for _ in 0..o.samples {
            jobs.push((i, ids.clone()));
        }
    }
    let ids: Vec<Vec<i64>> = jobs.iter().map(|(_, p)| p.clone()).collect();
    let g = generate_batched(
        model,
        &ids,
        &GenerateOptions {
            max_new_tokens: o.max_new_tokens,
            temperature: o.temperature,
            top_k: 0,
            top_p: 1.0,
            seed: o.seed,
            eos_ids: tok.eos_ids.clone(),
            pad_id: tok.pad_id,
            record_logits: false,
        },
        &Batching {
            batch: o.batch.max(1),
            ..Batching::default()
        },
    )?;
    let mut out = Vec::with_capacity(jobs.len());
    for ((i, p), c) in jobs.into_iter().zip(g.completions) {
        out.push(Sample {
            prompt: i,
            text: tok.decode(&c)?,
            prompt_ids: p,
            ids: c,
        });
    }
    Ok(out)
}

/// Σ over completion tokens of KL(π(·|prefix) ‖ π_ref(·|prefix)), both at `temperature`, for
/// each sample: an unbiased estimate of the sequence-level KL when the samples come from π, with
/// far less variance than the log-ratio of the sampled tokens alone. Computed `batch` samples at
/// a time through the chunked statistics (`super::chunked`): the hidden states at the completion
/// positions, then a chunk of positions at a time through both LM heads — no `[batch, length,
/// vocab]` tensor.
pub fn kl_per_sample(
    policy: &CausalLm,
    reference: &CausalLm,
    samples: &[Sample],
    pad_id: i64,
    temperature: f64,
    batch: usize,
) -> Result<Vec<f64>> {
    let c = &policy.config;
    let chunk = chunk_positions(c.vocab_size, DEFAULT_CHUNK_BYTES);
    let mut out = Vec::with_capacity(samples.len());
    for part in samples.chunks(batch.max(1)) {
        let pairs: Vec<(Vec<i64>, Vec<i64>)> = part
            .iter()
            .map(|s| (s.prompt_ids.clone(), s.ids.clone()))
            .collect();
        if pairs.iter().all(|(_, c)| c.is_empty()) {
            out.extend(std::iter::repeat(0.0).take(part.len()));
            continue;
        }
        let kl = tch::no_grad(|| -> Result<Tensor> {
            let comp = Completions::new(
                &pairs,
                pad_id,
                c.vocab_size,
                c.max_position_embeddings,
                policy.device,
            )?;
            let hidden = |m: &CausalLm| -> Result<Tensor> {
                let h = m.hidden_states(&comp.ids, &comp.attention_mask, &comp.position_ids)?;
                comp.gather(&h)
            };
            let (hp, hr) = (hidden(policy)?, hidden(reference)?);
            let head_p = |h: &Tensor| policy.logits_from_hidden(h);
            let head_r = |h: &Tensor| reference.logits_from_hidden(h);
            let s = token_stats(
                &hp,
                &head_p,
                &comp.targets,
                &[Reference {
                    hidden: &hr,
                    head: &head_r,
                }],
                &StatsOptions {
                    temperature,
                    chunk,
                    entropy: false,
                },
            )?;
            comp.per_sequence(&s.references[0].kl)
        })?;
        let v: Vec<f32> = Vec::try_from(kl.to_device(tch::Device::Cpu))
            .map_err(|e| Error::compute("reading KL estimates back from libtorch", e))?;
        out.extend(v.into_iter().map(f64::from));
    }
    Ok(out)
}

/// Per-position KL(softmax(p/T) ‖ softmax(q/T)) over the vocabulary: `[batch, len]`.
pub fn token_kl(p_logits: &Tensor, q_logits: &Tensor, temperature: f64) -> Tensor {
    let lp = (p_logits / temperature).log_softmax(-1, Kind::Float);
    let lq = (q_logits / temperature).log_softmax(-1, Kind::Float);
    (lp.exp() * (&lp - lq)).sum_dim_intlist(-1, false, Kind::Float)
}

/// Mean and standard error of the mean.
pub fn mean_se(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (m, f64::NAN);
    }
    let var = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, (var / n).sqrt())
}

/// One sampled completion as the evaluation measured it.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleOutcome {
    pub reward: f64,
    /// Σ over its tokens of the per-token KL to the reference (0 without one).
    pub kl: f64,
    /// Tokens, EOS included.
    pub len: u32,
    pub text: String,
}

/// What [`evaluate`] measured.
#[derive(Debug, Clone)]
pub struct EvalResult {
    pub n: usize,
    pub reward: f64,
    pub reward_se: f64,
    /// Against the reference, when one was given.
    pub kl: Option<(f64, f64)>,
    /// Mean completion length in tokens (EOS included).
    pub mean_len: f64,
    /// Every sample, by prompt, then sample (the order of [`sample`]).
    pub samples: Vec<SampleOutcome>,
}

/// Mean reward of sampled completions on `prompts`, and KL to `reference` on the same samples.
pub fn evaluate(
    model: &CausalLm,
    tok: &Tokenizer,
    prompts: &[Prompt],
    reward: &mut dyn Reward,
    reference: Option<&CausalLm>,
    o: &SampleOptions,
) -> Result<EvalResult> {
    let samples = sample(model, tok, prompts, o)?;
    let pairs: Vec<(&Prompt, &str)> = samples
        .iter()
        .map(|s| (&prompts[s.prompt], s.text.as_str()))
        .collect();
    let rewards = reward.score_prompts(&pairs)?;
    let (reward, reward_se) = mean_se(&rewards);
    let kls = match reference {
        Some(r) => Some(kl_per_sample(
            model,
            r,
            &samples,
            tok.pad_id,
            o.temperature,
            o.batch,
        )?),
        None => None,
    };
    let lens: Vec<f64> = samples.iter().map(|s| s.ids.len() as f64).collect();
    let outcomes = samples
        .into_iter()
        .enumerate()
        .map(|(i, s)| SampleOutcome {
            reward: rewards[i],
            kl: kls.as_ref().map_or(0.0, |k| k[i]),
            len: s.ids.len() as u32,
            text: s.text,
        })
        .collect();
    Ok(EvalResult {
        n: rewards.len(),
        reward,
        reward_se,
        kl: kls.as_deref().map(mean_se),
        mean_len: mean_se(&lens).0,
        samples: outcomes,
    })
}

impl EvalResult {
    /// The evaluation CSV's row for `point` measured as this (no reference: KL 0).
    pub fn row(&self, point: Point) -> EvalRow {
        let (kl, kl_se) = self.kl.unwrap_or((0.0, f64::NAN));
        let finite = |x: f64| x.is_finite().then_some(x);
        EvalRow {
            point,
            kl,
            kl_se: finite(kl_se),
            reward: self.reward,
            reward_se: finite(self.reward_se),
        }
    }
}

/// The memory plan of [`evaluate_points`] (its batch: the largest up to `o.batch` that the plan
/// allows), from config.json, the checkpoint headers and the encoded prompts; nothing is loaded.
/// `points`: the evaluated checkpoints' folders; PEFT adapters among them are measured on their
/// base, the plan adding the largest one's factors and temporaries
/// ([`super::eval_lora::largest_adapter`]).
#[allow(clippy::too_many_arguments)]
pub fn eval_memory_plan(
    sft: &Path,
    tok: &Tokenizer,
    prompts_path: &Path,
    prompts: &[PromptLine],
    o: &SampleOptions,
    device: tch::Device,
    max_memory: Option<u64>,
    points: &[crate::pipeline::Point],
) -> Result<super::memory::Plan> {
    use super::memory::{eval_batch, EvalPlanInput, ModelShape, Target};
    let adapter = super::eval_lora::largest_adapter(points.iter().map(|p| p.path.as_path()))?;
    let ids = tok.encode_prompt_lines(prompts_path, prompts)?;
    let most = o.batch.min(prompts.len() * o.samples).max(1) as u64;
    eval_batch(
        &EvalPlanInput {
            model: ModelShape::from_path(sft)?,
            target: if device.is_cuda() {
                Target::Cuda
            } else {
                Target::Cpu
            },
            prompt_tokens: ids.iter().map(|p| p.len() as u64).max().unwrap_or(0),
            max_new_tokens: o.max_new_tokens as u64,
            batch: most,
            samples: o.samples as u64,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            tokenizer_bytes: std::fs::metadata(sft.join("tokenizer.json")).map_or(0, |m| m.len()),
            adapter,
        },
        most,
        max_memory,
    )
}

/// Evaluates every point against the SFT model `sft` (KL reference) on the `prompts` read from
/// `prompts_path` (encoded by the SFT model's tokenizer, conversations with the chat template
/// `chat`; a line that cannot be encoded is an error naming it), on `device`; the SFT model
/// itself comes first (kind `sft`, label `SFT`). One progress step per checkpoint. Returns the
/// rows of the evaluation CSV and every sample ([`crate::stats::samples`]: point `k` of the
/// table is row `k`). Sequences are sampled and scored `o.batch` at a time at most, fewer when
/// the memory plan ([`super::memory::eval_batch`]) says so, and within `max_memory` bytes when
/// given (checked before any weights are loaded).
#[allow(clippy::too_many_arguments)]
pub fn evaluate_points(
    points: &[Point],
    sft: &Path,
    prompts_path: &Path,
    prompts: &[PromptLine],
    chat: &TemplateChoice,
    reward: &mut dyn Reward,
    o: &SampleOptions,
    device: Device,
    max_memory: Option<u64>,
    reporter: &dyn crate::progress::Reporter,
) -> Result<(Vec<EvalRow>, SampleTable)> {
    let device = super::tch_device(device)?;
    if !device.is_cuda() {
        // Freed `[batch, vocab]` temporaries go back to the system (see the trainer's).
        super::trainer::release_freed_tensors();
    }
    let mut tok = Tokenizer::from_dir(sft)?;
    tok.set_chat_template(chat)?;
    let plan = eval_memory_plan(
        sft,
        &tok,
        prompts_path,
        prompts,
        o,
        device,
        max_memory,
        points,
    )?;
    let o = &SampleOptions {
        batch: plan.micro_batch as usize,
        ..o.clone()
    };
    let reference = CausalLm::load(sft, device)?;
    let mut loader = super::eval_lora::PointLoader::new(sft, device);
    let prompts: Vec<Prompt> = prompts.iter().map(|l| l.prompt.clone()).collect();
    let prompts = prompts.as_slice();
    let mut first = Point::new(PointKind::Sft, sft);
    first.label = "SFT".into();
    let all: Vec<Point> = std::iter::once(first)
        .chain(points.iter().cloned())
        .collect();
    reporter.start_steps("eval", all.len() as u64);
    let mut out = Vec::with_capacity(all.len());
    let mut table = SampleTable::new(all.len(), prompts.len(), o.samples);
    for p in all {
        crate::interrupt::check()?;
        let r = if p.kind == PointKind::Sft {
            evaluate(&reference, &tok, prompts, reward, Some(&reference), o)?
        } else {
            let m = loader.load(&p.path, &reference, reporter)?;
            if m.config.vocab_size != reference.config.vocab_size {
                return Err(Error::format(
                    &p.path,
                    format!(
                        "vocab_size {} differs from the SFT model's {}",
                        m.config.vocab_size, reference.config.vocab_size
                    ),
                ));
            }
            evaluate(&m, &tok, prompts, reward, Some(&reference), o)?
        };
        reporter.advance(1);
        reporter.status(&format!(
            "{} {}: reward {:.3}",
            p.kind,
            p.path.display(),
            r.reward
        ));
        let first = table.index(out.len(), 0, 0);
        if r.samples.len() != prompts.len() * o.samples {
            return Err(Error::Internal(format!(
                "{} samples evaluated, expected {} prompts × {}",
                r.samples.len(),
                prompts.len(),
                o.samples
            )));
        }
        for (k, s) in r.samples.iter().enumerate() {
            table.reward[first + k] = s.reward;
            table.kl[first + k] = s.kl;
            table.len[first + k] = s.len;
            table.completion[first + k] = s.text.clone();
        }
        out.push(r.row(p));
    }
    reporter.finish();
    Ok((out, table))
}
