//! Where the hub token comes from, in the python client's order. The token itself is never
//! printed: option structs redact it in `Debug`, and error messages never include headers.

use std::path::PathBuf;

/// `$HF_TOKEN`, else the legacy `$HUGGING_FACE_HUB_TOKEN`, else the first line of the file at
/// `$HF_TOKEN_PATH` (default `$HF_HOME/token`, i.e. `~/.cache/huggingface/token`, where
/// `hf auth login` stores it). `None` when none is set.
pub fn token_from_env() -> Option<String> {
    for var in ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"] {
        if let Some(t) = std::env::var(var).ok().and_then(|t| clean(&t)) {
            return Some(t);
        }
    }
    let path = std::env::var("HF_TOKEN_PATH")
        .ok()
        .filter(|p| !p.trim().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| super::hf_home().join("token"));
    token_from_file(&path)
}

/// The token stored in `path`, if the file exists and is not empty.
pub(crate) fn token_from_file(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    clean(text.lines().next().unwrap_or(""))
}

fn clean(raw: &str) -> Option<String> {
    let t = raw.trim();
    (!t.is_empty()).then(|| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_first_line_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "  hf_abc \nsecond\n").unwrap();
        assert_eq!(token_from_file(&p).as_deref(), Some("hf_abc"));
        std::fs::write(&p, "\n").unwrap();
        assert_eq!(token_from_file(&p), None);
        assert_eq!(token_from_file(&dir.path().join("missing")), None);
    }
}
