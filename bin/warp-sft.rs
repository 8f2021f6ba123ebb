//! `warp-sft`: trains the built-in supervised model from scratch (a tiny Llama on the noisy
//! addition corpus), or measures a model's accuracy on the built-in task (`--eval`).

#[path = "common.rs"]
mod common;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use warp::progress::Reporter;
use warp::rl::sft::{self, SftConfig};
use warp::rl::{data, LlamaModel, Tokenizer};

/// Train the built-in SFT model, or measure a model on the built-in addition task.
///
/// Training writes OUT/ all or nothing: model/ (HF layout: config, tokenizer, safetensors),
/// train.jsonl and heldout.jsonl (the prompt sets) and sft.json (settings and measured accuracy).
/// The committed fixtures/arith/ was made with the defaults.
#[derive(Parser)]
#[command(name = "warp-sft", version)]
struct Cli {
    /// Output folder (training).
    #[arg(short, long, value_name = "DIR", required_unless_present = "eval")]
    output: Option<PathBuf>,
    /// Replace an existing output folder.
    #[arg(long)]
    force: bool,
    /// Measure this model instead of training: sampled (temperature 1) and greedy accuracy.
    #[arg(long, value_name = "MODEL_DIR")]
    eval: Option<PathBuf>,
    /// Prompt set for --eval.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/arith/heldout.jsonl"))]
    prompts: PathBuf,
    #[arg(long, default_value_t = SftConfig::default().steps)]
    steps: u64,
    #[arg(long, default_value_t = SftConfig::default().batch)]
    batch: usize,
    #[arg(long, default_value_t = SftConfig::default().lr)]
    lr: f64,
    #[arg(long, default_value_t = SftConfig::default().seed)]
    seed: u64,
    /// How often the corpus shows the right answer.
    #[arg(long, default_value_t = SftConfig::default().p_correct)]
    p_correct: f64,
    #[arg(long, default_value_t = SftConfig::default().hidden)]
    hidden: usize,
    #[arg(long, default_value_t = SftConfig::default().layers)]
    layers: usize,
    /// Sampled completions per held-out prompt when measuring.
    #[arg(long, default_value_t = SftConfig::default().eval_samples)]
    samples: usize,
    /// libtorch intra-op threads (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
    /// No progress on stderr.
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    common::main_with("warp-sft", || run(&cli))
}

fn run(cli: &Cli) -> warp::Result<()> {
    if let Some(t) = cli.threads {
        tch::set_num_threads(t);
    }
    let progress = common::Progress::new(cli.quiet);
    if let Some(dir) = &cli.eval {
        let model = LlamaModel::load(dir, tch::Device::Cpu)?;
        let tok = Tokenizer::from_dir(dir)?;
        let prompts = sft::prompt_texts(&data::read_prompts(&cli.prompts)?);
        let ((acc, se), greedy) = sft::measure(&model, &tok, &prompts, cli.samples, cli.seed)?;
        return common::out(&format!(
            "{{\"model\": {:?}, \"prompts\": {:?}, \"n_prompts\": {}, \"samples_per_prompt\": {}, \
             \"sampled_accuracy\": {acc:.4}, \"sampled_accuracy_se\": {se:.4}, \
             \"greedy_accuracy\": {greedy:.4}}}\n",
            dir.display().to_string(),
            cli.prompts.display().to_string(),
            prompts.len(),
            cli.samples
        ));
    }
    let c = SftConfig {
        steps: cli.steps,
        batch: cli.batch,
        lr: cli.lr,
        seed: cli.seed,
        p_correct: cli.p_correct,
        hidden: cli.hidden,
        layers: cli.layers,
        eval_samples: cli.samples,
        ..SftConfig::default()
    };
    let out = cli
        .output
        .as_ref()
        .expect("clap requires -o without --eval");
    let (dir, r) = sft::train(&c, out, cli.force, &progress)?;
    progress.message(&format!(
        "trained in {:.0} s; final loss {:.4}; held-out accuracy sampled {:.3} ± {:.3}, greedy {:.3}",
        r.train_seconds, r.final_loss, r.heldout_accuracy.0, r.heldout_accuracy.1, r.greedy_accuracy
    ));
    common::out(&format!("{}\n", dir.display()))
}
