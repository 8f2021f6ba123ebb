//! `warp`: the multi-command entry point (`warp push`, `warp download`, more to come).
//! A thin shell: parse arguments, call the library, print data on stdout and everything else
//! (progress, logs, the one-line error) on stderr, exit with `Error::exit_code()`.

#[path = "common.rs"]
mod common;

use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
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
    Eval(EvalArgs),
    Run(RunArgs),
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

/// Measure checkpoints on held-out prompts: mean reward of sampled completions and
/// KL(π ‖ π_SFT), estimated on the same samples (per-token KL over the vocabulary, summed over
/// the completion). Writes the CSV that `warp plot` draws and prints it as a table.
///
/// Every checkpoint sees the same prompts and the same random stream, so differences between
/// checkpoints are not blurred by sampling noise more than necessary. Needs the `rl` feature.
#[derive(clap::Args)]
struct EvalArgs {
    /// Checkpoint folders to evaluate (kind "model"); see also --run.
    checkpoints: Vec<PathBuf>,
    /// A `warp run` folder: evaluate all its checkpoints (trajectories, LITI grids, merges).
    #[arg(long, value_name = "DIR")]
    run: Option<PathBuf>,
    /// The SFT model: KL reference, tokenizer, and the first row.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/arith/model"))]
    sft: PathBuf,
    /// Held-out prompts (JSONL).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/arith/heldout.jsonl"))]
    prompts: PathBuf,
    /// Use the first N prompts only (0: all).
    #[arg(long, default_value_t = 0)]
    max_prompts: usize,
    #[arg(long, default_value = "verify:arith")]
    reward: String,
    /// Completions per prompt.
    #[arg(long, default_value_t = 2)]
    samples: usize,
    /// Sampling temperature of the evaluation (KL is between the tempered distributions).
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    #[arg(long, default_value_t = 8)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// libtorch threads (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
    /// Output CSV (replaced atomically).
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
}

/// Run the iterated WARP pipeline: per iteration, M RL runs with EMA anchors (warp-rl), their
/// SLERP with fused LITI over an η grid (warp-slerp) and LERP (warp-lerp); the LITI point at
/// `eta` is the next init. Then evaluate everything (warp eval), draw the front (warp plot) and
/// print it as a table.
///
/// With no CONFIG it runs the built-in task (fixtures/arith) on the CPU. Each step is a command
/// recorded in OUT/plan.json; complete steps are skipped and interrupted RL runs resumed, so
/// running it again continues. Keys of CONFIG.toml (all optional): model, prompts, heldout,
/// reward, output, iterations, runs, steps, mu, beta, eta, etas, seed, checkpoints, rl_args,
/// init_anchor_runs, jobs, devices, launcher, eval_samples, eval_prompts, threads.
#[derive(clap::Args)]
struct RunArgs {
    /// Pipeline settings (TOML).
    config: Option<PathBuf>,
    /// Output folder (overrides the config's `output`).
    #[arg(short, long)]
    output: Option<PathBuf>,
    #[arg(long)]
    iterations: Option<u32>,
    /// RL runs per iteration (M).
    #[arg(long)]
    runs: Option<u32>,
    /// RL steps per run (T).
    #[arg(long)]
    steps: Option<u64>,
    #[arg(long)]
    mu: Option<f64>,
    #[arg(long)]
    beta: Option<f64>,
    /// LITI η of the next iteration's init.
    #[arg(long)]
    eta: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Commands at once.
    #[arg(long)]
    jobs: Option<u32>,
    /// Where the steps run: local.
    #[arg(long)]
    launcher: Option<String>,
    /// Write plan.json and print the commands without running them.
    #[arg(long)]
    dry_run: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let reporter = common::Progress::new(cli.quiet);
    let result = match &cli.command {
        Command::Push(a) => push(a, &reporter),
        Command::Download(a) => download(a, &reporter),
        Command::Plot(a) => plot(a, &reporter),
        Command::Eval(a) => eval(a, &reporter),
        Command::Run(a) => run(a, &reporter),
    };
    reporter.finish();
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
    warp::io::write_file_atomic(
        &a.output,
        warp::plot::pareto_svg(&table, &a.title).as_bytes(),
    )?;
    print_line(&a.output.display().to_string())
}

/// Data on stdout; a closed pipe (`| head`) is not an error.
#[cfg(feature = "rl")]
fn eval(a: &EvalArgs, reporter: &dyn Reporter) -> Result<()> {
    use warp::rl::eval::{csv_row, evaluate_points, SampleOptions, CSV_HEADER};
    if let Some(t) = a.threads {
        tch::set_num_threads(t);
    }
    let mut points = match &a.run {
        Some(dir) => warp::pipeline::discover(dir)?,
        None => Vec::new(),
    };
    points.extend(a.checkpoints.iter().map(|p| warp::pipeline::Point {
        label: p.display().to_string(),
        kind: "model".into(),
        iteration: None,
        run: None,
        step: None,
        eta: None,
        path: p.clone(),
    }));
    if points.is_empty() {
        return Err(Error::Usage(
            "nothing to evaluate: give checkpoint folders or --run DIR".into(),
        ));
    }
    let mut prompts: Vec<String> = warp::rl::data::read_prompts(&a.prompts)?
        .into_iter()
        .map(|r| r.prompt)
        .collect();
    if a.max_prompts > 0 {
        prompts.truncate(a.max_prompts);
    }
    let mut reward = warp::rl::reward::from_spec(&a.reward)?;
    let o = SampleOptions {
        samples: a.samples,
        temperature: a.temperature,
        max_new_tokens: a.max_new_tokens,
        batch: 1024,
        seed: a.seed,
    };
    let rows = evaluate_points(&points, &a.sft, &prompts, reward.as_mut(), &o, reporter)?;
    let mut csv = format!("{CSV_HEADER}\n");
    let mut table = format!(
        "{:<12} {:>4} {:>4} {:>6} {:>5} {:>9} {:>9}  path\n",
        "kind", "iter", "run", "step", "eta", "KL", "reward"
    );
    let o2 = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for (p, r) in &rows {
        csv += &csv_row(p, r);
        csv.push('\n');
        table += &format!(
            "{:<12} {:>4} {:>4} {:>6} {:>5} {:>9.4} {:>9.4}  {}\n",
            p.kind,
            o2(p.iteration.map(|v| v.to_string())),
            o2(p.run.map(|v| v.to_string())),
            o2(p.step.map(|v| v.to_string())),
            o2(p.eta.map(|v| format!("{v:.2}"))),
            r.kl.map_or(f64::NAN, |k| k.0),
            r.reward,
            p.path.display()
        );
    }
    warp::io::write_file_atomic(&a.output, csv.as_bytes())?;
    print_line(table.trim_end())
}

#[cfg(not(feature = "rl"))]
fn eval(_: &EvalArgs, _: &dyn Reporter) -> Result<()> {
    Err(Error::Usage(
        "this warp was built without the `rl` feature (cargo build --release --features rl)".into(),
    ))
}

fn run(a: &RunArgs, reporter: &dyn Reporter) -> Result<()> {
    use warp::pipeline::{execute, plan, Local, PipelineConfig};
    let mut c = match &a.config {
        Some(p) => PipelineConfig::from_toml(p)?,
        None => PipelineConfig::default(),
    };
    macro_rules! over {
        ($($f:ident),*) => { $( if let Some(v) = &a.$f { c.$f = v.clone(); } )* };
    }
    over!(output, iterations, runs, steps, mu, beta, eta, seed, jobs, launcher);
    let exe = std::env::current_exe().map_err(|e| Error::io("<current executable>", e))?;
    let bin_dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if a.dry_run {
        c.check()?;
        let mut text = String::new();
        for st in plan(&c, &bin_dir) {
            text += &format!(
                "# {} (after: {})\n{}\n",
                st.id,
                st.after.join(", "),
                st.argv.join(" ")
            );
        }
        return print_line(text.trim_end());
    }
    if !cfg!(feature = "rl") {
        // The evaluation step runs this very binary (`warp eval`).
        return Err(Error::Usage(
            "this warp was built without the `rl` feature, which `warp run` needs \
             (cargo build --release --features rl)"
                .into(),
        ));
    }
    for name in ["warp-rl", "warp-slerp", "warp-lerp"] {
        if !bin_dir.join(name).is_file() {
            return Err(Error::Usage(format!(
                "{name} not found next to {} (build all binaries: cargo build --release --features rl)",
                exe.display()
            )));
        }
    }
    let launcher = Local {
        jobs: c.jobs as usize,
    };
    execute(&c, &bin_dir, &launcher, reporter)?;
    let csv = c.output.join("eval.csv");
    let table = warp::plot::EvalTable::from_csv(&csv)?;
    let mut text = format!(
        "KL–reward front ({}; plot: {})\n{:<10} {:>5} {:>9} {:>9}\n",
        csv.display(),
        c.output.join("front.svg").display(),
        "kind",
        "eta",
        "KL",
        "reward"
    );
    for p in &table.points {
        let k = p.kind.as_str();
        if matches!(k, "sft" | "liti" | "lerp") {
            let name = match (k, p.iteration) {
                ("sft", _) => "sft".to_string(),
                (_, Some(i)) => format!("{k} it{i}"),
                _ => k.to_string(),
            };
            text += &format!(
                "{:<10} {:>5} {:>9.4} {:>9.4}\n",
                name,
                p.eta
                    .map(|e| format!("{e:.2}"))
                    .unwrap_or_else(|| "-".into()),
                p.kl,
                p.reward
            );
        }
    }
    print_line(text.trim_end())
}

fn print_line(s: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{s}").and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::io("<stdout>", e)),
        _ => Ok(()),
    }
}
