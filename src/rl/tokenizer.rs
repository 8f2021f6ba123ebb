//! `tokenizer.json` through the `tokenizers` crate, with what the model folder says around it:
//! the special ids (BOS, EOS — one or more —, PAD) from `generation_config.json`, `config.json`
//! and the token strings of `tokenizer_config.json` / `special_tokens_map.json`; the special token
//! strings a chat template sees (`bos_token`, …); and the chat template(s) (see [`super::chat`]).
//!
//! Prompts are encoded as transformers does: a plain prompt with the tokenizer's special tokens
//! (its post-processor adds BOS), a conversation rendered by the chat template with the
//! generation prompt and then tokenized WITHOUT special tokens (templates write their own BOS, so
//! none is added twice).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::chat::{
    default_template, model_templates, ChatTemplate, TemplateChoice, TemplateSource,
};
use super::data::{Message, Prompt, PromptLine};
use crate::error::{Error, Result};

/// The named special tokens transformers passes to chat templates.
const SPECIAL_TOKEN_NAMES: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// The chat template in use, after the choice (see [`Tokenizer::set_chat_template`]).
#[derive(Debug)]
enum Chat {
    /// Templates switched off.
    Off,
    /// The model has no template (and none was given).
    Missing,
    Ready(Box<ChatTemplate>),
    /// The model's own template cannot be used (e.g. it does not compile): the error, reported
    /// when a conversation needs it, so plain prompts still work.
    Broken(String),
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub path: PathBuf,
    /// The model folder.
    pub dir: PathBuf,
    pub bos_id: Option<i64>,
    /// Generation stops at any of these: generation_config.json's EOS ids, then config.json's
    /// (an instruct model often ends its turns with a token only one of them lists).
    pub eos_ids: Vec<i64>,
    /// Left padding of prompts (falls back to the first EOS id when the files name none).
    pub pad_id: i64,
    /// `(name, text)` of the named special tokens that are set (`bos_token`, `eos_token`, …).
    pub special_tokens: Vec<(String, String)>,
    /// The chat templates the model folder holds.
    pub templates: Vec<TemplateSource>,
    chat: Chat,
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    // A FIFO or device is refused, not waited on.
    let text = crate::io::read_text(path, 1 << 30)?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::format(path, format!("not valid JSON: {e}")))
}

/// An id field of a config: absent/null (empty), an integer or a list of integers.
fn token_ids(v: &Value, field: &str) -> std::result::Result<Vec<i64>, String> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_i64()
                    .ok_or_else(|| format!("field '{field}' holds a non-integer"))
            })
            .collect(),
        Some(x) => x
            .as_i64()
            .map(|i| vec![i])
            .ok_or_else(|| format!("field '{field}' is not an integer or a list of integers")),
    }
}

/// A special token as tokenizer_config.json / special_tokens_map.json write it: `"<s>"` or
/// `{"content": "<s>", …}`.
fn token_text(v: Option<&Value>) -> Option<&str> {
    match v {
        Some(Value::String(s)) => Some(s),
        Some(Value::Object(o)) => o.get("content").and_then(Value::as_str),
        _ => None,
    }
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json`, the special ids and tokens and the chat templates from the
    /// files beside it. The chat template choice starts as `auto`.
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
        // transformers reads the token strings from tokenizer_config.json, then
        // special_tokens_map.json.
        let special_tokens: Vec<(String, String)> = SPECIAL_TOKEN_NAMES
            .iter()
            .filter_map(|name| {
                [&tok_cfg, &special]
                    .into_iter()
                    .flatten()
                    .find_map(|v| token_text(v.get(*name)))
                    .map(|t| (name.to_string(), t.to_string()))
            })
            .collect();
        let ids = |field: &str, all: bool| -> Result<Vec<i64>> {
            let mut out: Vec<i64> = Vec::new();
            for (file, v) in [("generation_config.json", &gen), ("config.json", &cfg)] {
                if let Some(v) = v {
                    let found =
                        token_ids(v, field).map_err(|e| Error::format(dir.join(file), e))?;
                    for id in found {
                        if !out.contains(&id) {
                            out.push(id);
                        }
                    }
                    if !all && !out.is_empty() {
                        return Ok(out);
                    }
                }
            }
            if out.is_empty() {
                let key = field.trim_end_matches("_id");
                if let Some(id) = special_tokens
                    .iter()
                    .find(|(k, _)| k == key)
                    .and_then(|(_, t)| inner.token_to_id(t))
                {
                    out.push(id as i64);
                }
            }
            Ok(out)
        };
        let bos_id = ids("bos_token_id", false)?.first().copied();
        let eos_ids = ids("eos_token_id", true)?;
        let pad_id = ids("pad_token_id", false)?
            .first()
            .copied()
            .or_else(|| eos_ids.first().copied())
            .ok_or_else(|| {
                Error::format(
                    dir,
                    "no pad_token_id and no eos_token_id in the model files",
                )
            })?;
        let templates = model_templates(dir, tok_cfg.as_ref())?;
        let mut tok = Tokenizer {
            inner,
            path,
            dir: dir.to_path_buf(),
            bos_id,
            eos_ids,
            pad_id,
            special_tokens,
            templates,
            chat: Chat::Missing,
        };
        tok.set_chat_template(&TemplateChoice::Auto)?;
        Ok(tok)
    }

    /// Chooses the template for conversations: `Auto` the model's own (a model without one, or
    /// whose template does not compile, fails only when a conversation is encoded), `None` none,
    /// `File` a Jinja file — or, when no such file exists, the model's template of that name.
    /// A given file that cannot be read or compiled is an error here.
    pub fn set_chat_template(&mut self, choice: &TemplateChoice) -> Result<()> {
        self.chat = match choice {
            TemplateChoice::None => Chat::Off,
            TemplateChoice::Auto if self.templates.is_empty() => Chat::Missing,
            TemplateChoice::Auto => {
                match default_template(&self.templates)
                    .map_err(|m| Error::format(self.dir.join("tokenizer_config.json"), m))
                    .and_then(|t| ChatTemplate::new(t.clone(), &self.special_tokens))
                {
                    Ok(t) => Chat::Ready(Box::new(t)),
                    Err(e) => Chat::Broken(e.to_string()),
                }
            }
            TemplateChoice::File(p) => {
                let named = p
                    .to_str()
                    .and_then(|n| self.templates.iter().find(|t| t.name == n));
                let source = match named {
                    Some(t) if !p.is_file() => t.clone(),
                    _ => TemplateSource::from_file(p, "file")?,
                };
                Chat::Ready(Box::new(ChatTemplate::new(source, &self.special_tokens)?))
            }
        };
        Ok(())
    }

    /// The chat template in use, or why there is none (an error naming the model folder).
    pub fn chat_template(&self) -> Result<&ChatTemplate> {
        match &self.chat {
            Chat::Ready(t) => Ok(t),
            Chat::Off => Err(Error::format(
                &self.dir,
                "a conversation (\"messages\") needs a chat template, and chat templates are off \
                 (chat template choice: none)",
            )),
            Chat::Missing => Err(Error::format(
                &self.dir,
                "a conversation (\"messages\") needs a chat template, and the model has none (no \
                 chat_template.jinja, no chat_template in tokenizer_config.json); give a template \
                 file",
            )),
            Chat::Broken(e) => Err(Error::format(
                &self.dir,
                format!("the model's chat template cannot be used: {e}"),
            )),
        }
    }

    /// The text the model sees for `prompt`: a plain prompt as is (its special tokens are added
    /// when encoding), a conversation rendered with the generation prompt.
    pub fn render_prompt(&self, prompt: &Prompt) -> Result<String> {
        match prompt {
            Prompt::Text(s) => Ok(s.clone()),
            Prompt::Messages(m) => self.chat_template()?.render(m, true),
        }
    }

    /// Token ids of a prompt: plain text with the tokenizer's special tokens (BOS), a
    /// conversation rendered with the generation prompt, then tokenized without special tokens.
    pub fn encode_prompt(&self, prompt: &Prompt) -> Result<Vec<i64>> {
        match prompt {
            Prompt::Text(s) => self.encode(s),
            Prompt::Messages(m) => self.encode_plain(&self.chat_template()?.render(m, true)?),
        }
    }

    /// Token ids of a prompt and its completion as a reward model reads them: a plain prompt
    /// with special tokens followed by the completion without; a conversation with the
    /// completion as a final assistant message, rendered without a generation prompt and
    /// tokenized without special tokens (what transformers' `apply_chat_template` gives).
    pub fn encode_with_completion(&self, prompt: &Prompt, completion: &str) -> Result<Vec<i64>> {
        match prompt {
            Prompt::Text(s) => {
                let mut ids = self.encode(s)?;
                ids.extend(self.encode_plain(completion)?);
                Ok(ids)
            }
            Prompt::Messages(m) => {
                let mut conv: Vec<Message> = m.clone();
                let mut reply = Message::new();
                reply.insert("role".into(), Value::String("assistant".into()));
                reply.insert("content".into(), Value::String(completion.into()));
                conv.push(reply);
                self.encode_plain(&self.chat_template()?.render(&conv, false)?)
            }
        }
    }

    /// [`encode_prompt`](Self::encode_prompt) for every line of the prompt file `path`; an
    /// error names the file and line.
    pub fn encode_prompt_lines(&self, path: &Path, lines: &[PromptLine]) -> Result<Vec<Vec<i64>>> {
        lines
            .iter()
            .map(|l| {
                self.encode_prompt(&l.prompt)
                    .map_err(|e| Error::format(path, format!("line {}: {e}", l.line)))
            })
            .collect()
    }

    /// Token ids of `text`, with the special tokens the tokenizer's post-processor adds (BOS).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::format(&self.path, format!("cannot encode {text:?}: {e}")))?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    /// Token ids of `text` without special tokens (e.g. a completion, or a rendered chat whose
    /// template wrote them); special-token strings in the text still map to their ids.
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
