//! `tokenizer.json` through the `tokenizers` crate, with the special ids the model needs: BOS,
//! EOS (one or more) and PAD, taken from `generation_config.json`, then `config.json`, then the
//! token strings of `tokenizer_config.json` / `special_tokens_map.json`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::config::token_ids;
use crate::error::{Error, Result};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub path: PathBuf,
    pub bos_id: Option<i64>,
    /// Generation stops at any of these.
    pub eos_ids: Vec<i64>,
    /// Left padding of prompts (falls back to the first EOS id when the files name none).
    pub pad_id: i64,
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::format(path, format!("not valid JSON: {e}")))
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json` and the special ids from the files beside it.
    pub fn from_dir(dir: &Path) -> Result<Tokenizer> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(Error::format(dir, "no tokenizer.json in the model folder"));
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::format(&path, format!("cannot load tokenizer: {e}")))?;
        let gen = read_json(&dir.join("generation_config.json"))?;
        let cfg = read_json(&dir.join("config.json"))?;
        let tok_cfg = read_json(&dir.join("tokenizer_config.json"))?;
        let special = read_json(&dir.join("special_tokens_map.json"))?;
        let ids = |field: &str| -> Result<Vec<i64>> {
            for (file, v) in [("generation_config.json", &gen), ("config.json", &cfg)] {
                if let Some(m) = v.as_ref().and_then(Value::as_object) {
                    let ids = token_ids(m, field).map_err(|e| Error::format(dir.join(file), e))?;
                    if !ids.is_empty() {
                        return Ok(ids);
                    }
                }
            }
            // "<s>" or {"content": "<s>", …} in tokenizer_config / special_tokens_map.
            let key = field.trim_end_matches("_id");
            for v in [&tok_cfg, &special].into_iter().flatten() {
                let s = match v.get(key) {
                    Some(Value::String(s)) => Some(s.as_str()),
                    Some(Value::Object(o)) => o.get("content").and_then(Value::as_str),
                    _ => None,
                };
                if let Some(id) = s.and_then(|s| inner.token_to_id(s)) {
                    return Ok(vec![id as i64]);
                }
            }
            Ok(Vec::new())
        };
        let bos_id = ids("bos_token_id")?.first().copied();
        let eos_ids = ids("eos_token_id")?;
        let pad_id = ids("pad_token_id")?
            .first()
            .copied()
            .or_else(|| eos_ids.first().copied())
            .ok_or_else(|| {
                Error::format(
                    dir,
                    "no pad_token_id and no eos_token_id in the model files",
                )
            })?;
        Ok(Tokenizer {
            inner,
            path,
            bos_id,
            eos_ids,
            pad_id,
        })
    }

    /// Token ids of `text`, with the special tokens the tokenizer's post-processor adds (BOS).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::format(&self.path, format!("cannot encode {text:?}: {e}")))?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    /// Token ids of `text` without special tokens (e.g. a completion).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<i64>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::format(&self.path, format!("cannot encode {text:?}: {e}")))?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.inner
            .decode(&ids, true)
            .map_err(|e| Error::format(&self.path, format!("cannot decode: {e}")))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
