//! warp-fixture: synthetic Llama-shaped checkpoints for tests and benchmarks.
#[path = "common.rs"]
mod common;

use std::process::ExitCode;

use clap::Parser;
use warp::io::synth::{write_synthetic, SynthSpec};
use warp::io::writer::{parse_size, WriterOptions};
use warp::io::{DType, OutDType};
use warp::progress::Reporter;

/// Write a deterministic synthetic Llama-shaped checkpoint (config.json included) of about the
/// given size: random weights, fast to generate, for benchmarks and tests. With --base-seed, the
/// model is a "fine-tune": base(base-seed) + noise·pattern(seed), so task vectors between models
/// sharing a base are realistic (small, nearly orthogonal).
#[derive(Parser, Debug)]
#[command(version, name = "warp-fixture")]
struct Args {
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
    hub: warp::hub::PushToHubArgs,
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

fn main() -> ExitCode {
    let args = Args::parse();
    common::main_with("warp-fixture", || {
        let spec = SynthSpec {
            size: args.size,
            dtype: args.dtype,
            seed: args.seed,
            base_seed: args.base_seed,
            noise: args.noise,
        };
        let opts = WriterOptions {
            max_shard_size: args.max_shard_size,
            force: args.force,
            ..Default::default()
        };
        let progress = common::Progress::new(args.quiet);
        let shape = write_synthetic(&args.output, &spec, &opts, &progress)?;
        progress.message(&format!("{shape:?}"));
        let mut listing = format!("{}\n", args.output.display());
        if let Some(pushed) = warp::hub::push_if_requested(&args.output, &args.hub, &progress)? {
            listing += &format!("{}\n", pushed.commit_url);
        }
        common::out(&listing)
    })
}
