//! `warp download`: fetch a hub checkpoint into the HF cache.

use super::common::out_line;
use super::progress::Progress;
use super::Ctx;
use crate::hub::{self, HubOptions};
use crate::progress::Reporter;

/// Download a hub checkpoint (org/name[@revision]) into the HF cache; prints its folder.
///
/// Fetches model.safetensors or the shard index and its shards, plus config and tokenizer files.
/// Honours HF_ENDPOINT, HF_HOME, HF_HUB_CACHE, HF_TOKEN and HF_HUB_OFFLINE=1 (cache only).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// org/name or org/name@revision (an existing local path is printed as is).
    checkpoint: String,
    /// No progress bars or log lines on stderr (errors are still printed).
    #[arg(short, long)]
    quiet: bool,
}

pub fn run(a: &Args, _: &Ctx) -> crate::Result<()> {
    let reporter = Progress::new(a.quiet);
    let path = hub::resolve_checkpoint(&a.checkpoint, &HubOptions::from_env(), &reporter)?;
    reporter.finish();
    out_line(&path.display().to_string())
}
