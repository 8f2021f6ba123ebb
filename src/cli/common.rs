//! What several commands share: the options of every checkpoint-writing tool and of the
//! streaming engine, the merge runner, argument checks done before any work, stdout.

use std::path::{Path, PathBuf};

use super::progress::Progress;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::io::writer::parse_size;
use crate::io::OutDType;
use crate::progress::Reporter;

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

impl EngineArgs {
    pub fn init_threads(&self) -> Result<()> {
        if let Some(n) = self.threads {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global()
                .map_err(|e| Error::Internal(format!("thread pool of {n}: {e}")))?;
        }
        Ok(())
    }
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

/// The output folder `flag` names can be written: it does not exist (or `force`), and its parent
/// is a folder or can be created. Checked before any input is read.
pub fn check_new_dir(flag: &str, dir: &Path, force: bool) -> Result<()> {
    if dir.exists() && !force {
        return Err(Error::Usage(format!(
            "{flag} {}: exists (use --force to replace it)",
            dir.display()
        )));
    }
    check_parent(flag, dir)
}

/// The output file `flag` names can be written: its parent is an existing folder and it is not
/// a folder itself. Checked before any input is read.
pub fn check_new_file(flag: &str, file: &Path) -> Result<()> {
    if file.is_dir() {
        return Err(Error::Usage(format!(
            "{flag} {}: is a folder, not a file",
            file.display()
        )));
    }
    let parent = parent_of(file);
    if !parent.is_dir() {
        return Err(Error::Usage(format!(
            "{flag} {}: the folder {} does not exist",
            file.display(),
            parent.display()
        )));
    }
    Ok(())
}

fn parent_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The nearest existing ancestor of `path` must be a folder (so the parents can be created).
fn check_parent(flag: &str, path: &Path) -> Result<()> {
    let mut p = parent_of(path);
    loop {
        if p.exists() {
            return if p.is_dir() {
                Ok(())
            } else {
                Err(Error::Usage(format!(
                    "{flag} {}: {} is not a folder",
                    path.display(),
                    p.display()
                )))
            };
        }
        match p.parent() {
            Some(q) if !q.as_os_str().is_empty() => p = q.to_path_buf(),
            _ => return Ok(()),
        }
    }
}

/// Opens the inputs (local paths, `builtin:…` files, hub ids), their warnings on stderr.
pub(crate) fn open_inputs(
    inputs: Vec<(String, &str)>,
    progress: &Progress,
) -> Result<Vec<crate::engine::Input>> {
    let hub = crate::hub::HubOptions::from_env();
    let mut opened = Vec::with_capacity(inputs.len());
    // A LoRA adapter's base: the init, or else the one its config names.
    let init = inputs
        .iter()
        .find(|(_, role)| *role == "init")
        .map(|(s, _)| s.clone());
    for (spec, role) in inputs {
        let input = crate::engine::Input::open(spec, role, init.as_deref(), &hub, progress)?;
        for w in &input.ckpt.warnings {
            progress.message(&format!("warning: {w}"));
        }
        opened.push(input);
    }
    Ok(opened)
}

/// Opens the inputs (local paths, `builtin:…` files, hub ids), plans, and either prints the
/// plan (--dry-run) or runs the merge. Output paths go to stdout, one per line. Every output
/// path is checked before the first input byte is read.
pub fn run_merge(
    method: &dyn crate::merge::Method,
    inputs: Vec<(String, &str)>,
    out: &OutputArgs,
    eng: &EngineArgs,
    report: Option<&Path>,
) -> Result<()> {
    use crate::engine::{backend_for, run, MergeJob, Plan};
    if !eng.dry_run {
        check_new_dir("-o", &out.output, out.force)?;
        if let Some(r) = report {
            check_new_file("--report", r)?;
        }
    }
    eng.init_threads()?;
    let progress = Progress::new(eng.quiet);
    let opened = open_inputs(inputs, &progress)?;
    let paths: Vec<&Path> = opened.iter().map(|i| i.ckpt.path.as_path()).collect();
    crate::io::writer::check_destination(&out.output, &paths)?;
    if let Some(r) = report {
        crate::io::writer::check_destination(r, &paths)?;
    }
    let job = MergeJob {
        inputs: &opened,
        method,
        dest: out.output.clone(),
        out_dtype: out.dtype,
        max_shard_size: out.max_shard_size,
        force: out.force,
        budget: eng.memory_budget,
        allow_nonfinite: eng.allow_nonfinite,
    };
    let plan = Plan::new(&job)?;
    if eng.dry_run {
        let text = if eng.json {
            serde_json::to_string_pretty(&plan).map_err(|e| Error::Internal(e.to_string()))? + "\n"
        } else {
            plan.table()
        };
        return self::out(&text);
    }
    if !out.force {
        for o in &plan.outputs {
            if o.exists() {
                return Err(Error::Usage(format!(
                    "destination {} exists (use --force to replace it)",
                    o.display()
                )));
            }
        }
    }
    let backend = backend_for(eng.device)?;
    progress.message(&format!(
        "{}: {} input(s) → {} output(s), {} tensors, read {}, write {}, on {}",
        method.name(),
        opened.len(),
        plan.outputs.len(),
        plan.tensors.len(),
        crate::io::writer::human_bytes(plan.read_bytes),
        crate::io::writer::human_bytes(plan.write_bytes),
        backend.name()
    ));
    let started = std::time::Instant::now();
    let summary = run(&job, &plan, backend.as_ref(), &progress)?;
    let secs = started.elapsed().as_secs_f64();
    progress.message(&format!(
        "done in {secs:.1} s ({}/s read)",
        crate::io::writer::human_bytes((summary.bytes_read as f64 / secs.max(1e-9)) as u64)
    ));
    finish_merge(
        &summary.outputs,
        summary.report.as_ref(),
        out,
        eng,
        report,
        &progress,
    )
}

/// What every merge does once its outputs are in place: the report (stderr table, --report
/// file), the output paths on stdout, the hub push.
pub(crate) fn finish_merge(
    outputs: &[PathBuf],
    rep: Option<&serde_json::Value>,
    out: &OutputArgs,
    eng: &EngineArgs,
    report: Option<&Path>,
    progress: &Progress,
) -> Result<()> {
    if let Some(rep) = rep {
        if !eng.quiet {
            eprint!("{}", crate::merge::report::summary_table(rep));
        }
        if let Some(path) = report {
            let text =
                serde_json::to_string_pretty(rep).map_err(|e| Error::Internal(e.to_string()))?;
            crate::io::write_file_atomic(path, (text + "\n").as_bytes())?;
        }
    }
    let mut listing = String::new();
    for o in outputs {
        listing += &format!("{}\n", o.display());
    }
    // Several outputs are pushed as one repo with a sub-folder each (load with `subfolder=`).
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
