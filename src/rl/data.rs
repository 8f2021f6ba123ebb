//! Prompt sets: JSONL files with one prompt per line, either plain text `{"prompt": "…"}` or a
//! conversation `{"messages": [{"role": …, "content": …}, …]}` that the model's chat template
//! renders (see [`super::chat`]). Other fields, such as the built-in task's `"answer"`, are kept
//! but not needed.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// One message of a conversation: a JSON object with at least a string `"role"`; every other
/// field (`content`, `tool_calls`, `reasoning_content`, …) is passed to the chat template as is.
pub type Message = Map<String, Value>;

/// What a prompt line holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// `{"prompt": "…"}`: tokenized with the tokenizer's special tokens (e.g. BOS), no template.
    Text(String),
    /// `{"messages": […]}`: rendered by a chat template with the generation prompt added.
    Messages(Vec<Message>),
}

impl Prompt {
    /// A one-turn conversation: `text` as the user's message.
    pub fn user(text: impl Into<String>) -> Prompt {
        let mut m = Message::new();
        m.insert("role".into(), Value::String("user".into()));
        m.insert("content".into(), Value::String(text.into()));
        Prompt::Messages(vec![m])
    }

    /// The field a JSONL record holds it under (`"prompt"` or `"messages"`) and its value.
    pub fn json_field(&self) -> (&'static str, Value) {
        match self {
            Prompt::Text(s) => ("prompt", Value::String(s.clone())),
            Prompt::Messages(m) => (
                "messages",
                Value::Array(m.iter().cloned().map(Value::Object).collect()),
            ),
        }
    }

    /// The plain text; for a conversation the text of its last user message (string content, or
    /// the `text` of its content blocks joined), empty if it has none. What rewards that read
    /// plain text (`verify:`) see of a conversation.
    pub fn user_text(&self) -> String {
        match self {
            Prompt::Text(s) => s.clone(),
            Prompt::Messages(m) => m
                .iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
                .map(|m| match m.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(blocks)) => blocks
                        .iter()
                        .filter_map(|b| b.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join(""),
                    _ => String::new(),
                })
                .unwrap_or_default(),
        }
    }

    /// The plain text, or `None` for a conversation.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Prompt::Text(s) => Some(s),
            Prompt::Messages(_) => None,
        }
    }
}

/// One line of a prompt file.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptLine {
    pub prompt: Prompt,
    /// The reference answer, when the line has one (only used for reports).
    pub answer: Option<String>,
    /// 1-based line number in the file, for error messages.
    pub line: usize,
}

/// A plain-text prompt line (the built-in tasks' format).
pub use crate::tasks::PromptRecord;

/// Checks a `"messages"` value: a non-empty array of objects, each with a non-empty string
/// `"role"` and a `"content"` that is a string or a list of content blocks (it may be missing or
/// null only on a message with `"tool_calls"`). Null-valued fields are dropped, as transformers
/// does before rendering (templates handle a missing key, not a null one). Errors say which
/// message is wrong, counting from 0.
pub fn parse_messages(v: &Value) -> std::result::Result<Vec<Message>, String> {
    let arr = match v {
        Value::Array(a) if a.is_empty() => return Err("\"messages\" is empty".into()),
        Value::Array(a) => a,
        _ => return Err("\"messages\" is not a list".into()),
    };
    let mut out = Vec::with_capacity(arr.len());
    for (i, m) in arr.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(format!("message {i} is not an object"));
        };
        let m: Message = m
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        match m.get("role") {
            Some(Value::String(r)) if !r.is_empty() => {}
            Some(Value::String(_)) => return Err(format!("message {i}: \"role\" is empty")),
            Some(_) => return Err(format!("message {i}: \"role\" is not a string")),
            None => return Err(format!("message {i}: no \"role\"")),
        }
        match m.get("content") {
            Some(Value::String(_)) | Some(Value::Array(_)) => {}
            Some(_) => {
                return Err(format!(
                    "message {i}: \"content\" is neither a string nor a list of content blocks"
                ))
            }
            None if m.contains_key("tool_calls") => {}
            None => return Err(format!("message {i}: no \"content\"")),
        }
        out.push(m);
    }
    Ok(out)
}

/// Reads a prompt file of plain and/or conversation lines. Errors name the file and line:
/// unreadable, not JSON, neither or both of `"prompt"` and `"messages"`, an empty or non-string
/// prompt, malformed messages, or no prompts at all. Blank lines are skipped.
pub fn read_prompt_lines(path: &Path) -> Result<Vec<PromptLine>> {
    // A FIFO or device is refused, not waited on.
    let text = crate::io::read_text(path, 1 << 34)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let at = |msg: String| Error::format(path, format!("line {}: {msg}", i + 1));
        let max = crate::limits::MAX_PROMPT_LINE_BYTES;
        if line.len() > max {
            return Err(at(format!(
                "{} bytes, more than the limit of {max} bytes for one prompt line",
                line.len()
            )));
        }
        let v: Value = serde_json::from_str(line).map_err(|e| at(format!("not JSON: {e}")))?;
        let prompt = match (v.get("prompt"), v.get("messages")) {
            (Some(_), Some(_)) => {
                return Err(at(
                    "both \"prompt\" and \"messages\": a line holds one or the other".into(),
                ))
            }
            (Some(Value::String(s)), None) if !s.is_empty() => Prompt::Text(s.clone()),
            (Some(Value::String(_)), None) => return Err(at("the prompt is empty".into())),
            (Some(_), None) => return Err(at("\"prompt\" is not a string".into())),
            (None, Some(m)) => Prompt::Messages(parse_messages(m).map_err(at)?),
            (None, None) => return Err(at("no \"prompt\" or \"messages\" field".into())),
        };
        let answer = match v.get("answer") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        out.push(PromptLine {
            prompt,
            answer,
            line: i + 1,
        });
    }
    if out.is_empty() {
        return Err(Error::format(path, "no prompts in the file"));
    }
    Ok(out)
}

/// Reads a prompt file of plain `{"prompt": …}` lines only (a `"messages"` line is an error
/// naming its line); otherwise as [`read_prompt_lines`].
pub fn read_prompts(path: &Path) -> Result<Vec<PromptRecord>> {
    read_prompt_lines(path)?
        .into_iter()
        .map(|l| match l.prompt {
            Prompt::Text(prompt) => Ok(PromptRecord {
                prompt,
                answer: l.answer,
            }),
            Prompt::Messages(_) => Err(Error::format(
                path,
                format!(
                    "line {}: a \"messages\" line, but only plain {{\"prompt\": …}} lines are \
                     read here",
                    l.line
                ),
            )),
        })
        .collect()
}

/// Writes a prompt file atomically (temporary file, then rename).
pub fn write_prompts(path: &Path, records: &[PromptRecord]) -> Result<()> {
    let mut text = String::new();
    for r in records {
        let mut m = serde_json::Map::new();
        m.insert("prompt".into(), Value::String(r.prompt.clone()));
        if let Some(a) = &r.answer {
            m.insert("answer".into(), Value::String(a.clone()));
        }
        text.push_str(&Value::Object(m).to_string());
        text.push('\n');
    }
    crate::io::write_file_atomic(path, text.as_bytes())
}
