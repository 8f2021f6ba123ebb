//! `warp sft` (alias `warp-sft`): trains the built-in supervised model from scratch (a tiny
//! Llama on the noisy addition corpus), or measures a model's accuracy on the built-in task.

use std::path::PathBuf;

use super::common::parse_threads;
use super::Ctx;
use crate::rl::settings::SftConfig;

/// Train the built-in SFT model, or measure a model on the built-in addition task.
///
/// Training writes OUT/ all or nothing: model/ (HF layout: config, tokenizer, safetensors),
/// train.jsonl and heldout.jsonl (the prompt sets) and sft.json (settings and measured accuracy).
/// The built-in model (fixtures/arith in the source tree, builtin:arith once installed) was made
/// with the defaults and --threads 1.
#[derive(clap::Args, Debug)]
pub struct Args {
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
    #[arg(
        long,
        value_name = "FILE",
        default_value = "builtin:arith/heldout.jsonl"
    )]
    prompts: PathBuf,
    #[command(flatten)]
    config: SftConfig,
    /// libtorch intra-op threads (default: libtorch's choice).
    #[arg(long, value_name = "N", value_parser = parse_threads)]
    threads: Option<usize>,
    /// No progress on stderr.
    #[arg(long, short)]
    quiet: bool,
}

#[cfg(not(feature = "rl"))]
pub fn run(a: &Args, _: &Ctx) -> crate::Result<()> {
    a.config.check()?;
    Err(super::common::needs_rl("warp sft"))
}

#[cfg(feature = "rl")]
pub fn run(a: &Args, _: &Ctx) -> crate::Result<()> {
    use crate::builtin::resolve_path;
    use crate::progress::Reporter;
    use crate::rl::{data, sft, LlamaModel, Tokenizer};
    if let Some(t) = a.threads {
        tch::set_num_threads(t as i32);
    }
    if let Some(given) = &a.eval {
        let dir = resolve_path(given)?;
        let prompts_file = resolve_path(&a.prompts)?;
        let model = LlamaModel::load(&dir, tch::Device::Cpu)?;
        let tok = Tokenizer::from_dir(&dir)?;
        let prompts = sft::prompt_texts(&data::read_prompts(&prompts_file)?);
        let samples = a.config.eval_samples;
        let ((acc, se), greedy) = sft::measure(&model, &tok, &prompts, samples, a.config.seed)?;
        let v = serde_json::json!({
            "model": given, "prompts": a.prompts, "n_prompts": prompts.len(),
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
