//! `warp sft` (alias `warp-sft`): trains a built-in task's supervised model from scratch (a tiny
//! Llama: the noisy addition corpus, or the cipher task with its reward model), or measures a
//! model on the task.

use std::path::PathBuf;

use super::common::parse_threads;
use super::Ctx;
use crate::rl::settings::SftConfig;

/// Train a built-in task's SFT model, or measure a model on the task.
///
/// arith (addition): training writes OUT/ all or nothing: model/ (HF layout: config, tokenizer,
/// safetensors), train.jsonl and heldout.jsonl (the prompt sets) and sft.json (settings and
/// measured accuracy). cipher (shift the letters of a word; four shifts earn the reward): also
/// rm/, the reward model the task's reward is (`--reward model:OUT/rm`), and task.json instead of
/// sft.json; of the training flags only --steps (of the policy, default 2000 for cipher),
/// --rm-steps, --seed and --samples apply. The built-in models (fixtures/TASK in the source tree, builtin:TASK once installed)
/// were made with the defaults and --threads 1.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The built-in task.
    #[arg(long, value_enum, default_value_t = Task::Arith)]
    task: Task,
    /// Output folder (training).
    #[arg(short, long, value_name = "DIR", required_unless_present = "eval")]
    output: Option<PathBuf>,
    /// Replace an existing output folder.
    #[arg(long)]
    force: bool,
    /// Measure this model instead of training: arith, sampled (temperature 1) and greedy
    /// accuracy; cipher, the share of each style among samples at temperatures 1 and 0.9.
    #[arg(long, value_name = "MODEL_DIR")]
    eval: Option<PathBuf>,
    /// Prompt set for --eval (default: the task's held-out prompts).
    #[arg(long, value_name = "FILE")]
    prompts: Option<PathBuf>,
    #[command(flatten)]
    config: SftConfig,
    /// cipher: reward-model training steps (default 2000).
    #[arg(long, value_name = "N")]
    rm_steps: Option<u64>,
    /// libtorch intra-op threads (default: libtorch's choice).
    #[arg(long, value_name = "N", value_parser = parse_threads)]
    threads: Option<usize>,
    /// No progress on stderr.
    #[arg(long, short)]
    quiet: bool,
}

/// The built-in tasks `warp sft` trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Task {
    /// Two-number addition, verifiable reward.
    Arith,
    /// Shift the letters of a word; a learned reward model rewards four of the shifts.
    Cipher,
}

#[cfg(not(feature = "rl"))]
pub fn run(a: &Args, _: &Ctx) -> crate::Result<()> {
    a.config.check()?;
    Err(super::common::needs_rl("warp sft"))
}

#[cfg(feature = "rl")]
pub fn run(a: &Args, ctx: &Ctx) -> crate::Result<()> {
    use crate::builtin::resolve_path;
    use crate::progress::Reporter;
    use crate::rl::{data, sft, CausalLm, Tokenizer};
    if let Some(t) = a.threads {
        tch::set_num_threads(t as i32);
    }
    if a.task == Task::Cipher {
        return cipher(a, ctx);
    }
    if a.rm_steps.is_some() {
        return Err(crate::Error::Usage(
            "--rm-steps applies to --task cipher only".into(),
        ));
    }
    if let Some(given) = &a.eval {
        let dir = resolve_path(given)?;
        let default_prompts = PathBuf::from("builtin:arith/heldout.jsonl");
        let prompts_file = resolve_path(a.prompts.as_ref().unwrap_or(&default_prompts))?;
        let model = CausalLm::load(&dir, tch::Device::Cpu)?;
        let tok = Tokenizer::from_dir(&dir)?;
        let prompts = sft::prompt_texts(&data::read_prompts(&prompts_file)?);
        let samples = a.config.eval_samples;
        let ((acc, se), greedy) = sft::measure(&model, &tok, &prompts, samples, a.config.seed)?;
        let v = serde_json::json!({
            "model": given, "prompts": prompts_file, "n_prompts": prompts.len(),
            "samples_per_prompt": samples,
            "sampled_accuracy": (acc * 1e4).round() / 1e4,
            "sampled_accuracy_se": (se * 1e4).round() / 1e4,
            "greedy_accuracy": (greedy * 1e4).round() / 1e4,
        });
        return super::common::out_line(&v.to_string());
    }
    let Some(out) = &a.output else {
        return Err(crate::Error::Usage("give the output folder: -o DIR".into()));
    };
    a.config.check()?;
    super::common::check_new_dir("-o", out, a.force)?;
    let progress = super::Progress::new(a.quiet);
    let (dir, r) = sft::train(&a.config, out, a.force, &progress)?;
    progress.message(&format!(
        "trained in {:.0} s; final loss {:.4}; held-out accuracy sampled {:.3} ± {:.3}, greedy {:.3}",
        r.train_seconds, r.final_loss, r.heldout_accuracy.0, r.heldout_accuracy.1, r.greedy_accuracy
    ));
    super::common::out_line(&dir.display().to_string())
}

/// `warp sft --task cipher`: builds the policy, the reward model and the prompt sets, or (with
/// --eval) measures a policy's styles.
#[cfg(feature = "rl")]
fn cipher(a: &Args, ctx: &Ctx) -> crate::Result<()> {
    use crate::builtin::resolve_path;
    use crate::progress::Reporter;
    use crate::rl::cipher::{self, CipherConfig};
    use crate::rl::{data, sft, CausalLm, Tokenizer};
    use clap::parser::ValueSource;
    let given = |id: &str| ctx.matches.value_source(id) == Some(ValueSource::CommandLine);
    let foreign = [
        "batch",
        "lr",
        "warmup",
        "p_correct",
        "hidden",
        "layers",
        "heads",
        "kv_heads",
        "intermediate",
    ];
    if let Some(id) = foreign.iter().find(|id| given(id)) {
        return Err(crate::Error::Usage(format!(
            "--{} does not apply to --task cipher (its settings are fixed: see task.json)",
            id.replace('_', "-")
        )));
    }
    if let Some(model) = &a.eval {
        let dir = resolve_path(model)?;
        let lm = CausalLm::load(&dir, tch::Device::Cpu)?;
        let tok = Tokenizer::from_dir(&dir)?;
        let prompts = match &a.prompts {
            Some(p) => sft::prompt_texts(&data::read_prompts(&resolve_path(p)?)?),
            None => sft::prompt_texts(&crate::tasks::cipher::splits().1),
        };
        let (samples, seed) = (a.config.eval_samples, a.config.seed);
        let mut v = serde_json::json!({"model": model, "n_prompts": prompts.len(),
                                       "samples_per_prompt": samples});
        for t in [1.0, 0.9] {
            let pairs = cipher::policy_samples(&lm, &tok, &prompts, samples, t, seed)?;
            v[format!("temperature_{t}")] = cipher::StyleShares::of(&pairs).to_json();
        }
        return super::common::out_line(&v.to_string());
    }
    let Some(out) = &a.output else {
        return Err(crate::Error::Usage("give the output folder: -o DIR".into()));
    };
    let mut c = CipherConfig {
        seed: a.config.seed,
        eval_samples: a.config.eval_samples,
        ..CipherConfig::default()
    };
    if given("steps") {
        c.sft.steps = a.config.steps;
    }
    if let Some(s) = a.rm_steps {
        c.rm_training.steps = s;
    }
    super::common::check_new_dir("-o", out, a.force)?;
    let progress = super::Progress::new(a.quiet);
    let (dir, r) = cipher::build(&c, out, a.force, &progress)?;
    progress.message(&format!(
        "built in {:.0} s; SFT loss {:.4}, held-out styles {}; reward model loss {:.4}, held-out \
         accuracy {:.4}, on the SFT samples {:.4}",
        r.seconds,
        r.sft_loss,
        r.sft_shares.to_json(),
        r.rm_loss,
        r.rm_accuracy,
        r.rm_accuracy_on_policy
    ));
    super::common::out_line(&dir.display().to_string())
}
