//! `warp rl` (alias `warp-rl`): RL fine-tuning with an EMA anchor (WARP stage 1).

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::ArgMatches;

use super::common::parse_threads;
use super::Ctx;
use crate::error::{Error, Result};
use crate::rl::settings::{given, RlConfig, TrainDtype};

/// RL fine-tuning with an EMA anchor (WARP stage 1); resumable.
///
/// RL fine-tuning of a Llama-family policy with a KL penalty towards its own exponential moving
/// average (WARP stage 1), or towards the frozen init (--anchor init).
///
/// Writes OUT/run.json (settings), OUT/metrics.jsonl (one line per step), resumable checkpoints
/// OUT/step-NNNNNN/{policy,ema,trainer}/ and OUT/final/{policy,ema}/ in HF layout. With no
/// MODEL it trains the built-in SFT model on the built-in addition task with the verifiable
/// reward. The paper's settings (Gemma 7B) are β 0.1, μ 0.01, temperature 0.9, Adam lr 1e-6
/// with 100 warm-up steps, batch 128, T 9k; the defaults here suit the built-in task (see
/// docs/RL.md). On SIGINT, SIGTERM or SIGHUP it stops at the end of the current step; the run
/// continues from its last checkpoint with --resume.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    config: RlConfig,
    /// Run folder (must not exist, or be empty).
    #[arg(short, long, value_name = "DIR", required_unless_present_any = ["resume", "print_schema"])]
    output: Option<PathBuf>,
    /// Continue the run in DIR from its last complete checkpoint, with its recorded settings
    /// (only --steps, --threads and --quiet may be given with it).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["output", "config_file"])]
    resume: Option<PathBuf>,
    /// Read the settings from FILE (JSON, or TOML if it ends in .toml; the keys are the long
    /// flags' names with `_`, e.g. max_new_tokens). Flags given as well override its values.
    #[arg(long = "config", value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// Same as --dtype bf16.
    #[arg(long, conflicts_with = "dtype")]
    bf16: bool,
    /// Print the memory plan (weights, master copy, gradients, Adam, EMA, init, reward model, KV
    /// cache, activations per micro-batch, estimated peak) and exit without loading any weights.
    #[arg(long, conflicts_with = "resume")]
    dry_run: bool,
    /// libtorch intra-op threads (default: libtorch's choice).
    #[arg(long, value_name = "N", value_parser = parse_threads)]
    threads: Option<usize>,
    /// No progress on stderr.
    #[arg(long, short)]
    quiet: bool,
    /// Print the settings' schema as JSON (name, type, default, allowed values and help of each
    /// setting) and exit: the Python side (the TRL backend, the warp_align package) reads it.
    #[arg(long, exclusive = true)]
    print_schema: bool,
}

/// `--print-schema`.
fn print_schema() -> Result<()> {
    let v = crate::rl::schema::rl_schema();
    let text = serde_json::to_string_pretty(&v).map_err(|e| Error::Internal(e.to_string()))?;
    super::common::out_line(&text)
}

/// The settings of a new run: the config file (if any), then the flags given on the command
/// line over it.
fn settings(a: &Args, m: &ArgMatches) -> Result<RlConfig> {
    let mut cfg = match &a.config_file {
        None => a.config.clone(),
        Some(file) => {
            RlConfig::from_file(file)?.layered(&Default::default(), &a.config, m, file)?
        }
    };
    if a.bf16 {
        cfg.dtype = TrainDtype::Bf16;
    }
    Ok(cfg)
}

/// With --resume the run's recorded settings hold: flags that would silently not apply are
/// refused.
fn check_resume_flags(m: &ArgMatches) -> Result<()> {
    let cmd = <Args as clap::Args>::augment_args(clap::Command::new("rl"));
    let fixed: Vec<String> = given(m)
        .into_iter()
        .filter(|id| !["resume", "steps", "threads", "quiet"].contains(&id.as_str()))
        .filter_map(|id| {
            cmd.get_arguments()
                .find(|a| a.get_id() == id.as_str())
                .map(super::common::flag_display)
        })
        .collect();
    if fixed.is_empty() {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "--resume continues with the run's recorded settings; these cannot be changed: {}",
            fixed.join(", ")
        )))
    }
}

/// The run folder of a new run: given, and missing or empty.
fn new_run_folder(a: &Args) -> Result<PathBuf> {
    let Some(out) = a.output.clone() else {
        return Err(Error::Usage("give the run folder: -o DIR".into()));
    };
    // A lock file left by a run that never started does not make the folder used.
    let lock = crate::io::lock::RUN_LOCK_FILE;
    if out.exists()
        && std::fs::read_dir(&out).map_or(true, |d| {
            d.flatten().any(|e| e.file_name().to_str() != Some(lock))
        })
    {
        return Err(Error::Usage(format!(
            "-o {}: exists and is not empty (continue the run in it with --resume {0})",
            out.display()
        )));
    }
    Ok(out)
}

/// The trl backend, when the settings (or the run being resumed) ask for it: TRL trains under
/// `accelerate launch` (no libtorch in this process, so it works in any build). `None` when the
/// run is warp's own. The entry point prints the final folder on stdout.
fn run_trl(a: &Args, ctx: &Ctx) -> Result<Option<()>> {
    use crate::device::Device;
    use crate::rl::settings::Trainer;
    use crate::rl::trl;
    let launch = |cfg: &RlConfig| trl::Launch {
        accelerate_config: cfg.accelerate_config.clone(),
        cpu: cfg.device == Device::Cpu,
        threads: a.threads,
        quiet: a.quiet,
        // Read by the entry point from the settings themselves.
        trl_args: None,
    };
    match &a.resume {
        Some(dir) => {
            let run_json = dir.join("run.json");
            // Anything unreadable is reported by warp's own resume.
            let Some(v) = std::fs::read_to_string(&run_json)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            else {
                return Ok(None);
            };
            if v.get("backend").and_then(|b| b.as_str()) != Some("trl") {
                return Ok(None);
            }
            check_resume_flags(ctx.matches)?;
            let cfg: RlConfig = serde_json::from_value(v["config"].clone())
                .map_err(|e| Error::format(&run_json, format!("field 'config': {e}")))?;
            let steps_given = ctx.matches.value_source("steps") == Some(ValueSource::CommandLine);
            // Held while TRL trains in the folder.
            let _lock = crate::io::lock::RunLock::acquire(dir)?;
            trl::resume(dir, steps_given.then_some(a.config.steps), &launch(&cfg))?;
        }
        None => {
            let mut cfg = settings(a, ctx.matches)?;
            if cfg.backend != Trainer::Trl {
                return Ok(None);
            }
            cfg.check()?;
            let out = new_run_folder(a)?;
            // The Python side gets real paths for the built-in task's files.
            cfg.model = crate::builtin::resolve_spec(&cfg.model)?;
            cfg.prompts = crate::builtin::resolve_path(&cfg.prompts)?;
            let lock = crate::io::lock::RunLock::acquire(&out)?;
            if let Err(e) = trl::train(&cfg.to_json(), &out, &launch(&cfg)) {
                lock.abandon();
                return Err(e);
            }
        }
    }
    Ok(Some(()))
}

#[cfg(not(feature = "rl"))]
pub fn run(a: &Args, ctx: &Ctx) -> Result<()> {
    if a.print_schema {
        return print_schema();
    }
    if run_trl(a, ctx)?.is_some() {
        return Ok(());
    }
    // The arguments are still checked, so a bad command line says so first.
    if a.resume.is_some() {
        check_resume_flags(ctx.matches)?;
    } else {
        settings(a, ctx.matches)?.check()?;
    }
    Err(super::common::needs_rl("warp rl"))
}

#[cfg(feature = "rl")]
pub fn run(a: &Args, ctx: &Ctx) -> Result<()> {
    use crate::progress::Reporter;
    use crate::rl::trainer::Trainer;
    if a.print_schema {
        return print_schema();
    }
    if run_trl(a, ctx)?.is_some() {
        return Ok(());
    }
    let progress = super::Progress::new(a.quiet);
    let (mut trainer, dir) = match &a.resume {
        Some(dir) => {
            check_resume_flags(ctx.matches)?;
            let steps_given = ctx.matches.value_source("steps") == Some(ValueSource::CommandLine);
            if let Some(t) = a.threads {
                tch::set_num_threads(t as i32);
            }
            let steps = steps_given.then_some(a.config.steps);
            (Trainer::resume(dir, steps, &progress)?, dir.clone())
        }
        None => {
            let cfg = settings(a, ctx.matches)?;
            cfg.check()?;
            if a.dry_run {
                let plan = crate::rl::memory::for_run(&cfg, &progress)?;
                return super::common::out_line(plan.report().trim_end());
            }
            let out = new_run_folder(a)?;
            if let Some(t) = a.threads {
                tch::set_num_threads(t as i32);
            }
            (Trainer::new(cfg, &out, &progress)?, out)
        }
    };
    match trainer.run(&progress) {
        Ok(fin) => super::common::out_line(&fin.display().to_string()),
        Err(Error::Interrupted) => {
            progress.finish();
            // Printed even with --quiet: it is part of the error.
            eprintln!(
                "{}: stopped after step {}; continue from the last checkpoint with: {} --resume {}",
                ctx.prog,
                trainer.step,
                if ctx.prog == "warp" {
                    "warp rl"
                } else {
                    ctx.prog
                },
                dir.display()
            );
            Err(Error::Interrupted)
        }
        Err(e) => Err(e),
    }
}
