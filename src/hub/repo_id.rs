//! `org/name[@revision]`: parsing and validation, with the hub's own rules for names so a typo
//! fails here with a usage error instead of as a confusing 404.

use crate::error::{Error, HubError, Result};
use std::fmt;

/// A model repository on the hub and an optional revision (branch, tag or commit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubId {
    /// `org/name`.
    pub repo: String,
    /// `None` means `main`.
    pub revision: Option<String>,
}

impl HubId {
    /// Parse `org/name` or `org/name@revision`. `None` when `spec` is not of that shape.
    pub fn parse(spec: &str) -> Option<HubId> {
        let (repo, revision) = match spec.split_once('@') {
            Some((repo, rev)) => (repo, Some(rev)),
            None => (spec, None),
        };
        if !valid_repo_id(repo) {
            return None;
        }
        if let Some(rev) = revision {
            if !valid_revision(rev) {
                return None;
            }
        }
        Some(HubId {
            repo: repo.to_string(),
            revision: revision.map(str::to_string),
        })
    }

    /// The revision to resolve: the given one or `main`.
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }
}

impl fmt::Display for HubId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.revision {
            Some(rev) => write!(f, "{}@{rev}", self.repo),
            None => f.write_str(&self.repo),
        }
    }
}

/// A repo id for pushing: exactly `org/name`, no revision.
pub(crate) fn check_repo_id(repo_id: &str) -> Result<()> {
    if valid_repo_id(repo_id) {
        Ok(())
    } else {
        Err(Error::from(HubError::invalid_id(format!(
            "'{repo_id}' is not a hub repo id: expected org/name (letters, digits, '-', '_', '.'; \
             at most 96 characters each)"
        ))))
    }
}

/// `org/name`, each part 1..=96 of `[A-Za-z0-9_.-]`, not starting or ending with `-` or `.`,
/// without `--` or `..`, and the name not ending in `.git` (the hub's rules).
fn valid_repo_id(id: &str) -> bool {
    let Some((org, name)) = id.split_once('/') else {
        return false;
    };
    valid_part(org) && valid_part(name) && !name.ends_with(".git")
}

fn valid_part(p: &str) -> bool {
    (1..=96).contains(&p.len())
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !p.starts_with(['-', '.'])
        && !p.ends_with(['-', '.'])
        && !p.contains("--")
        && !p.contains("..")
}

/// Branch, tag or commit: git ref rules, loosely (no spaces, control characters or `..`).
fn valid_revision(rev: &str) -> bool {
    !rev.is_empty()
        && rev.len() <= 256
        && !rev.contains("..")
        && !rev.starts_with('/')
        && !rev.ends_with('/')
        && rev
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && !"~^:?*[\\@".contains(c))
}

/// A full commit hash (a revision that needs no ref lookup).
pub(crate) fn is_commit_hash(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ids_and_revisions() {
        let id = HubId::parse("google/gemma-7b").unwrap();
        assert_eq!(id.repo, "google/gemma-7b");
        assert_eq!(id.revision(), "main");
        let id = HubId::parse("org/name@refs/pr/3").unwrap();
        assert_eq!(id.revision(), "refs/pr/3");
        assert_eq!(id.to_string(), "org/name@refs/pr/3");
        let id = HubId::parse("a.b/c_d@0123456789abcdef0123456789abcdef01234567").unwrap();
        assert!(is_commit_hash(id.revision()));
    }

    #[test]
    fn rejects_what_the_hub_rejects() {
        for bad in [
            "gpt2",
            "./out",
            "/abs/path",
            "a/b/c",
            "org/",
            "/name",
            "org/na me",
            "org/-name",
            "org/name.",
            "org/na--me",
            "org/na..me",
            "org/name.git",
            "org/name@",
            "org/name@a b",
            "org/name@x..y",
            "org/name@a@b",
            "ö/name",
        ] {
            assert_eq!(HubId::parse(bad), None, "{bad}");
        }
        assert!(check_repo_id("org/name").is_ok());
        assert!(matches!(
            check_repo_id("org/name@main"),
            Err(Error::Hub(h)) if h.kind == crate::error::HubErrorKind::InvalidId
        ));
    }
}
