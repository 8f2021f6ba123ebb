//! What several commands share: the options of every checkpoint-writing tool and of the
//! streaming engine, the merge runner (over the library's [`crate::engine::job`]), argument
//! checks done before any work, stdout.

use std::path::{Path, PathBuf};

use super::progress::Progress;
use crate::device::Device;
use crate::engine::job;
use crate::error::{Error, Result};
use crate::io::writer::parse_size;
use crate::io::OutDType;

/// Options of every tool that writes a checkpoint.
#[derive(clap::Args, Debug)]
pub struct OutputArgs {
    /// Output folder (created; must not exist unless --force). With several outputs (e.g. several
    /// --eta), one sub-folder per output is created inside it.
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
    /// Replace an existing output folder. The old one is swapped out only at the very end, after
    /// everything new is written and fsynced.
    #[arg(long)]
    pub force: bool,
    /// Dtype of floating-point output tensors: bf16, f16, f32, f64 or same (each tensor keeps
    /// the dtype it has in the init/base model). Integer and bool tensors never change.
    #[arg(long, default_value = "same", value_parser = parse_dtype)]
    pub dtype: OutDType,
    /// Largest shard file, e.g. 5GB (decimal units, the HF default), 2GiB (binary), 500MB. A single
    /// tensor larger than this gets a shard of its own.
    #[arg(long, default_value = "5GB", value_parser = parse_size, value_name = "SIZE")]
    pub max_shard_size: u64,
    #[command(flatten)]
    pub hub: super::hub_args::PushToHubArgs,
}

/// Options of the streaming engine.
#[derive(clap::Args, Debug)]
pub struct EngineArgs {
    /// Working-memory budget for chunk buffers and mapped input pages (e.g. 1GiB, 256MiB). Peak
    /// memory stays near this whatever the model size; larger budgets mean fewer, larger chunks.
    #[arg(long, default_value = "1GiB", value_parser = parse_size, value_name = "SIZE")]
    pub memory_budget: u64,
    /// Compute device: auto (a GPU when this build has CUDA and one is found, else the CPU),
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value_t = Device::Auto)]
    pub device: Device,
    /// Number of CPU threads (default: all cores; at most 4 × the cores available).
    #[arg(long, value_name = "N", value_parser = parse_threads)]
    pub threads: Option<usize>,
    /// Print the plan (tensors, bytes to read and write, estimated peak memory) and exit without
    /// writing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: print the plan as JSON on stdout.
    #[arg(long, requires = "dry_run")]
    pub json: bool,
    /// Merge even when an input holds NaN or Inf (by default that is an error naming the tensor).
    #[arg(long)]
    pub allow_nonfinite: bool,
    /// No progress bar and no log lines on stderr (errors are still printed).
    #[arg(short, long)]
    pub quiet: bool,
}

fn parse_dtype(s: &str) -> std::result::Result<OutDType, String> {
    s.parse()
}

/// `--threads`: 1 to [`crate::device::max_threads`].
pub fn parse_threads(s: &str) -> std::result::Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number"))?;
    let max = crate::device::max_threads();
    if n == 0 || n > max {
        return Err(format!(
            "must be between 1 and {max} (4 × the {} core(s) available), got {n}",
            max / 4
        ));
    }
    Ok(n)
}

/// `--name` (or `<NAME>` for a positional) of an argument, for messages.
pub fn flag_display(a: &clap::Arg) -> String {
    match (a.get_long(), a.get_short()) {
        (Some(l), _) => format!("--{l}"),
        (None, Some(s)) => format!("-{s}"),
        _ => {
            let name = a
                .get_value_names()
                .and_then(|v| v.first().map(|n| n.to_string()))
                .unwrap_or_else(|| a.get_id().to_string().to_uppercase());
            format!("<{name}>")
        }
    }
}

/// Writes data to stdout; a closed pipe ends quietly (see `main`).
pub fn out(text: &str) -> Result<()> {
    use std::io::Write;
    let mut so = std::io::stdout().lock();
    so.write_all(text.as_bytes())
        .and_then(|_| so.flush())
        .map_err(|e| Error::io("<stdout>", e))
}

/// `text` and a newline on stdout.
pub fn out_line(text: &str) -> Result<()> {
    out(&format!("{text}\n"))
}

/// The merge options' flags, for the library's messages.
pub const NAMES: job::Names = job::Names {
    out: "-o",
    report: "--report",
    device: "--device",
    force: "--force",
    sep: " ",
    quote: "",
};

/// The output folder `flag` names can be written: it does not exist (or `force`), and its parent
/// is a folder or can be created. Checked before any input is read.
pub fn check_new_dir(flag: &str, dir: &Path, force: bool) -> Result<()> {
    job::check_new_dir(&NAMES, flag, dir, force)
}

/// The output file `flag` names can be written: its parent is an existing folder and it is not
/// a folder itself. Checked before any input is read.
pub fn check_new_file(flag: &str, file: &Path) -> Result<()> {
    job::check_new_file(&NAMES, flag, file)
}

/// The library's merge options from the flags.
pub fn options(out: &OutputArgs, eng: &EngineArgs, report: Option<&Path>) -> job::Options {
    job::Options {
        out: out.output.clone(),
        force: out.force,
        dtype: out.dtype,
        max_shard_size: out.max_shard_size,
        memory_budget: eng.memory_budget,
        device: eng.device,
        threads: eng.threads,
        allow_nonfinite: eng.allow_nonfinite,
        dry_run: eng.dry_run,
        report: report.map(Path::to_path_buf),
        names: &NAMES,
    }
}

/// Runs a merge as the library does it ([`job::merge`]: checks, inputs, plan, engine, report
/// file), then [`finish`]es it.
pub fn run_merge(
    method: &dyn crate::merge::Method,
    inputs: Vec<(String, &str)>,
    out: &OutputArgs,
    eng: &EngineArgs,
    report: Option<&Path>,
) -> Result<()> {
    let progress = Progress::new(eng.quiet);
    let outcome = job::merge(method, inputs, &options(out, eng, report), &progress)?;
    finish(outcome, out, eng, &progress)
}

/// A dry run's plan on stdout (a table, or JSON with --json); else the output folders, one per
/// line, after the hub upload (several outputs are pushed as one repo with a sub-folder each:
/// load with `subfolder=`) and its commit URL.
pub fn finish(
    outcome: job::Outcome,
    out: &OutputArgs,
    eng: &EngineArgs,
    progress: &Progress,
) -> Result<()> {
    let summary = match outcome {
        job::Outcome::Planned { table, json } => {
            let text = if eng.json {
                serde_json::to_string_pretty(&json).map_err(|e| Error::Internal(e.to_string()))?
                    + "\n"
            } else {
                table
            };
            return self::out(&text);
        }
        job::Outcome::Done(summary) => summary,
    };
    let mut listing = String::new();
    for o in &summary.outputs {
        listing += &format!("{}\n", o.display());
    }
    if let Some(pushed) = super::hub_args::push_if_requested(&out.output, &out.hub, progress)? {
        listing += &format!("{}\n", pushed.commit_url);
    }
    self::out(&listing)
}

/// `Err` saying that `what` needs the `rl` feature, in a build without it.
#[cfg(not(feature = "rl"))]
pub fn needs_rl(what: &str) -> Error {
    Error::feature("rl", what)
}
