//! Hugging Face hub: hub ids as inputs, pushing outputs. (Owned by the hub work; see issue 6.)
//!
//! - [`resolve_checkpoint`]: a checkpoint argument that is not a local path but `org/name[@rev]` is
//!   downloaded (only the files a merge needs) into the standard HF cache through warp's own
//!   client (the token only to the hub's exact origin, on every redirect hop), and the snapshot
//!   folder is returned. `HF_HUB_OFFLINE=1` reads the cache only.
//! - [`push_folder`]: uploads an output folder as ONE commit with the hub's own protocol
//!   (preupload → LFS batch → basic/multipart transfers → verify → NDJSON commit), streaming every
//!   file from disk, retrying each request on its own.
//!
//! Environment is read in one place ([`HubOptions::from_env`], [`PushOptions::from_env`]) so the
//! library itself is driven by explicit options (and tests never touch process env).
//! The protocol is documented in `docs/HUB.md`.

mod auth;
mod download;
mod fetch;
mod http;
pub mod lfs;
mod repo_id;
mod upload;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::error::{HubError, HubErrorKind};
pub use auth::token_from_env;
pub use download::{open_checkpoint, resolve_checkpoint, CHECKPOINT_FILES};
pub use repo_id::HubId;
pub use upload::{push_folder, PushOutcome};

/// The public hub; `HF_ENDPOINT` overrides it (mirrors, test servers).
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// How failed requests (downloads and uploads alike) are retried: exponential backoff from
/// `base_delay`, capped at `max_delay`; a `Retry-After` from the server is honoured up to
/// `max_retry_after`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 = no retry).
    pub max_retries: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 5,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(16),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// Delay before retry number `attempt` (0-based): base·2^attempt, capped, with up to 25% jitter
    /// so parallel transfers that failed together do not retry in lockstep.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX));
        let capped = exp.min(self.max_delay);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        capped + capped.mul_f64(f64::from(nanos % 1000) / 4000.0)
    }
}

/// Options for reading hub checkpoints.
#[derive(Clone)]
pub struct HubOptions {
    /// Hub base URL, without trailing slash.
    pub endpoint: String,
    /// The hub cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// Bearer token for private or gated repos. Never printed.
    pub token: Option<String>,
    /// Use the cache only (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    pub retry: RetryPolicy,
}

impl HubOptions {
    /// Options from the standard variables: `HF_ENDPOINT`, `HF_HUB_CACHE`, `HF_HOME`,
    /// `HF_HUB_OFFLINE`, and the token chain of [`token_from_env`].
    pub fn from_env() -> Self {
        HubOptions {
            endpoint: endpoint_from_env(),
            cache_dir: cache_dir_from_env(),
            token: token_from_env(),
            offline: env_flag("HF_HUB_OFFLINE"),
            retry: RetryPolicy::default(),
        }
    }
}

impl fmt::Debug for HubOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubOptions")
            .field("endpoint", &self.endpoint)
            .field("cache_dir", &self.cache_dir)
            .field("token", &redacted(&self.token))
            .field("offline", &self.offline)
            .field("retry", &self.retry)
            .finish()
    }
}

/// Options for [`push_folder`].
#[derive(Clone)]
pub struct PushOptions {
    /// Create the repo private (an existing repo keeps its visibility).
    pub private: bool,
    /// Branch to commit to; created from `main` if missing.
    pub revision: String,
    pub commit_message: String,
    pub commit_description: String,
    /// Write token. Never printed.
    pub token: Option<String>,
    /// Hub base URL, without trailing slash.
    pub endpoint: String,
    /// Transfers (whole objects or parts) in flight at once; also the number of hashing threads.
    pub parallelism: usize,
    pub retry: RetryPolicy,
    /// Per-request socket read/write timeout.
    pub timeout: Duration,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            private: false,
            revision: "main".to_string(),
            commit_message: "Upload folder with warp".to_string(),
            commit_description: String::new(),
            token: None,
            endpoint: DEFAULT_ENDPOINT.to_string(),
            parallelism: 8,
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(120),
        }
    }
}

impl PushOptions {
    /// Defaults plus `HF_ENDPOINT` and the token chain of [`token_from_env`].
    pub fn from_env() -> Self {
        PushOptions {
            endpoint: endpoint_from_env(),
            token: token_from_env(),
            ..PushOptions::default()
        }
    }
}

impl fmt::Debug for PushOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushOptions")
            .field("private", &self.private)
            .field("revision", &self.revision)
            .field("commit_message", &self.commit_message)
            .field("commit_description", &self.commit_description)
            .field("token", &redacted(&self.token))
            .field("endpoint", &self.endpoint)
            .field("parallelism", &self.parallelism)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn redacted(token: &Option<String>) -> Option<&'static str> {
    token.as_ref().map(|_| "<redacted>")
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `1`, `true`, `yes`, `on` (any case) as the python client reads boolean variables.
fn env_flag(name: &str) -> bool {
    env_nonempty(name).is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

fn endpoint_from_env() -> String {
    env_nonempty("HF_ENDPOINT")
        .map(|e| e.trim().trim_end_matches('/').to_string())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
}

/// `$HF_HOME`, else `~/.cache/huggingface`.
pub(crate) fn hf_home() -> PathBuf {
    if let Some(home) = env_nonempty("HF_HOME") {
        return PathBuf::from(home);
    }
    let base = env_nonempty("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env_nonempty("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("huggingface")
}

fn cache_dir_from_env() -> PathBuf {
    env_nonempty("HF_HUB_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| hf_home().join("hub"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_token() {
        let opts = PushOptions {
            token: Some("hf_secret_value".into()),
            ..PushOptions::default()
        };
        let shown = format!("{opts:?}");
        assert!(!shown.contains("hf_secret_value"), "{shown}");
        assert!(shown.contains("<redacted>"));
        let hub = HubOptions {
            endpoint: DEFAULT_ENDPOINT.into(),
            cache_dir: PathBuf::from("/c"),
            token: Some("hf_secret_value".into()),
            offline: false,
            retry: RetryPolicy::default(),
        };
        assert!(!format!("{hub:?}").contains("hf_secret_value"));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_retries: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            max_retry_after: Duration::from_secs(1),
        };
        let d0 = p.backoff(0);
        assert!(d0 >= Duration::from_millis(100) && d0 <= Duration::from_millis(125));
        let d3 = p.backoff(3);
        assert!(d3 >= Duration::from_millis(800) && d3 <= Duration::from_millis(1000));
        assert!(p.backoff(40) <= Duration::from_millis(1250));
    }
}
