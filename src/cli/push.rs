//! `warp push`: upload a folder to the Hugging Face hub.

use std::path::PathBuf;

use super::common::out_line;
use super::progress::Progress;
use super::Ctx;
use crate::hub::{self, PushOptions};
use crate::progress::Reporter;

/// Upload a checkpoint folder to a Hugging Face hub model repo as one commit.
///
/// The repo is created if needed. LFS files the hub already stores and files that are unchanged
/// are not sent again, so re-running an interrupted push only sends what is missing. Prints the
/// commit URL on stdout. HF_ENDPOINT selects another hub.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folder to upload (every file in it, except .git/ and .cache/huggingface/).
    dir: PathBuf,
    /// Target model repo, org/name.
    repo: String,
    /// Create the repo private (an existing repo keeps its visibility).
    #[arg(long)]
    private: bool,
    /// Branch to commit to (created from main if missing).
    #[arg(long, default_value = "main")]
    revision: String,
    /// Commit message.
    #[arg(long, default_value = "Upload folder with warp")]
    commit_message: String,
    /// Hub token (default: HF_TOKEN, then the file at HF_TOKEN_PATH or $HF_HOME/token).
    #[arg(long)]
    token: Option<String>,
    /// Uploads in flight at once (parts of large files count one each).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    jobs: u32,
    /// No progress bars or log lines on stderr (errors are still printed).
    #[arg(short, long)]
    quiet: bool,
}

pub fn run(a: &Args, _: &Ctx) -> crate::Result<()> {
    let reporter = Progress::new(a.quiet);
    let mut opts = PushOptions::from_env();
    opts.private = a.private;
    opts.revision = a.revision.clone();
    opts.commit_message = a.commit_message.clone();
    if a.token.is_some() {
        opts.token = a.token.clone();
    }
    opts.parallelism = a.jobs as usize;
    let out = hub::push_folder(&a.dir, &a.repo, &opts, &reporter)?;
    reporter.finish();
    reporter.message(&format!(
        "{} file(s): {} unchanged, {} LFS object(s) sent ({} bytes), {} already stored",
        out.files, out.unchanged, out.lfs_uploaded, out.bytes_uploaded, out.lfs_already_stored
    ));
    out_line(&out.commit_url)
}
