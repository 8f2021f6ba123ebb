//! `warp eval`: mean held-out reward and KL to the SFT model of checkpoints, as CSV.

use std::path::PathBuf;

use super::common::parse_threads;
use super::Ctx;
use crate::device::Device;

/// Held-out reward and KL to the SFT model of checkpoints, as a CSV.
///
/// Measure checkpoints on held-out prompts: mean reward of sampled completions and
/// KL(π ‖ π_SFT), estimated on the same samples (per-token KL over the vocabulary, summed over
/// the completion). Writes the CSV that `warp plot` draws and prints it as a table; beside it
/// (OUT.csv → OUT-samples.csv, OUT.json) every sample's reward, KL, length and text, and the
/// evaluation's settings, which `warp report` resamples.
///
/// A checkpoint may be a PEFT LoRA adapter folder (as `warp rl --lora` and the merges of adapters
/// write): it is measured as its base (`base_model_name_or_path`, loaded once for all its
/// adapters in a row) with the adapter on.
///
/// Every checkpoint sees the same prompts and the same random stream, so differences between
/// checkpoints are paired: not blurred by sampling noise more than necessary. Needs the `rl`
/// feature.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint folders to evaluate (kind "model"); see also --run.
    checkpoints: Vec<PathBuf>,
    /// A `warp run` folder: evaluate all its checkpoints (trajectories, LITI grids, merges).
    #[arg(long, value_name = "DIR")]
    run: Option<PathBuf>,
    /// The SFT model: KL reference, tokenizer, and the first row.
    #[arg(long, value_name = "DIR", default_value = "builtin:arith/model")]
    sft: PathBuf,
    /// Held-out prompts (JSONL: {"prompt": "…"} or {"messages": […]} lines, as for `warp rl`).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "builtin:arith/heldout.jsonl"
    )]
    prompts: PathBuf,
    /// Chat template of "messages" prompts (the SFT model's tokenizer renders them): auto, none
    /// or a Jinja file (or the name of one of the model's named templates).
    #[arg(long, value_name = "auto|none|FILE", default_value_t = crate::rl::chat::TemplateChoice::Auto)]
    chat_template: crate::rl::chat::TemplateChoice,
    /// Use the first N prompts only (0: all).
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_prompts: usize,
    /// verify:arith, model:PATH or cmd:PROGRAM (as `warp rl --reward`).
    #[arg(long, value_name = "SPEC", default_value = "verify:arith")]
    reward: String,
    /// Completions per prompt.
    #[arg(long, default_value_t = 2)]
    samples: usize,
    /// Sampling temperature of the evaluation (KL is between the tempered distributions). The
    /// default is `warp rl`'s: RL optimizes reward − β·KL of the tempered policy, so that is the
    /// trade-off to measure.
    #[arg(long, default_value_t = 0.9)]
    temperature: f64,
    /// Longest completion, in tokens.
    #[arg(long, default_value_t = 8)]
    max_new_tokens: usize,
    /// Seed of the samples (the same for every checkpoint).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// auto (a GPU when libtorch sees one, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value_t = Device::Auto)]
    device: Device,
    /// Refuse to start (before loading any weights) when the evaluation's memory plan exceeds
    /// SIZE even one sequence at a time (e.g. 8GB, 2GiB); otherwise sample and score fewer
    /// sequences at a time so that it fits.
    #[arg(long, value_name = "SIZE")]
    max_memory: Option<String>,
    /// Print the memory plan (and the batch it chose) and exit, loading no weights.
    #[arg(long)]
    dry_run: bool,
    /// libtorch threads (default: libtorch's choice).
    #[arg(long, value_name = "N", value_parser = parse_threads)]
    threads: Option<usize>,
    /// Output CSV (replaced atomically).
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// No progress on stderr.
    #[arg(short, long)]
    quiet: bool,
}

#[cfg(not(feature = "rl"))]
pub fn run(_: &Args, _: &Ctx) -> crate::Result<()> {
    Err(super::common::needs_rl("warp eval"))
}

#[cfg(feature = "rl")]
pub fn run(a: &Args, _: &Ctx) -> crate::Result<()> {
    use super::common::check_new_file;
    use crate::builtin::resolve_path;
    use crate::error::Error;
    use crate::pipeline::{EvalTable, Point, PointKind};
    use crate::rl::eval::{evaluate_points, SampleOptions};
    check_new_file("-o", &a.output)?;
    if a.samples == 0 || a.max_new_tokens == 0 {
        return Err(Error::Usage(
            "--samples and --max-new-tokens must be > 0".into(),
        ));
    }
    if !(a.temperature.is_finite() && a.temperature > 0.0) {
        return Err(Error::Usage(format!(
            "--temperature must be > 0, got {}",
            a.temperature
        )));
    }
    if let Some(t) = a.threads {
        tch::set_num_threads(t as i32);
    }
    let mut points = match &a.run {
        Some(dir) => crate::pipeline::discover(dir)?,
        None => Vec::new(),
    };
    points.extend(a.checkpoints.iter().map(|p| {
        let mut pt = Point::new(PointKind::Model, p);
        pt.label = p.display().to_string();
        pt
    }));
    if points.is_empty() {
        return Err(Error::Usage(
            "nothing to evaluate: give checkpoint folders or --run DIR".into(),
        ));
    }
    let prompts_path = resolve_path(&a.prompts)?;
    let mut prompts = crate::rl::data::read_prompt_lines(&prompts_path)?;
    if a.max_prompts > 0 {
        prompts.truncate(a.max_prompts);
    }
    let max_memory = match &a.max_memory {
        Some(m) => Some(
            crate::io::writer::parse_size(m)
                .map_err(|e| Error::Usage(format!("--max-memory: {e}")))?,
        ),
        None => None,
    };
    let mut reward = crate::rl::reward::from_spec(&a.reward)?;
    let o = SampleOptions {
        samples: a.samples,
        temperature: a.temperature,
        max_new_tokens: a.max_new_tokens,
        batch: 1024,
        seed: a.seed,
    };
    let reporter = super::Progress::new(a.quiet);
    let sft = resolve_path(&a.sft)?;
    if a.dry_run {
        return dry_run(a, &sft, &prompts_path, &prompts, &o, max_memory, &points);
    }
    let (rows, samples) = evaluate_points(
        &points,
        &sft,
        &prompts_path,
        &prompts,
        &a.chat_template,
        reward.as_mut(),
        &o,
        a.device,
        max_memory,
        &reporter,
    )?;
    let table = EvalTable { rows };
    // Each prompt as its JSON record ({"prompt": …} or {"messages": …}), for the hash.
    let canonical: Vec<String> = prompts
        .iter()
        .map(|l| {
            let (field, v) = l.prompt.json_field();
            serde_json::json!({ field: v }).to_string()
        })
        .collect();
    let settings = crate::stats::EvalSettings {
        prompts: a.prompts.display().to_string(),
        prompts_sha256: crate::stats::EvalSettings::hash_prompts(&canonical),
        n_prompts: prompts.len(),
        samples: a.samples,
        temperature: a.temperature,
        max_new_tokens: a.max_new_tokens,
        seed: a.seed,
        reward: a.reward.clone(),
        sft: a.sft.display().to_string(),
        points: table.rows.len(),
    };
    // The CSV last: in a pipeline its existence marks the step complete.
    let (samples_csv, settings_json) = crate::stats::samples::sidecars(&a.output);
    samples.write_csv(&samples_csv)?;
    settings.write(&settings_json)?;
    crate::io::write_file_atomic(&a.output, table.to_csv().as_bytes())?;
    super::common::out_line(summary(&table).trim_end())
}

/// `--dry-run`: the memory plan and the batch it chose, on stdout; nothing is loaded.
#[cfg(feature = "rl")]
fn dry_run(
    a: &Args,
    sft: &std::path::Path,
    prompts_path: &std::path::Path,
    prompts: &[crate::rl::data::PromptLine],
    o: &crate::rl::eval::SampleOptions,
    max_memory: Option<u64>,
    points: &[crate::pipeline::Point],
) -> crate::Result<()> {
    let mut tok = crate::rl::tokenizer::Tokenizer::from_dir(sft)?;
    tok.set_chat_template(&a.chat_template)?;
    let device = crate::rl::tch_device(a.device)?;
    let plan = crate::rl::eval::eval_memory_plan(
        sft,
        &tok,
        prompts_path,
        prompts,
        o,
        device,
        max_memory,
        points,
    )?;
    super::common::out_line(&format!(
        "evaluation batch: {} sequences\n{}",
        plan.micro_batch,
        plan.table().trim_end()
    ))
}

/// The evaluation as a table for the terminal.
#[cfg(feature = "rl")]
fn summary(t: &crate::pipeline::EvalTable) -> String {
    let mut s = format!(
        "{:<12} {:>4} {:>4} {:>6} {:>5} {:>9} {:>9}  path\n",
        "kind", "iter", "run", "step", "eta", "KL", "reward"
    );
    let o2 = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for r in &t.rows {
        let p = &r.point;
        s += &format!(
            "{:<12} {:>4} {:>4} {:>6} {:>5} {:>9.4} {:>9.4}  {}\n",
            p.kind.as_str(),
            o2(p.iteration.map(|v| v.to_string())),
            o2(p.run.map(|v| v.to_string())),
            o2(p.step.map(|v| v.to_string())),
            o2(p.eta.map(|v| format!("{v:.2}"))),
            r.kl,
            r.reward,
            p.path.display()
        );
    }
    s
}
