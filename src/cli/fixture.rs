//! `warp fixture` (alias `warp-fixture`): synthetic Llama-shaped checkpoints for tests and
//! benchmarks.

use super::common::{check_new_dir, out};
use super::progress::Progress;
use super::Ctx;
use crate::io::synth::{write_synthetic, SynthSpec};
use crate::io::writer::{parse_size, WriterOptions};
use crate::io::{DType, OutDType};
use crate::progress::Reporter;

/// Write a synthetic Llama-shaped checkpoint for tests and benchmarks.
///
/// Write a deterministic synthetic Llama-shaped checkpoint (config.json included) of about the
/// given size: random weights, fast to generate, for benchmarks and tests. With --base-seed, the
/// model is a "fine-tune": base(base-seed) + noise·pattern(seed), so task vectors between models
/// sharing a base are realistic (small, nearly orthogonal).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Approximate total size, e.g. 2GB, 500MiB.
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    size: u64,
    /// Dtype of every tensor: bf16, f16 or f32.
    #[arg(long, default_value = "bf16", value_parser = parse_dtype)]
    dtype: DType,
    /// Seed of the weights (or of the fine-tuning noise with --base-seed).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Make a fine-tune of the model with this seed.
    #[arg(long, value_name = "SEED")]
    base_seed: Option<u64>,
    /// Scale of the fine-tuning noise (with --base-seed).
    #[arg(long, default_value_t = 0.002)]
    noise: f32,
    /// Output folder (must not exist unless --force).
    #[arg(short, long, value_name = "DIR")]
    output: std::path::PathBuf,
    /// Replace an existing output folder (at the very end).
    #[arg(long)]
    force: bool,
    /// Largest shard file, e.g. 5GB (HF default), 500MB, 2GiB.
    #[arg(long, default_value = "5GB", value_parser = parse_size, value_name = "SIZE")]
    max_shard_size: u64,
    #[command(flatten)]
    hub: super::hub_args::PushToHubArgs,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
}

fn parse_dtype(s: &str) -> Result<DType, String> {
    match s.parse::<OutDType>()? {
        OutDType::To(d) => Ok(d),
        OutDType::Same => Err("give a dtype: bf16, f16 or f32".into()),
    }
}

pub fn run(a: &Args, _: &Ctx) -> crate::Result<()> {
    check_new_dir("-o", &a.output, a.force)?;
    let spec = SynthSpec {
        size: a.size,
        dtype: a.dtype,
        seed: a.seed,
        base_seed: a.base_seed,
        noise: a.noise,
    };
    let opts = WriterOptions {
        max_shard_size: a.max_shard_size,
        force: a.force,
        ..Default::default()
    };
    let progress = Progress::new(a.quiet);
    let shape = write_synthetic(&a.output, &spec, &opts, &progress)?;
    progress.message(&format!("{shape:?}"));
    let mut listing = format!("{}\n", a.output.display());
    if let Some(pushed) = super::hub_args::push_if_requested(&a.output, &a.hub, &progress)? {
        listing += &format!("{}\n", pushed.commit_url);
    }
    out(&listing)
}
