//! Prompt sets: JSONL files with one `{"prompt": "…"}` object per line (other fields, such as
//! the built-in task's `"answer"`, are kept but not needed).

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct PromptRecord {
    pub prompt: String,
    /// The reference answer, when the file has one (only used for reports).
    pub answer: Option<String>,
}

/// Reads a prompt file. Errors name the file and line: unreadable, not JSON, no string
/// `"prompt"`, an empty prompt, or no prompts at all.
pub fn read_prompts(path: &Path) -> Result<Vec<PromptRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let at = |msg: String| Error::format(path, format!("line {}: {msg}", i + 1));
        let v: Value = serde_json::from_str(line).map_err(|e| at(format!("not JSON: {e}")))?;
        let prompt = match v.get("prompt") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::String(_)) => return Err(at("the prompt is empty".into())),
            Some(_) => return Err(at("\"prompt\" is not a string".into())),
            None => return Err(at("no \"prompt\" field".into())),
        };
        let answer = match v.get("answer") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        out.push(PromptRecord { prompt, answer });
    }
    if out.is_empty() {
        return Err(Error::format(path, "no prompts in the file"));
    }
    Ok(out)
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
