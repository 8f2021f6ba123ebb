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
    /// The built-in task: `arith` (addition, verifiable reward) or `cipher` (shift the letters of
    /// a word; also trains its reward model, OUT/rm). With cipher only --steps, --rm-steps,
    /// --seed, --samples and --threads apply.
    #[arg(long, default_value = "arith", value_parser = ["arith", "cipher"])]
    task: String,
    /// Training steps (default: 2500 for arith, 1000 for cipher).
    #[arg(long)]
    steps: Option<u64>,
    /// cipher: reward-model training steps (default 2000).
    #[arg(long)]
    rm_steps: Option<u64>,
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
    if let (Some(dir), "cipher") = (&cli.eval, cli.task.as_str()) {
        return eval_cipher(cli, dir);
    }
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
    let out = cli
        .output
        .as_ref()
        .expect("clap requires -o without --eval");
    if cli.task == "cipher" {
        return build_cipher(cli, out, &progress);
    }
    let c = SftConfig {
        steps: cli.steps.unwrap_or(SftConfig::default().steps),
        batch: cli.batch,
        lr: cli.lr,
        seed: cli.seed,
        p_correct: cli.p_correct,
        hidden: cli.hidden,
        layers: cli.layers,
        eval_samples: cli.samples,
        ..SftConfig::default()
    };
    let (dir, r) = sft::train(&c, out, cli.force, &progress)?;
    progress.message(&format!(
        "trained in {:.0} s; final loss {:.4}; held-out accuracy sampled {:.3} ± {:.3}, greedy {:.3}",
        r.train_seconds, r.final_loss, r.heldout_accuracy.0, r.heldout_accuracy.1, r.greedy_accuracy
    ));
    common::out(&format!("{}\n", dir.display()))
}

fn build_cipher(cli: &Cli, out: &std::path::Path, progress: &common::Progress) -> warp::Result<()> {
    use warp::rl::cipher::{self, CipherConfig};
    let mut c = CipherConfig {
        seed: cli.seed,
        eval_samples: cli.samples,
        ..CipherConfig::default()
    };
    if let Some(s) = cli.steps {
        c.sft.steps = s;
    }
    if let Some(s) = cli.rm_steps {
        c.rm_training.steps = s;
    }
    let (dir, r) = cipher::build(&c, out, cli.force, progress)?;
    progress.message(&format!(
        "built in {:.0} s; SFT loss {:.4}, held-out styles {}; reward model loss {:.4}, held-out \
         accuracy {:.4}, on SFT samples {:.4}",
        r.seconds,
        r.sft_loss,
        r.sft_shares.to_json(),
        r.rm_loss,
        r.rm_accuracy,
        r.rm_accuracy_on_policy
    ));
    common::out(&format!("{}\n", dir.display()))
}

/// Style shares of a policy's samples on the cipher task's held-out prompts (or --prompts).
fn eval_cipher(cli: &Cli, dir: &std::path::Path) -> warp::Result<()> {
    use warp::rl::cipher;
    let model = LlamaModel::load(dir, tch::Device::Cpu)?;
    let tok = Tokenizer::from_dir(dir)?;
    let prompts = if cli.prompts.ends_with("arith/heldout.jsonl") {
        sft::prompt_texts(&cipher::splits().1)
    } else {
        sft::prompt_texts(&data::read_prompts(&cli.prompts)?)
    };
    let mut out = serde_json::json!({"model": dir.display().to_string(), "samples": cli.samples});
    for t in [1.0, 0.9] {
        let pairs = cipher::policy_samples(&model, &tok, &prompts, cli.samples, t, cli.seed)?;
        out[format!("temperature_{t}")] = cipher::StyleShares::of(&pairs).to_json();
    }
    common::out(&format!("{out}\n"))
}
