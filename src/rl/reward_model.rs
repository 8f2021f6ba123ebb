//! `model:PATH` reward: a reward-model checkpoint as `transformers` saves a
//! `…ForSequenceClassification` of any supported family (Llama, Mistral, Qwen2, Qwen3, Gemma,
//! Gemma 2, Gemma 3 text, Phi-3) with one label: the decoder's weights `model.*` (no `lm_head`),
//! a bias-free head `score.weight` `[1, hidden]`, config.json (`architectures`, `id2label` with
//! one entry, `pad_token_id`) and the tokenizer files beside them.
//!
//! The reward of a (prompt, completion) pair is `transformers`' output for it: the pair is
//! tokenized with the reward model's own tokenizer (the prompt with its special tokens, i.e. BOS,
//! then the completion without; a conversation prompt with the completion as a final assistant
//! message, rendered by the reward model's own chat template and tokenized without special
//! tokens, as transformers' `apply_chat_template` gives), and `score` is applied to the final hidden state of the
//! rightmost token whose id is not config.json's `pad_token_id` (transformers' pooling rule: the
//! last token, unless the text itself ends in pad-id tokens; the last token when the config has
//! no `pad_token_id`). Runs without gradients, in f32, in batches: sequences sorted by length,
//! left-padded, position ids `cumsum(mask) - 1` (as in `super::generate`), so each one is scored
//! as if alone; rewards come back in input order.

use std::path::Path;

use serde_json::Value;
use tch::{Device, Kind, TchError, Tensor};

use super::config::ModelConfig;
use super::model::{read_tensor, CausalLm};
use super::reward::Reward;
use super::tokenizer::Tokenizer;
use crate::error::{Error, IoContext, Result};
use crate::io::Checkpoint;

/// A loaded reward model (see the module docs).
pub struct RewardModel {
    /// `model:` + the path as given.
    name: String,
    model: CausalLm,
    tokenizer: Tokenizer,
    /// The score head's single row, `[hidden]`, f32.
    score: Tensor,
    /// config.json's `pad_token_id`, which the pooling skips at the end of a sequence.
    pad_token_id: Option<i64>,
    batch_size: usize,
}

/// The number of labels config.json declares (`id2label`, else `num_labels`), if any.
fn declared_labels(config_path: &Path) -> Result<Option<usize>> {
    let text = std::fs::read_to_string(config_path).at(config_path)?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| Error::format(config_path, format!("not valid JSON: {e}")))?;
    if let Some(m) = v.get("id2label").filter(|x| !x.is_null()) {
        let m = m
            .as_object()
            .ok_or_else(|| Error::format(config_path, "field 'id2label' is not an object"))?;
        return Ok(Some(m.len()));
    }
    match v.get("num_labels").filter(|x| !x.is_null()) {
        None => Ok(None),
        Some(n) => n.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
            Error::format(
                config_path,
                "field 'num_labels' is not a non-negative integer",
            )
        }),
    }
}

impl RewardModel {
    /// Loads the checkpoint folder (or `.safetensors` file beside its config and tokenizer) at
    /// `path` onto `device`, to score `batch_size` sequences per forward pass. Errors name the
    /// file: no `score.weight` (e.g. a causal LM), more than one label, a wrong shape.
    pub fn load(path: impl AsRef<Path>, device: Device, batch_size: usize) -> Result<RewardModel> {
        Self::load_with_kind(path, device, Kind::Float, batch_size)
    }

    /// As [`load`](Self::load), with the decoder in `kind` (e.g. BFloat16 on a GPU); the score
    /// head is applied in f32 to the final hidden state cast to f32.
    pub fn load_with_kind(
        path: impl AsRef<Path>,
        device: Device,
        kind: Kind,
        batch_size: usize,
    ) -> Result<RewardModel> {
        let path = path.as_ref();
        let name = format!("model:{}", path.display());
        if batch_size == 0 {
            return Err(Error::setting(
                "reward_batch",
                format!("{name}: the batch size must be at least 1"),
            ));
        }
        let ck = Checkpoint::open(path)?;
        let config = ModelConfig::from_dir(&ck.dir)?;
        let config_path = ck.dir.join("config.json");
        if let Some(n) = declared_labels(&config_path)?.filter(|&n| n != 1) {
            return Err(Error::format(
                &config_path,
                format!(
                    "the model has {n} labels (id2label / num_labels): a reward model has \
                     exactly one (num_labels = 1)"
                ),
            ));
        }
        let info = ck.get("score.weight").ok_or_else(|| {
            Error::format(
                &ck.path,
                "tensor 'score.weight' is missing: not a reward model (a sequence-classification \
                 checkpoint, e.g. LlamaForSequenceClassification with num_labels = 1, has a head \
                 'score.weight' [1, hidden])",
            )
        })?;
        let shard = ck.shards[info.shard].path.clone();
        if ck.get("score.bias").is_some() {
            return Err(Error::tensor(
                &shard,
                "score.bias",
                "unexpected: the score head of a sequence-classification model has no bias",
            ));
        }
        let h = config.hidden_size as i64;
        let score = read_tensor(&ck, "score.weight", Kind::Float, device)?;
        if score.size() != [1, h] {
            return Err(Error::tensor(
                &shard,
                "score.weight",
                format!(
                    "shape {:?}, expected [1, {h}] (a reward model has one label, \
                     num_labels = 1, of hidden_size {h})",
                    score.size()
                ),
            ));
        }
        let pad_token_id = config.pad_token_id;
        let mut model = CausalLm::backbone_from_checkpoint(&ck, config, device, kind)?;
        model.vs.freeze();
        let tokenizer = Tokenizer::from_dir(&ck.dir)?;
        let vocab = model.config.vocab_size;
        if tokenizer.vocab_size() > vocab {
            return Err(Error::format(
                &tokenizer.path,
                format!(
                    "{} tokens, more than the model's vocab_size {vocab} (config.json)",
                    tokenizer.vocab_size()
                ),
            ));
        }
        let score = score
            .f_view([h])
            .map_err(|e| Error::compute(format!("{name}: loading"), e))?;
        Ok(RewardModel {
            name,
            model,
            tokenizer,
            score,
            pad_token_id,
            batch_size,
        })
    }

    /// The token ids the pair is scored on: the prompt with the tokenizer's special tokens
    /// (BOS), then the completion without.
    pub fn encode_pair(&self, prompt: &str, completion: &str) -> Result<Vec<i64>> {
        let mut ids = self.tokenizer.encode(prompt)?;
        ids.extend(self.tokenizer.encode_plain(completion)?);
        Ok(ids)
    }

    /// Where `ids` is pooled: the rightmost token that is not `pad_token_id` (0 when all are).
    fn pooled_index(&self, ids: &[i64]) -> usize {
        match self.pad_token_id {
            Some(pad) => ids.iter().rposition(|&t| t != pad).unwrap_or(0),
            None => ids.len() - 1,
        }
    }

    /// One reward per pair, in order.
    pub fn rewards(&self, pairs: &[(String, String)]) -> Result<Vec<f64>> {
        let seqs = pairs
            .iter()
            .map(|(prompt, completion)| self.encode_pair(prompt, completion))
            .collect::<Result<Vec<_>>>()?;
        self.score_ids(&seqs)
    }

    /// One reward per (prompt, completion) pair, in order; conversations are rendered with the
    /// reward model's chat template ([`Tokenizer::encode_with_completion`]).
    pub fn rewards_prompts(&self, pairs: &[(&super::data::Prompt, &str)]) -> Result<Vec<f64>> {
        let seqs = pairs
            .iter()
            .map(|(prompt, completion)| self.tokenizer.encode_with_completion(prompt, completion))
            .collect::<Result<Vec<_>>>()?;
        self.score_ids(&seqs)
    }

    /// The score of each token sequence (as [`encode_pair`](Self::encode_pair) makes them), in
    /// order: sorted by length and scored `batch_size` at a time, left-padded.
    pub fn score_ids(&self, seqs: &[Vec<i64>]) -> Result<Vec<f64>> {
        let max_pos = self.model.config.max_position_embeddings;
        let vocab = self.model.config.vocab_size as i64;
        for (i, ids) in seqs.iter().enumerate() {
            if ids.is_empty() || ids.len() > max_pos {
                return Err(Error::Mismatch(format!(
                    "{}: pair {i} has {} tokens, not between 1 and the reward model's \
                     max_position_embeddings {max_pos}",
                    self.name,
                    ids.len()
                )));
            }
            if let Some(t) = ids.iter().find(|&&t| t < 0 || t >= vocab) {
                return Err(Error::Mismatch(format!(
                    "{}: pair {i}: token id {t} outside the vocabulary (0..{vocab})",
                    self.name
                )));
            }
        }
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| seqs[i].len());
        let mut rewards = vec![0.0; seqs.len()];
        for chunk in order.chunks(self.batch_size) {
            let batch: Vec<&[i64]> = chunk.iter().map(|&i| seqs[i].as_slice()).collect();
            let scores = tch::no_grad(|| self.score_batch(&batch))?;
            for (&i, r) in chunk.iter().zip(scores) {
                if !r.is_finite() {
                    return Err(Error::reward(
                        &self.name,
                        format!("the reward model scored pair {i} {r}, not a finite number"),
                    ));
                }
                rewards[i] = r;
            }
        }
        Ok(rewards)
    }

    /// Scores of one batch of token sequences (left-padded into one forward pass).
    fn score_batch(&self, seqs: &[&[i64]]) -> Result<Vec<f64>> {
        let (b, w) = (seqs.len(), seqs.iter().map(|s| s.len()).max().unwrap_or(0));
        let mut ids = vec![self.tokenizer.pad_id; b * w];
        let mut mask = vec![0i64; b * w];
        let mut pooled = Vec::with_capacity(b);
        for (r, s) in seqs.iter().enumerate() {
            let off = r * w + w - s.len();
            ids[off..off + s.len()].copy_from_slice(s);
            mask[off..off + s.len()].fill(1);
            pooled.push((w - s.len() + self.pooled_index(s)) as i64);
        }
        let dev = self.model.device;
        let shape = [b as i64, w as i64];
        let inputs = || -> std::result::Result<_, TchError> {
            let ids = Tensor::f_from_slice(&ids)?
                .f_view(shape)?
                .f_to_device(dev)?;
            let mask = Tensor::f_from_slice(&mask)?
                .f_view(shape)?
                .f_to_device(dev)?;
            let pos = mask
                .f_cumsum(1, Kind::Int64)?
                .f_sub_scalar(1)?
                .f_clamp_min(0)?;
            Ok((ids, mask, pos))
        };
        let backend = |e: TchError| Error::compute(format!("{}: scoring", self.name), e);
        let (ids, mask, pos) = inputs().map_err(backend)?;
        let hidden = self.model.hidden_states(&ids, &mask, &pos)?;
        let head = || -> std::result::Result<Vec<f64>, TchError> {
            let rows = Tensor::f_arange(b as i64, (Kind::Int64, dev))?;
            let cols = Tensor::f_from_slice(&pooled)?.f_to_device(dev)?;
            let last = hidden
                .f_index(&[Some(rows), Some(cols)])?
                .f_to_kind(Kind::Float)?;
            let scores = last
                .f_matmul(&self.score)?
                .f_to_kind(Kind::Double)?
                .f_to_device(Device::Cpu)?;
            Vec::<f64>::try_from(&scores)
        };
        head().map_err(backend)
    }
}

impl Reward for RewardModel {
    fn name(&self) -> &str {
        &self.name
    }

    fn score(&mut self, pairs: &[(String, String)]) -> Result<Vec<f64>> {
        self.rewards(pairs)
    }

    fn score_prompts(&mut self, pairs: &[(&super::data::Prompt, &str)]) -> Result<Vec<f64>> {
        self.rewards_prompts(pairs)
    }
}
