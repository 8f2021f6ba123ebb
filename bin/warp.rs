//! `warp`: the multi-command entry point (`warp push`, `warp download`, more to come).
//! A thin shell: parse arguments, call the library, print data on stdout and everything else
//! (progress, logs, the one-line error) on stderr, exit with `Error::exit_code()`.

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use warp::hub::{self, HubOptions, PushOptions};
use warp::progress::Reporter;
use warp::{Error, Result};

/// WARP checkpoint toolkit: merge, push and fetch Hugging Face safetensors checkpoints.
#[derive(Parser)]
#[command(name = "warp", version)]
struct Cli {
    /// No progress bars or log lines on stderr (errors are still printed).
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Push(PushArgs),
    Download(DownloadArgs),
    Plot(PlotArgs),
}

/// Upload a checkpoint folder to a Hugging Face hub model repo as one commit.
///
/// The repo is created if needed. LFS files the hub already stores and files that are unchanged
/// are not sent again, so re-running an interrupted push only sends what is missing. Prints the
/// commit URL on stdout. HF_ENDPOINT selects another hub.
#[derive(clap::Args)]
struct PushArgs {
    /// Folder to upload (every file in it, except .git/ and .cache/huggingface/).
    dir: PathBuf,
    /// Target model repo, org/name.
    repo: String,
    /// Create the repo private (an existing repo keeps its visibility).
    #[arg(long)]
    private: bool,
    /// Branch to commit to (created from main if missing).
    #[arg(long, default_value = "main")]
    revision: String,
    /// Commit message.
    #[arg(long, default_value = "Upload folder with warp")]
    commit_message: String,
    /// Hub token (default: HF_TOKEN, then the file at HF_TOKEN_PATH or $HF_HOME/token).
    #[arg(long)]
    token: Option<String>,
    /// Uploads in flight at once (parts of large files count one each).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    jobs: u32,
}

/// Download a hub checkpoint (org/name[@revision]) into the HF cache; prints its folder.
///
/// Fetches model.safetensors or the shard index and its shards, plus config and tokenizer files.
/// Honours HF_ENDPOINT, HF_HOME, HF_HUB_CACHE, HF_TOKEN and HF_HUB_OFFLINE=1 (cache only).
#[derive(clap::Args)]
struct DownloadArgs {
    /// org/name or org/name@revision (an existing local path is printed as is).
    checkpoint: String,
}

/// Draw the KL–reward Pareto front of an evaluation CSV (from `warp eval`) as an SVG.
///
/// LITI curves (one per WARP iteration, η at the markers), RL trajectories (policy solid, EMA
/// dashed, init-anchored dotted), SLERP (stars) and LERP (squares) merges and the SFT point, with
/// error bars where the CSV has standard errors. Rows with non-finite KL or reward are skipped
/// with a warning. The file is written whole or not at all; its path is printed on stdout.
#[derive(clap::Args)]
struct PlotArgs {
    /// Evaluation CSV: label,kind,iteration,run,step,eta,kl,kl_se,reward,reward_se,path.
    eval: PathBuf,
    /// Output SVG file (replaced if it exists).
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Title above the plot.
    #[arg(long, default_value = "KL–reward Pareto front")]
    title: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let reporter = BarReporter::new(cli.quiet);
    let result = match &cli.command {
        Command::Push(a) => push(a, &reporter),
        Command::Download(a) => download(a, &reporter),
        Command::Plot(a) => plot(a, &reporter),
    };
    reporter.clear();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warp: {e}");
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}

fn push(a: &PushArgs, reporter: &dyn Reporter) -> Result<()> {
    let mut opts = PushOptions::from_env();
    opts.private = a.private;
    opts.revision = a.revision.clone();
    opts.commit_message = a.commit_message.clone();
    if a.token.is_some() {
        opts.token = a.token.clone();
    }
    opts.parallelism = a.jobs as usize;
    let out = hub::push_folder(&a.dir, &a.repo, &opts, reporter)?;
    reporter.message(&format!(
        "{} file(s): {} unchanged, {} LFS object(s) sent ({} bytes), {} already stored",
        out.files, out.unchanged, out.lfs_uploaded, out.bytes_uploaded, out.lfs_already_stored
    ));
    print_line(&out.commit_url)
}

fn download(a: &DownloadArgs, reporter: &dyn Reporter) -> Result<()> {
    let path = hub::resolve_checkpoint(&a.checkpoint, &HubOptions::from_env(), reporter)?;
    print_line(&path.display().to_string())
}

fn plot(a: &PlotArgs, reporter: &dyn Reporter) -> Result<()> {
    let table = warp::plot::EvalTable::from_csv(&a.eval)?;
    let skipped = table.skipped();
    if skipped > 0 {
        reporter.message(&format!(
            "warning: {skipped} row(s) with a non-finite kl or reward not drawn"
        ));
    }
    warp::plot::write_atomic(&a.output, &warp::plot::pareto_svg(&table, &a.title))?;
    print_line(&a.output.display().to_string())
}

/// Data on stdout; a closed pipe (`| head`) is not an error.
fn print_line(s: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{s}").and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::io("<stdout>", e)),
        _ => Ok(()),
    }
}

/// Progress bars and log lines on stderr.
struct BarReporter {
    quiet: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl BarReporter {
    fn new(quiet: bool) -> Self {
        BarReporter {
            quiet,
            bar: Mutex::new(None),
        }
    }
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<ProgressBar>> {
        self.bar.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn clear(&self) {
        if let Some(b) = self.slot().take() {
            b.finish_and_clear();
        }
    }
}

impl Reporter for BarReporter {
    fn start(&self, label: &str, total_bytes: u64) {
        if self.quiet {
            return;
        }
        let bar = ProgressBar::with_draw_target(
            Some(total_bytes),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ({eta})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_string());
        if let Some(old) = self.slot().replace(bar) {
            old.finish_and_clear();
        }
    }
    fn advance(&self, bytes: u64) {
        if let Some(b) = self.slot().as_ref() {
            b.inc(bytes);
        }
    }
    fn finish(&self) {
        self.clear();
    }
    fn message(&self, msg: &str) {
        if self.quiet {
            return;
        }
        match self.slot().as_ref() {
            Some(b) => b.println(msg),
            None => eprintln!("{msg}"),
        }
    }
}
