//! One error type for the whole crate. Every variant carries enough context (file, tensor) for a
//! user to act on the one-line message the binaries print.

use std::path::{Path, PathBuf};

/// The hub's typed errors live here, below every module that raises them ([`crate::hub`]
/// re-exports them).
mod hub;
pub use hub::{HubError, HubErrorKind};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An OS-level failure on a named path.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file that is not a valid checkpoint (header, index, layout).
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// A problem with one tensor of one file.
    #[error("{}: tensor '{tensor}': {msg}", path.display())]
    Tensor {
        path: PathBuf,
        tensor: String,
        msg: String,
    },
    /// Inputs that cannot be combined (names, shapes, dtypes differ).
    #[error("{0}")]
    Mismatch(String),
    /// Bad command-line arguments or options (the CLI layer only: the library says what went
    /// wrong with a typed variant, e.g. [`Error::Setting`]; exit code 2).
    #[error("{0}")]
    Usage(String),
    /// A setting with a value that cannot work (a field of a config: `RlConfig`, a pipeline
    /// config, …). Named by its field, not by a flag: the CLI layer, which knows the flags,
    /// names the flag when it reports one (exit code 2).
    #[error("{field}: {msg}")]
    Setting { field: String, msg: String },
    /// Something this build of warp was compiled without (a cargo feature).
    #[error("{what} needs the `{feature}` feature, which this build of warp lacks (rebuild: cargo build --release --features {feature})")]
    Feature { feature: String, what: String },
    /// Hugging Face hub: download, upload, protocol (typed: HTTP status, hub error code, URL).
    #[error("hub: {0}")]
    Hub(Box<HubError>),
    /// The compute library (libtorch, the CUDA driver or NVRTC) failed: `context` says what was
    /// being done (the model, the operation), `msg` what the library said.
    #[error("{context}: {msg}")]
    Compute { context: String, msg: String },
    /// A reward (`--reward` spec: program, model, verifier) failed or gave unusable values.
    #[error("reward {spec}: {msg}")]
    Reward { spec: String, msg: String },
    /// A step of a pipeline failed: its id, how it ended, its log and the log's last lines.
    #[error("step {id} failed ({status}); see {}{}", log.display(), if tail.is_empty() { String::new() } else { format!(":\n{tail}") })]
    Step {
        id: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    /// Another live process works in this folder (a run folder's lock, see
    /// [`crate::io::lock`]); `holder` names it.
    #[error("{}: in use by {holder}; wait for it to end or stop it first", path.display())]
    Locked { path: PathBuf, holder: String },
    /// A broken internal invariant: a bug in warp, not a problem with the input.
    #[error("internal error (a bug in warp): {0}")]
    Internal(String),
    /// Ctrl-C, SIGTERM or SIGHUP (or another cancellation) was observed; partial output was
    /// removed (the CLI says what that means for the command).
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
    pub fn tensor(
        path: impl AsRef<Path>,
        tensor: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        Error::Tensor {
            path: path.as_ref().to_path_buf(),
            tensor: tensor.into(),
            msg: msg.into(),
        }
    }
    /// A compute-library (libtorch, CUDA) failure while doing `context`.
    pub fn compute(context: impl Into<String>, msg: impl std::fmt::Display) -> Self {
        Error::Compute {
            context: context.into(),
            msg: msg.to_string(),
        }
    }
    /// A setting `field` whose value cannot work.
    pub fn setting(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Setting {
            field: field.into(),
            msg: msg.into(),
        }
    }
    /// `what` needs cargo feature `feature`, which this build lacks.
    pub fn feature(feature: impl Into<String>, what: impl Into<String>) -> Self {
        Error::Feature {
            feature: feature.into(),
            what: what.into(),
        }
    }
    pub fn reward(spec: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Reward {
            spec: spec.into(),
            msg: msg.into(),
        }
    }
    /// Process exit code for this error: 2 for bad arguments and settings (as clap; a hub id or
    /// token that cannot work is one), 128 + the
    /// signal for an interruption (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP; see
    /// [`crate::interrupt`]), else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Setting { .. } => 2,
            Error::Hub(h) if h.is_usage() => 2,
            Error::Interrupted => 128 + crate::interrupt::signal().unwrap_or(libc::SIGINT),
            _ => 1,
        }
    }
}

/// Attach a path to an `io::Result`.
pub trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// `Error::Usage` (bad command-line arguments) is the CLI's alone: the library says what went
    /// wrong with a typed variant, and the CLI, which knows the flags, names them.
    #[test]
    fn usage_errors_are_raised_only_by_the_cli() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut offenders = Vec::new();
        let mut stack = vec![src.clone()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(&src).unwrap().to_path_buf();
                if rel.starts_with("cli") || rel == Path::new("error.rs") {
                    continue;
                }
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    for (i, line) in text.lines().enumerate() {
                        if line.contains("Usage(") {
                            offenders.push(format!(
                                "src/{}:{}: {}",
                                rel.display(),
                                i + 1,
                                line.trim()
                            ));
                        }
                    }
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "Error::Usage outside src/cli (use a typed error):\n{}",
            offenders.join("\n")
        );
    }
}
