//! One error type for the whole crate. Every variant carries enough context (file, tensor) for a
//! user to act on the one-line message the binaries print.

use std::path::{Path, PathBuf};

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
    /// Bad command-line arguments or options.
    #[error("{0}")]
    Usage(String),
    /// Hugging Face hub: download, upload, protocol (typed: HTTP status, hub error code, URL).
    #[error("hub: {0}")]
    Hub(Box<crate::hub::HubError>),
    /// The compute backend (libtorch, CUDA) failed: `context` says what was being done (the
    /// model, the operation), `msg` what the backend said.
    #[error("{context}: {msg}")]
    Backend { context: String, msg: String },
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
    /// A broken internal invariant: a bug in warp, not a problem with the input.
    #[error("internal error (a bug in warp): {0}")]
    Internal(String),
    /// Ctrl-C (or another cancellation) was observed; partial output was removed.
    #[error("interrupted; nothing was written at the destination")]
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
    /// A backend (libtorch, CUDA) failure while doing `context`.
    pub fn backend(context: impl Into<String>, msg: impl std::fmt::Display) -> Self {
        Error::Backend {
            context: context.into(),
            msg: msg.to_string(),
        }
    }
    pub fn reward(spec: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Reward {
            spec: spec.into(),
            msg: msg.into(),
        }
    }
    /// Process exit code for this error: 2 for usage errors (as clap), 130 for Ctrl-C, else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            Error::Interrupted => 130,
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
