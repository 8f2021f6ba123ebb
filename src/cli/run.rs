//! `warp run`: the iterated WARP pipeline.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::Ctx;
use crate::error::{Error, Result};
use crate::pipeline::{PipelineConfig, PointKind};
use crate::progress::Reporter;

/// The iterated WARP pipeline: RL runs, SLERP + LITI, evaluation, the front; resumable.
///
/// Run the iterated WARP pipeline: per iteration, M RL runs with EMA anchors (warp rl), their
/// SLERP with fused LITI over an η grid (warp slerp) and LERP (warp lerp); the LITI point at
/// `eta` is the next iteration's init. Then evaluate everything (warp eval), draw the front (warp
/// plot) and print it as a table.
///
/// With no CONFIG it runs the built-in task on the CPU. Each step is a command of this program
/// recorded in OUT/plan.json (an RL step reads its settings from OUT/configs/STEP.json); complete
/// steps are skipped and interrupted RL runs resumed, so running it again (`warp run OUT`)
/// continues. On SIGINT, SIGTERM or SIGHUP the running steps are stopped (SIGTERM) and waited
/// for. From iteration 2 on, each iteration's SLERP is also interpolated toward the SFT model
/// (the paper's output front, {(1 − η)·θ_sft + η·θ_slerp}). Settings come from the task, then
/// the preset, then CONFIG.toml, then the flags. Keys of CONFIG.toml (all optional): task,
/// preset, model, prompts, heldout, reward, output, iterations, runs, steps, mu, beta, eta,
/// etas, seed, checkpoints, rl (a table of other `warp rl` settings), rl_args,
/// init_anchor_runs, jobs, devices, launcher, slurm (a table: resources of the Slurm jobs),
/// trainer (warp or trl), eval_samples, eval_prompts, eval_temperature (default: the RL
/// temperature), threads, merge_dtype (sft, bf16, f16 or f32: the dtype of the merged
/// checkpoints).
///
/// With `--launcher slurm` every step becomes a Slurm batch job (the RL runs of an iteration one
/// job array, each step waiting for its predecessors with afterok): it submits the steps that
/// are neither complete nor queued, prints them and returns; `--wait` follows the jobs to the
/// end instead (Ctrl-C cancels them). `warp status OUT` shows where each step stands, `warp
/// cancel OUT` cancels the jobs.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Pipeline settings (TOML), or a run folder to continue with the settings of its plan.json.
    config: Option<PathBuf>,
    /// The built-in task (default arith). Sets model, prompts, heldout, reward and the task's RL
    /// settings (overrides the config's `task`).
    #[arg(long, value_name = "NAME", value_parser = task_names())]
    task: Option<String>,
    /// small (the default demo: 2 iterations of 2 RLOO runs of 100 steps, μ 0.05, η 0.5) or
    /// paper (REINFORCE without baseline, μ 0.01, η 0.3, 3 iterations of 400 steps; 15–25
    /// minutes on 2 shared cores) (overrides the config's `preset`).
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,
    /// Output folder (overrides the config's `output`).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// WARP iterations I.
    #[arg(long)]
    iterations: Option<u32>,
    /// RL runs per iteration (M).
    #[arg(long)]
    runs: Option<u32>,
    /// RL steps per run (T).
    #[arg(long)]
    steps: Option<u64>,
    /// EMA rate μ of every RL run.
    #[arg(long)]
    mu: Option<f64>,
    /// KL coefficient β of every RL run.
    #[arg(long)]
    beta: Option<f64>,
    /// LITI η of the next iteration's init.
    #[arg(long)]
    eta: Option<f64>,
    /// Seed of run m of iteration i: seed + 100·(i − 1) + m.
    #[arg(long)]
    seed: Option<u64>,
    /// Commands at once.
    #[arg(long)]
    jobs: Option<u32>,
    /// Where the steps run: local (child processes of this one) or slurm (batch jobs).
    #[arg(long)]
    launcher: Option<String>,
    /// Slurm launcher: follow the jobs until the pipeline is complete (as the local launcher
    /// always does), then print the front. Ctrl-C cancels the jobs.
    #[arg(long)]
    wait: bool,
    /// Print each step's command (and an RL step's settings) without writing or running
    /// anything.
    #[arg(long)]
    dry_run: bool,
    /// No progress on stderr.
    #[arg(short, long)]
    quiet: bool,
}

/// The task's and preset's settings, the config file's over them, the flags over those.
fn settings(a: &Args) -> Result<PipelineConfig> {
    let mut c = match &a.config {
        // A run folder: its recorded settings (task and preset already applied), and the folder
        // where it now is.
        Some(p) if p.is_dir() => PipelineConfig {
            output: p.clone(),
            ..crate::pipeline::read_plan(p)?.config
        },
        _ => crate::pipeline::presets::layered(
            a.task.as_deref(),
            a.preset.as_deref(),
            a.config.as_deref(),
        )?,
    };
    macro_rules! over {
        ($($f:ident),*) => { $( if let Some(v) = &a.$f { c.$f = v.clone(); } )* };
    }
    over!(output, iterations, runs, steps, mu, beta, eta, seed, jobs, launcher);
    c.check()?;
    Ok(c)
}

pub fn run(a: &Args, _: &Ctx) -> Result<()> {
    let c = settings(a)?;
    // The steps run this very executable (`warp rl …`, `warp slerp …`).
    let exe = std::env::current_exe().map_err(|e| Error::io("<current executable>", e))?;
    if a.dry_run {
        return dry_run(&c, &exe);
    }
    if !cfg!(feature = "rl") {
        return Err(Error::feature("rl", "warp run"));
    }
    let reporter = super::Progress::new(a.quiet);
    // One `warp run` per run folder, for its whole life (a second one is told who holds it).
    let lock = crate::io::lock::RunLock::acquire(&c.output)?;
    let r = if c.launcher == "slurm" {
        slurm(&c, &exe, a.wait, &reporter)
    } else {
        let launcher = crate::pipeline::Local {
            jobs: c.jobs as usize,
        };
        crate::pipeline::execute(&c, &exe, &launcher, &reporter)
            .and_then(|_| super::common::out_line(front(&c)?.trim_end()))
    };
    if r.is_err() {
        // A folder made only for the lock goes again.
        lock.abandon();
    }
    r
}

/// Submits the steps to Slurm; then follows them (`--wait`) or lists what was submitted.
fn slurm(c: &PipelineConfig, exe: &Path, wait: bool, reporter: &dyn Reporter) -> Result<()> {
    let s = crate::pipeline::submit(c, exe, reporter)?;
    let (sub, out) = (&s.submission, s.config.layout().root().to_path_buf());
    let logs: HashMap<&str, &Path> = s
        .steps
        .iter()
        .map(|st| (st.id.as_str(), st.log.as_path()))
        .collect();
    if wait {
        for (id, job) in &sub.submitted {
            reporter.message(&format!(
                "submitted {id}  (job {job}; log: {})",
                logs[id.as_str()].display()
            ));
        }
        s.slurm.wait(&s.steps, reporter)?;
        return super::common::out_line(front(&s.config)?.trim_end());
    }
    if sub.submitted.is_empty() && sub.queued.is_empty() {
        // Nothing left to do.
        return super::common::out_line(front(&s.config)?.trim_end());
    }
    let mut text = format!(
        "{} step(s) submitted, {} still queued, {} complete (run folder {})\n",
        sub.submitted.len(),
        sub.queued.len(),
        sub.done.len(),
        out.display()
    );
    for (id, job) in &sub.submitted {
        text += &format!(
            "{id:<20} job {job:<12} log {}\n",
            logs[id.as_str()].display()
        );
    }
    super::common::out_line(text.trim_end())?;
    let dir = out.display();
    reporter.message(&format!(
        "follow with `warp status {dir}` (or run again with --wait); stop with `warp cancel {dir}`"
    ));
    Ok(())
}

fn dry_run(c: &PipelineConfig, exe: &std::path::Path) -> Result<()> {
    let c = &c.with_sft_dtype(&crate::progress::Silent)?;
    let p = crate::pipeline::plan(c, exe)?;
    let mut text = String::new();
    for st in &p.steps {
        text += &format!("# {} (after: {})\n", st.id, st.after.join(", "));
        if let Some((path, cfg)) = p
            .rl_configs
            .iter()
            .find(|(f, _)| Some(f) == st.config.as_ref())
        {
            let json = serde_json::to_string(cfg).map_err(|e| Error::Internal(e.to_string()))?;
            text += &format!("# {}: {json}\n", path.display());
        }
        text += &st.argv.join(" ");
        text.push('\n');
    }
    super::common::out_line(text.trim_end())
}

/// The front (SFT, LITI and LERP points) of the run's evaluation as a table.
fn front(c: &PipelineConfig) -> Result<String> {
    let layout = c.layout();
    let csv = layout.eval_csv();
    let table = crate::pipeline::EvalTable::from_csv(&csv)?;
    let mut text = format!(
        "KL–reward front ({}; plot: {})\n{:<10} {:>5} {:>9} {:>9}\n",
        csv.display(),
        layout.front_svg().display(),
        "kind",
        "eta",
        "KL",
        "reward"
    );
    for r in &table.rows {
        let p = &r.point;
        let name = match (p.kind, p.iteration) {
            (PointKind::Sft, _) => "sft".to_string(),
            (PointKind::Liti | PointKind::Lerp | PointKind::Front, Some(i)) => {
                format!("{} it{i}", p.kind)
            }
            (PointKind::Liti | PointKind::Lerp | PointKind::Front, None) => p.kind.to_string(),
            _ => continue,
        };
        text += &format!(
            "{:<10} {:>5} {:>9.4} {:>9.4}\n",
            name,
            p.eta.map_or_else(|| "-".into(), |e| format!("{e:.2}")),
            r.kl,
            r.reward
        );
    }
    Ok(text)
}

/// `--task`'s values: the built-in tasks of [`crate::tasks`], each with its line.
fn task_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(
        crate::tasks::TASKS
            .iter()
            .map(|t| clap::builder::PossibleValue::new(t.name).help(t.about)),
    )
}
