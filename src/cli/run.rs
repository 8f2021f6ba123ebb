//! `warp run`: the iterated WARP pipeline.

use std::path::PathBuf;

use super::Ctx;
use crate::error::{Error, Result};
use crate::pipeline::{PipelineConfig, PointKind};

/// The iterated WARP pipeline: RL runs, SLERP + LITI, evaluation, the front; resumable.
///
/// Run the iterated WARP pipeline: per iteration, M RL runs with EMA anchors (warp rl), their
/// SLERP with fused LITI over an η grid (warp slerp) and LERP (warp lerp); the LITI point at
/// `eta` is the next iteration's init. Then evaluate everything (warp eval), draw the front (warp
/// plot) and print it as a table.
///
/// With no CONFIG it runs the built-in task on the CPU. Each step is a command of this program
/// recorded in OUT/plan.json (an RL step reads its settings from OUT/configs/STEP.json); complete
/// steps are skipped and interrupted RL runs resumed, so running it again continues. On SIGINT,
/// SIGTERM or SIGHUP the running steps are stopped (SIGTERM) and waited for. From iteration 2
/// on, each iteration's SLERP is also interpolated toward the SFT model (the paper's output
/// front, {(1 − η)·θ_sft + η·θ_slerp}). Settings come from the task, then the preset, then
/// CONFIG.toml, then the flags. Keys of CONFIG.toml (all optional): task, preset, model,
/// prompts, heldout, reward, output, iterations, runs, steps, mu, beta, eta, etas, seed,
/// checkpoints, rl (a table of other `warp rl` settings), rl_args, init_anchor_runs, jobs,
/// devices, launcher, trainer (warp or trl), eval_samples, eval_prompts, eval_temperature (default: the RL
/// temperature), threads.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Pipeline settings (TOML).
    config: Option<PathBuf>,
    /// The built-in task: arith (addition, verifiable reward; the default) or cipher (shift the
    /// letters of a word; a learned reward model rewards four shifts). Sets model, prompts,
    /// heldout, reward and the task's RL settings (overrides the config's `task`).
    #[arg(long, value_name = "NAME")]
    task: Option<String>,
    /// small (the default demo: 2 iterations of 2 RLOO runs of 100 steps, μ 0.05, η 0.5) or
    /// paper (REINFORCE without baseline, μ 0.01, η 0.3, 3 iterations of 400 steps; about an
    /// hour on 2 cores) (overrides the config's `preset`).
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
    /// Where the steps run: local.
    #[arg(long)]
    launcher: Option<String>,
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
    let mut c = crate::pipeline::presets::layered(
        a.task.as_deref(),
        a.preset.as_deref(),
        a.config.as_deref(),
    )?;
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
    let launcher = crate::pipeline::Local {
        jobs: c.jobs as usize,
    };
    crate::pipeline::execute(&c, &exe, &launcher, &reporter)?;
    super::common::out_line(front(&c)?.trim_end())
}

fn dry_run(c: &PipelineConfig, exe: &std::path::Path) -> Result<()> {
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
