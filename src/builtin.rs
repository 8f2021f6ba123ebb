//! The built-in tasks' files, embedded in the binary so an installed warp needs no source tree.
//!
//! A path or checkpoint spec `builtin:TASK/FILE` (e.g. `builtin:arith/model`,
//! `builtin:arith/train.jsonl`) names one of them. On first use a task is written once into
//! the cache, `$XDG_CACHE_HOME/warp/builtin-TASK-HASH/` (else `~/.cache/warp/…`), HASH being
//! the SHA-256 of its contents: a new warp with other files uses a new folder, and a folder
//! that exists is complete (it is written under a temporary name and renamed into place).
//! The tasks and their files are [`crate::tasks`]'s registry.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::tasks::{task, Task, TASKS};

/// The prefix of a spec that names a built-in file.
pub const PREFIX: &str = "builtin:";

impl Task {
    /// SHA-256 of the task's names and contents, hex (computed once per process).
    pub fn hash(&self) -> &'static str {
        static HASHES: OnceLock<Vec<String>> = OnceLock::new();
        let all = HASHES.get_or_init(|| {
            TASKS
                .iter()
                .map(|t| {
                    let mut h = Sha256::new();
                    for (name, data) in t.files {
                        h.update((name.len() as u64).to_le_bytes());
                        h.update(name.as_bytes());
                        h.update((data.len() as u64).to_le_bytes());
                        h.update(data);
                    }
                    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
                })
                .collect()
        });
        let i = TASKS
            .iter()
            .position(|t| std::ptr::eq(*t, self))
            .unwrap_or(0);
        &all[i]
    }

    /// Whether `rel` is one of the task's files or folders (`model`).
    fn has(&self, rel: &str) -> bool {
        rel.is_empty()
            || self
                .files
                .iter()
                .any(|(f, _)| *f == rel || f.strip_prefix(rel).is_some_and(|r| r.starts_with('/')))
    }

    /// The task's folder in the cache, written there first if needed.
    pub fn dir(&self) -> Result<PathBuf> {
        let dir = cache_root().join(format!("builtin-{}-{}", self.name, &self.hash()[..16]));
        if self.is_complete(&dir) {
            return Ok(dir);
        }
        if dir.exists() {
            // Damaged by hand (files removed or changed in size): written again.
            std::fs::remove_dir_all(&dir).at(&dir)?;
        }
        self.materialise(&dir)?;
        Ok(dir)
    }

    fn is_complete(&self, dir: &Path) -> bool {
        self.files.iter().all(|(f, data)| {
            std::fs::metadata(dir.join(f))
                .is_ok_and(|m| m.is_file() && m.len() == data.len() as u64)
        })
    }

    /// Writes the files under a temporary name next to `dir` and renames it into place; if
    /// another process got there first, its (identical) folder is kept.
    fn materialise(&self, dir: &Path) -> Result<()> {
        let parent = dir.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).at(parent)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
        let tmp = parent.join(format!(
            ".{}.tmp-{}-{nanos}",
            name.unwrap_or_default(),
            std::process::id()
        ));
        let written = (|| -> Result<()> {
            for (f, data) in self.files {
                let path = tmp.join(f);
                if let Some(p) = path.parent() {
                    std::fs::create_dir_all(p).at(p)?;
                }
                std::fs::write(&path, data).at(&path)?;
            }
            Ok(())
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        match std::fs::rename(&tmp, dir) {
            Ok(()) => Ok(()),
            Err(_) if self.is_complete(dir) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(Error::io(dir, e))
            }
        }
    }
}

/// `$XDG_CACHE_HOME/warp`, else `$HOME/.cache/warp`, else a folder in the temporary directory.
fn cache_root() -> PathBuf {
    let non_empty = |v: &str| {
        std::env::var_os(v)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    };
    if let Some(x) = non_empty("XDG_CACHE_HOME") {
        return x.join("warp");
    }
    if let Some(h) = non_empty("HOME") {
        return h.join(".cache").join("warp");
    }
    std::env::temp_dir().join("warp-cache")
}

fn known() -> String {
    TASKS
        .iter()
        .map(|t| {
            let mut tops: Vec<&str> = t
                .files
                .iter()
                .map(|(f, _)| f.split('/').next().unwrap_or(f))
                .collect();
            tops.dedup();
            format!("{}: {}", t.name, tops.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The local path a `builtin:TASK/FILE` spec names (the task written to the cache first), or
/// `None` when `spec` is not a built-in spec.
pub fn lookup(spec: &str) -> Result<Option<PathBuf>> {
    let Some(rest) = spec.strip_prefix(PREFIX) else {
        return Ok(None);
    };
    let (name, rel) = rest.split_once('/').unwrap_or((rest, ""));
    let rel = rel.trim_end_matches('/');
    match task(name) {
        Some(t) if t.has(rel) => {
            let dir = t.dir()?;
            Ok(Some(if rel.is_empty() { dir } else { dir.join(rel) }))
        }
        _ => Err(Error::format(
            spec,
            format!(
                "no such built-in file (built-in tasks and their files: {})",
                known()
            ),
        )),
    }
}

/// A checkpoint spec with `builtin:…` replaced by its local path; other specs unchanged.
pub fn resolve_spec(spec: &str) -> Result<String> {
    Ok(match lookup(spec)? {
        Some(p) => p.display().to_string(),
        None => spec.to_string(),
    })
}

/// A path with `builtin:…` replaced by its local path; other paths unchanged.
pub fn resolve_path(path: &Path) -> Result<PathBuf> {
    match path.to_str() {
        Some(s) => Ok(lookup(s)?.unwrap_or_else(|| path.to_path_buf())),
        None => Ok(path.to_path_buf()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_resolve_into_one_complete_cache_folder() {
        let tmp = tempfile::tempdir().unwrap();
        // The cache location comes from the environment; this test owns it for the process.
        std::env::set_var("XDG_CACHE_HOME", tmp.path());
        let model = lookup("builtin:arith/model").unwrap().unwrap();
        assert!(model.starts_with(tmp.path().join("warp")));
        let arith = task("arith").unwrap();
        for (f, data) in arith.files {
            let on_disk = std::fs::read(model.parent().unwrap().join(f)).unwrap();
            assert!(on_disk == *data, "{f} differs");
        }
        // Same folder again; no temporaries left next to it.
        let again = lookup("builtin:arith/train.jsonl").unwrap().unwrap();
        assert_eq!(again, model.parent().unwrap().join("train.jsonl"));
        let entries: Vec<_> = std::fs::read_dir(tmp.path().join("warp"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries.len(), 1, "{entries:?}");
        // A damaged folder is written again.
        std::fs::remove_file(model.join("tokenizer.json")).unwrap();
        lookup("builtin:arith/model").unwrap();
        assert!(model.join("tokenizer.json").is_file());

        assert_eq!(lookup("org/name").unwrap(), None);
        assert_eq!(resolve_spec("org/name").unwrap(), "org/name");
        for bad in [
            "builtin:nope/model",
            "builtin:arith/mod",
            "builtin:arith/model/x",
        ] {
            let e = lookup(bad).unwrap_err().to_string();
            assert!(
                e.contains(bad) && e.contains("arith: model, train.jsonl"),
                "{e}"
            );
        }
    }
}
