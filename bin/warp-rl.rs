//! `warp-rl`: RL fine-tuning with an EMA anchor (WARP stage 1). Thin shell over
//! `warp::rl::trainer`; with no model argument it runs the built-in task.

#[path = "common.rs"]
mod common;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
use warp::rl::trainer::{parse_anchor, parse_baseline, Anchor, Baseline, RlConfig, Trainer};

fn d() -> RlConfig {
    RlConfig::default()
}

/// RL fine-tuning of a Llama-family policy with a KL penalty towards its own exponential moving
/// average (WARP stage 1), or towards the frozen init (--anchor init).
///
/// Writes OUT/run.json (settings), OUT/metrics.jsonl (one line per step), resumable checkpoints
/// OUT/step-NNNNNN/{policy,ema,trainer}/ and OUT/final/{policy,ema}/ in HF layout. With no
/// MODEL it trains the built-in SFT model (fixtures/arith/model) on the built-in addition task
/// with the verifiable reward. The paper's settings (Gemma 7B) are β 0.1, μ 0.01, temperature
/// 0.9, Adam lr 1e-6 with 100 warm-up steps, batch 128, T 9k; the defaults here suit the
/// built-in task (see docs/RL.md).
#[derive(Parser)]
#[command(name = "warp-rl", version)]
struct Cli {
    /// Init policy: checkpoint folder or hub id (default: the built-in SFT model).
    model: Option<String>,
    /// Run folder (must not exist, or be empty).
    #[arg(short, long, value_name = "DIR", required_unless_present = "resume")]
    output: Option<PathBuf>,
    /// Continue the run in DIR from its last complete checkpoint, with its recorded settings
    /// (only --steps, --threads and --quiet may be given with it).
    #[arg(long, value_name = "DIR", conflicts_with = "output")]
    resume: Option<PathBuf>,
    /// Prompt set, JSONL with one {"prompt": …} per line.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/arith/train.jsonl"))]
    prompts: PathBuf,
    /// verify:arith (built-in task), model:PATH (reward model with a scalar head) or
    /// cmd:PROGRAM (reads JSONL {prompt, completion} on stdin, prints one number per line).
    #[arg(long, default_value_t = d().reward)]
    reward: String,
    /// Optimizer steps T.
    #[arg(long, default_value_t = d().steps)]
    steps: u64,
    /// Prompts per step.
    #[arg(long, default_value_t = d().batch)]
    batch: usize,
    /// Completions per prompt.
    #[arg(short, long, default_value_t = d().n)]
    n: usize,
    /// KL penalty coefficient β.
    #[arg(long, default_value_t = d().beta)]
    beta: f64,
    /// EMA update rate μ: θema ← (1−μ)θema + μθ after every step.
    #[arg(long, default_value_t = d().mu)]
    mu: f64,
    #[arg(long, default_value_t = d().temperature)]
    temperature: f64,
    #[arg(long, default_value_t = d().max_new_tokens)]
    max_new_tokens: usize,
    /// Adam learning rate (after warm-up).
    #[arg(long, default_value_t = d().lr)]
    lr: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = d().warmup)]
    warmup: u64,
    /// Global gradient-norm clip (0: none).
    #[arg(long, default_value_t = d().grad_clip)]
    grad_clip: f64,
    /// rloo (leave-one-out baseline) or none (plain REINFORCE, as the paper).
    #[arg(long, default_value = "rloo", value_parser = parse_baseline)]
    baseline: Baseline,
    /// ema (WARP) or init (the classic frozen-SFT anchor).
    #[arg(long, default_value = "ema", value_parser = parse_anchor)]
    anchor: Anchor,
    /// Reward minus this times the completion length in tokens (paper App. E: 0.0005).
    #[arg(long, default_value_t = d().length_penalty)]
    length_penalty: f64,
    #[arg(long, default_value_t = d().seed)]
    seed: u64,
    /// Resumable checkpoint every this many steps (and at the end).
    #[arg(long, default_value_t = d().save_every)]
    save_every: u64,
    /// Train the policy in bf16 (the EMA stays f32).
    #[arg(long)]
    bf16: bool,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value_t = d().device)]
    device: String,
    /// Seconds a cmd: reward may take per call before it is killed.
    #[arg(long, default_value_t = d().reward_timeout)]
    reward_timeout: f64,
    /// libtorch intra-op threads (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
    /// No progress on stderr.
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    // With --resume the run's recorded settings hold: refuse flags that would silently not apply.
    let cmd = Cli::command();
    let given: Vec<String> = matches
        .ids()
        // Arguments only (the derive also registers a group named after the struct).
        .filter(|id| cmd.get_arguments().any(|a| a.get_id() == *id))
        .filter(|id| matches.value_source(id.as_str()) == Some(ValueSource::CommandLine))
        .map(|id| id.to_string())
        .filter(|id| !["resume", "steps", "threads", "quiet"].contains(&id.as_str()))
        .collect();
    common::main_with("warp-rl", || {
        if cli.resume.is_some() && !given.is_empty() {
            return Err(warp::Error::Usage(format!(
                "--resume continues with the run's recorded settings; these cannot be changed: {}",
                given.join(", ")
            )));
        }
        run(
            &cli,
            matches.value_source("steps") == Some(ValueSource::CommandLine),
        )
    })
}

fn run(cli: &Cli, steps_given: bool) -> warp::Result<()> {
    if let Some(t) = cli.threads {
        tch::set_num_threads(t);
    }
    let progress = common::Progress::new(cli.quiet);
    let mut trainer = match &cli.resume {
        Some(dir) => Trainer::resume(dir, steps_given.then_some(cli.steps), &progress)?,
        None => {
            let cfg = RlConfig {
                model: cli.model.clone().unwrap_or_else(|| d().model),
                prompts: cli.prompts.clone(),
                reward: cli.reward.clone(),
                steps: cli.steps,
                batch: cli.batch,
                n: cli.n,
                beta: cli.beta,
                mu: cli.mu,
                temperature: cli.temperature,
                max_new_tokens: cli.max_new_tokens,
                lr: cli.lr,
                warmup: cli.warmup,
                grad_clip: cli.grad_clip,
                baseline: cli.baseline,
                anchor: cli.anchor,
                length_penalty: cli.length_penalty,
                seed: cli.seed,
                save_every: cli.save_every,
                bf16: cli.bf16,
                device: cli.device.clone(),
                reward_timeout: cli.reward_timeout,
            };
            let out = cli
                .output
                .as_ref()
                .expect("clap requires -o without --resume");
            Trainer::new(cfg, out, &progress)?
        }
    };
    let fin = trainer.run(&progress)?;
    common::out(&format!("{}\n", fin.display()))
}
