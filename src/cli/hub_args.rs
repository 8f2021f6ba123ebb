//! `--push-to-hub` for the tools that write a checkpoint: flatten [`PushToHubArgs`] into a clap
//! command and call [`push_if_requested`] once the output folder is complete.

use crate::error::Result;
use crate::hub::{push_folder, PushOptions, PushOutcome};
use crate::progress::Reporter;
use std::path::Path;

/// Options to upload the output folder to the Hugging Face hub when done.
#[derive(clap::Args, Clone, Default)]
pub struct PushToHubArgs {
    /// Upload the output folder to this hub model repo (org/name) as one commit; the repo is
    /// created if needed. Needs a token (--token, HF_TOKEN or `hf auth login`).
    #[arg(long, value_name = "ORG/NAME")]
    pub push_to_hub: Option<String>,
    /// Create the hub repo private (an existing repo keeps its visibility).
    #[arg(long, requires = "push_to_hub")]
    pub private: bool,
    /// Branch to commit to (created from main if missing).
    #[arg(long, default_value = "main", requires = "push_to_hub")]
    pub revision: String,
    /// Commit message of the upload.
    #[arg(long, requires = "push_to_hub")]
    pub commit_message: Option<String>,
    /// Hub token (default: HF_TOKEN, HF_TOKEN_PATH, then $HF_HOME/token).
    #[arg(long, requires = "push_to_hub")]
    pub token: Option<String>,
}

impl std::fmt::Debug for PushToHubArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushToHubArgs")
            .field("push_to_hub", &self.push_to_hub)
            .field("private", &self.private)
            .field("revision", &self.revision)
            .field("commit_message", &self.commit_message)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl PushToHubArgs {
    /// Push options from these arguments over the environment (`HF_ENDPOINT`, token chain).
    pub fn options(&self) -> PushOptions {
        let mut opts = PushOptions::from_env();
        opts.private = self.private;
        opts.revision = self.revision.clone();
        if let Some(m) = &self.commit_message {
            opts.commit_message = m.clone();
        }
        if self.token.is_some() {
            opts.token = self.token.clone();
        }
        opts
    }
}

/// Push `out_dir` if `--push-to-hub` was given; `None` otherwise.
pub fn push_if_requested(
    out_dir: &Path,
    args: &PushToHubArgs,
    reporter: &dyn Reporter,
) -> Result<Option<PushOutcome>> {
    let Some(repo) = &args.push_to_hub else {
        return Ok(None);
    };
    push_folder(out_dir, repo, &args.options(), reporter).map(Some)
}
