//! Shared by the binaries: progress on stderr (indicatif), exit codes, signal handling and the
//! options every checkpoint-writing tool has. Included with `#[path]` so the library stays free
//! of terminal concerns.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use warp::io::writer::parse_size;
use warp::io::OutDType;
use warp::progress::Reporter;

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
    pub hub: warp::hub::PushToHubArgs,
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
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: warp::engine::Device,
    /// Number of CPU threads (default: all cores).
    #[arg(long, value_name = "N")]
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

fn parse_dtype(s: &str) -> Result<OutDType, String> {
    s.parse()
}

fn parse_device(s: &str) -> Result<warp::engine::Device, String> {
    s.parse()
}

impl EngineArgs {
    pub fn init_threads(&self) -> warp::Result<()> {
        if let Some(n) = self.threads {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n.max(1))
                .build_global()
                .map_err(|e| warp::Error::Usage(format!("--threads {n}: {e}")))?;
        }
        Ok(())
    }
}

/// Progress on stderr: a bar with bytes/s and ETA per phase; log lines above it.
pub struct Progress {
    quiet: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        Progress {
            quiet,
            bar: Mutex::new(None),
        }
    }
}

impl Reporter for Progress {
    fn start(&self, label: &str, total: u64) {
        if self.quiet {
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        if let Ok(mut b) = self.bar.lock() {
            *b = Some(bar);
        }
    }
    fn start_steps(&self, label: &str, total: u64) {
        if self.quiet {
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>6} [{bar:30}] {pos}/{len} {per_sec} ETA {eta} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        if let Ok(mut b) = self.bar.lock() {
            *b = Some(bar);
        }
    }
    fn status(&self, msg: &str) {
        if let Ok(b) = self.bar.lock() {
            if let Some(bar) = b.as_ref() {
                bar.set_message(msg.to_string());
            }
        }
    }
    fn advance(&self, bytes: u64) {
        if let Ok(b) = self.bar.lock() {
            if let Some(bar) = b.as_ref() {
                bar.inc(bytes);
            }
        }
    }
    fn finish(&self) {
        if let Ok(mut b) = self.bar.lock() {
            if let Some(bar) = b.take() {
                bar.finish_and_clear();
            }
        }
    }
    fn message(&self, msg: &str) {
        if self.quiet {
            return;
        }
        match self.bar.lock().ok().and_then(|b| b.clone()) {
            // A bar drawn on a terminal prints the line above itself; on a pipe or file the bar
            // is hidden and would drop the line.
            Some(bar) if !bar.is_hidden() => bar.println(msg),
            _ => eprintln!("{msg}"),
        }
    }
}

/// Runs a binary's body: installs the Ctrl-C handler, makes a full disk (or a file-size limit)
/// an error instead of a signal, prints errors as one line and maps them to exit codes.
pub fn main_with(name: &str, body: impl FnOnce() -> warp::Result<()>) -> ExitCode {
    let _ = ctrlc::set_handler(warp::cancel::request);
    // SAFETY: setting a signal disposition to SIG_IGN at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    match body() {
        Ok(()) => ExitCode::SUCCESS,
        // A closed stdout (e.g. `| head`) is not a failure.
        Err(warp::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{name}: error: {e}");
            ExitCode::from(e.exit_code().clamp(1, 255) as u8)
        }
    }
}

/// Writes data to stdout; a closed pipe ends quietly.
pub fn out(text: &str) -> warp::Result<()> {
    use std::io::Write;
    let mut so = std::io::stdout().lock();
    so.write_all(text.as_bytes())
        .and_then(|_| so.flush())
        .map_err(|e| warp::Error::io("<stdout>", e))
}

/// Opens the inputs (local paths; hub ids once the hub layer resolves them), plans, and either
/// prints the plan (--dry-run) or runs the merge. Output paths go to stdout, one per line.
pub fn run_merge(
    method: &dyn warp::merge::Method,
    inputs: Vec<(String, &str)>,
    out: &OutputArgs,
    eng: &EngineArgs,
    report: Option<&std::path::Path>,
) -> warp::Result<()> {
    use warp::engine::{backend_for, run, Input, MergeJob, Plan};
    eng.init_threads()?;
    let progress = Progress::new(eng.quiet);
    let mut opened = Vec::with_capacity(inputs.len());
    for (spec, role) in inputs {
        let ckpt =
            warp::hub::open_checkpoint(&spec, &warp::hub::HubOptions::from_env(), &progress)?;
        for w in &ckpt.warnings {
            progress.message(&format!("warning: {w}"));
        }
        opened.push(Input {
            spec,
            role: role.to_string(),
            ckpt,
        });
    }
    let paths: Vec<&std::path::Path> = opened.iter().map(|i| i.ckpt.path.as_path()).collect();
    warp::io::writer::check_destination(&out.output, &paths)?;
    if let Some(r) = report {
        warp::io::writer::check_destination(r, &paths)?;
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
            serde_json::to_string_pretty(&plan).map_err(|e| warp::Error::Usage(e.to_string()))?
                + "\n"
        } else {
            plan.table()
        };
        return self::out(&text);
    }
    if !out.force {
        for o in &plan.outputs {
            if o.exists() {
                return Err(warp::Error::Usage(format!(
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
        warp::io::writer::human_bytes(plan.read_bytes),
        warp::io::writer::human_bytes(plan.write_bytes),
        backend.name()
    ));
    let started = std::time::Instant::now();
    let summary = run(&job, &plan, backend.as_ref(), &progress)?;
    let secs = started.elapsed().as_secs_f64();
    progress.message(&format!(
        "done in {secs:.1} s ({}/s read)",
        warp::io::writer::human_bytes((summary.bytes_read as f64 / secs.max(1e-9)) as u64)
    ));
    if let Some(rep) = &summary.report {
        if !eng.quiet {
            eprint!("{}", warp::merge::report::summary_table(rep));
        }
        if let Some(path) = report {
            let text =
                serde_json::to_string_pretty(rep).map_err(|e| warp::Error::Usage(e.to_string()))?;
            std::fs::write(path, text + "\n").map_err(|e| warp::Error::io(path, e))?;
        }
    }
    let mut listing = String::new();
    for o in &summary.outputs {
        listing += &format!("{}\n", o.display());
    }
    // Several outputs are pushed as one repo with a sub-folder each (load with `subfolder=`).
    if let Some(pushed) = warp::hub::push_if_requested(&out.output, &out.hub, &progress)? {
        listing += &format!("{}\n", pushed.commit_url);
    }
    self::out(&listing)
}
