//! `warp run`: the iterated WARP pipeline as a plan of self-contained commands.
//!
//! For each iteration i: M `warp rl` runs from the same init (each its own seed and EMA anchor),
//! `warp slerp` of their policies with fused LITI over the η grid, `warp lerp` of the same
//! policies (the baseline), and the LITI point at `eta` becomes the next iteration's init.
//! Then `warp eval` measures every checkpoint of the run folder and `warp plot` draws the front.
//!
//! Every step is a command line of this very executable recorded in `OUT/plan.json` (an RL step
//! reads its settings from a config file, `OUT/configs/STEP.json`), so a scheduler can run the M
//! runs of an iteration on M GPUs or nodes; the [`Launcher`] seam runs them here (`local`), and
//! [`submit`] hands the whole plan to Slurm ([`crate::slurm`]) as batch jobs with dependencies.
//! A step whose output exists is skipped, and an RL run that was interrupted is resumed
//! (`warp rl --resume`), so re-running `warp run` continues where it stopped. Where everything
//! goes is [`RunLayout`].

pub mod launcher;
mod plan;
pub mod presets;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::device::Device;
use crate::error::{Error, IoContext, Result};
use crate::merge::eta_name;
use crate::progress::Reporter;
use crate::rl::settings::Trainer;
use crate::slurm::{Slurm, SlurmConfig, Submission};

pub use crate::layout::{RlRunLayout, RunLayout};
pub use crate::stats::eval_table::{EvalRow, EvalTable, Point, PointKind};
pub use launcher::{Launcher, Local};
pub use plan::{plan, Plan, Step};

/// The settings of a pipeline (a TOML file; every key optional).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// The built-in task whose data, reward and RL settings are the defaults ([`presets`]).
    pub task: String,
    /// The schedule: `small` (the default demo) or `paper` ([`presets`]).
    pub preset: String,
    /// The SFT model the first iteration starts from (folder, hub id or `builtin:…`).
    pub model: String,
    /// Training prompts (JSONL).
    pub prompts: PathBuf,
    /// Held-out prompts for the evaluation.
    pub heldout: PathBuf,
    pub reward: String,
    pub output: PathBuf,
    /// WARP iterations I.
    pub iterations: u32,
    /// RL runs per iteration M (≥ 2).
    pub runs: u32,
    /// RL steps T per run.
    pub steps: u64,
    pub mu: f64,
    pub beta: f64,
    /// LITI η of the point that becomes the next iteration's init.
    pub eta: f64,
    /// LITI η grid of the front.
    pub etas: Vec<f64>,
    /// Seed of run m of iteration i: seed + 100·(i − 1) + m.
    pub seed: u64,
    /// Checkpoints per RL run (trajectory points on the plot).
    pub checkpoints: u64,
    /// Other settings of every RL run (the keys of `warp rl --config`, e.g. `batch = 32`).
    pub rl: serde_json::Map<String, serde_json::Value>,
    /// Other settings of every RL run as `warp rl` flags (e.g. ["--batch", "32", "--lr", "1e-4"]).
    pub rl_args: Vec<String>,
    /// Also train M runs anchored to the frozen init in iteration 1 (the paper's ablation).
    pub init_anchor_runs: bool,
    /// Commands running at once (RL runs of an iteration).
    pub jobs: u32,
    /// Devices given to the RL runs in turn (`auto`, `cpu`, `cuda:N`); the evaluation uses the
    /// first.
    pub devices: Vec<Device>,
    /// `local` (child processes of `warp run` on this machine) or `slurm` (batch jobs on a
    /// Slurm cluster, with the resources of the `slurm` table; docs/SLURM.md).
    pub launcher: String,
    /// The Slurm launcher's settings: resources per kind of step, prelude lines.
    pub slurm: SlurmConfig,
    /// The RL trainer of every run: `warp` (libtorch, one device) or `trl` (TRL's RLOOTrainer
    /// under `accelerate launch`: docs/SCALE.md); same run layout either way.
    pub trainer: Trainer,
    /// Evaluation: completions per held-out prompt, and how many prompts (0 = all).
    pub eval_samples: u32,
    pub eval_prompts: u32,
    /// Evaluation temperature; by default the RL runs' sampling temperature, because RL
    /// optimizes reward − β·KL of the policy at that temperature: that is the trade-off the
    /// front shows.
    pub eval_temperature: Option<f64>,
    /// libtorch threads per command (0 = libtorch's default).
    pub threads: u32,
    /// Dtype of the merged (SLERP, LITI, LERP) checkpoints: `sft` (the SFT model's, default),
    /// `bf16`, `f16` or `f32`. The RL runs save f32 policies (exact task vectors); the merges
    /// read those next to their init in its own dtype(s), compute in f32 and round only their
    /// outputs to this dtype.
    pub merge_dtype: String,
    /// The SFT model's dtype, read from its checkpoint header before planning (not a setting).
    #[serde(skip)]
    pub sft_dtype: Option<crate::io::DType>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            task: "arith".into(),
            preset: "small".into(),
            model: "builtin:arith/model".into(),
            prompts: "builtin:arith/train.jsonl".into(),
            heldout: "builtin:arith/heldout.jsonl".into(),
            reward: "verify:arith".into(),
            output: "warp-run".into(),
            iterations: 2,
            runs: 2,
            steps: 100,
            mu: 0.05,
            beta: 0.1,
            eta: 0.5,
            etas: (0..=10).map(|i| i as f64 / 10.0).collect(),
            seed: 1,
            checkpoints: 4,
            rl: serde_json::Map::new(),
            rl_args: Vec::new(),
            init_anchor_runs: true,
            jobs: 1,
            devices: vec![Device::Auto],
            launcher: "local".into(),
            slurm: SlurmConfig::default(),
            trainer: Trainer::Warp,
            eval_samples: 2,
            eval_prompts: 500,
            eval_temperature: None,
            threads: 0,
            merge_dtype: "sft".into(),
            sft_dtype: None,
        }
    }
}

impl PipelineConfig {
    /// Checks the values that no type rules out; errors name the key.
    pub fn check(&self) -> Result<()> {
        let bad = |field: &str, m: String| Err(Error::setting(field, m));
        for (field, v) in [
            ("iterations", self.iterations as u64),
            ("steps", self.steps),
            ("checkpoints", self.checkpoints),
            ("jobs", self.jobs as u64),
        ] {
            if v == 0 {
                return bad(field, "must be > 0".into());
            }
        }
        if self.runs < 2 {
            return bad(
                "runs",
                format!(
                    "must be ≥ 2 (SLERP merges M ≥ 2 policies), got {}",
                    self.runs
                ),
            );
        }
        self.check_sizes_and_rates()?;
        if self.etas.is_empty() || self.etas.iter().any(|e| !e.is_finite()) {
            return bad("etas", "must be a non-empty list of numbers".into());
        }
        if let Some(t) = self
            .eval_temperature
            .filter(|t| !(t.is_finite() && *t > 0.0))
        {
            return bad("eval_temperature", format!("must be > 0, got {t}"));
        }
        if !(self.eta > 0.0 && self.eta <= 1.0) {
            return bad("eta", format!("must be in (0, 1], got {}", self.eta));
        }
        let max = crate::device::max_threads();
        if self.threads as usize > max {
            return bad(
                "threads",
                format!(
                    "must be at most {max} (4 × the cores available), got {}",
                    self.threads
                ),
            );
        }
        if self.devices.is_empty() {
            return bad("devices", "must not be empty".into());
        }
        self.merge_target(crate::io::DType::F32)?;
        // The `rl` table and `rl_args` as every run will see them: an unknown key, a wrong
        // type or a value out of range is an error now, before anything is written.
        let base = plan::rl_base(self)?;
        crate::rl::settings::RlConfig {
            steps: self.steps,
            mu: self.mu,
            beta: self.beta,
            save_every: self.steps.div_ceil(self.checkpoints).max(1),
            ..base
        }
        .check()?;
        match self.launcher.as_str() {
            "local" => Ok(()),
            "slurm" => {
                self.slurm.check()?;
                crate::slurm::check_script_path(&self.output)
            }
            other => bad(
                "launcher",
                format!("unknown launcher '{other}' (local or slurm)"),
            ),
        }
    }

    /// The plan-size limits (src/limits.rs), `mu` and `beta`, and the output folder's place:
    /// checked before anything is written.
    fn check_sizes_and_rates(&self) -> Result<()> {
        let bad = |field: &str, m: String| Err(Error::setting(field, m));
        use crate::limits::{MAX_ITERATIONS, MAX_PLAN_STEPS, MAX_RUNS};
        if self.iterations > MAX_ITERATIONS {
            return bad(
                "iterations",
                format!("must be at most {MAX_ITERATIONS}, got {}", self.iterations),
            );
        }
        if self.runs > MAX_RUNS {
            return bad(
                "runs",
                format!("must be at most {MAX_RUNS}, got {}", self.runs),
            );
        }
        // Each iteration: 2·M RL runs at most (with the init-anchored ones), the merges, the
        // fronts and evaluations of every η.
        let per_iteration = 2 * u64::from(self.runs) + 2 * self.etas.len() as u64 + 8;
        let planned = u64::from(self.iterations).saturating_mul(per_iteration);
        if planned > MAX_PLAN_STEPS {
            return bad(
                "iterations",
                format!(
                    "{} iterations of {} runs and {} η values make about {planned} steps, more \
                     than the limit of {MAX_PLAN_STEPS}",
                    self.iterations,
                    self.runs,
                    self.etas.len()
                ),
            );
        }
        if !(self.mu > 0.0 && self.mu <= 1.0) {
            return bad("mu", format!("must be in (0, 1], got {}", self.mu));
        }
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return bad(
                "beta",
                format!("must be a finite number ≥ 0, got {}", self.beta),
            );
        }
        self.check_output_outside_inputs()
    }

    /// The output folder may be neither an input nor inside one (the model folder, the prompt
    /// files): the pipeline would write into what it reads.
    fn check_output_outside_inputs(&self) -> Result<()> {
        let out = resolved(&self.output);
        let inputs = [
            ("model", PathBuf::from(&self.model)),
            ("prompts", self.prompts.clone()),
            ("heldout", self.heldout.clone()),
        ];
        for (key, p) in inputs {
            // Hub ids and built-in names are not folders here.
            if std::fs::symlink_metadata(&p).is_err() {
                continue;
            }
            let input = resolved(&p);
            if out.starts_with(&input) {
                return Err(Error::setting(
                    "output",
                    format!(
                        "{} is inside the input {key} = {} (the pipeline would write into what \
                         it reads); choose another output folder",
                        self.output.display(),
                        p.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The η grid plus the next-init η, sorted, without duplicates.
    pub fn eta_grid(&self) -> Vec<f64> {
        let mut v = self.etas.clone();
        v.push(self.eta);
        v.push(1.0);
        v.sort_by(f64::total_cmp);
        v.dedup_by(|a, b| eta_name(*a) == eta_name(*b));
        v
    }

    pub fn layout(&self) -> RunLayout {
        RunLayout::new(&self.output)
    }

    /// The dtype the merges write, given the SFT model's.
    pub fn merge_target(&self, sft: crate::io::DType) -> Result<crate::io::DType> {
        use crate::io::DType;
        match self.merge_dtype.to_ascii_lowercase().as_str() {
            "sft" => Ok(sft),
            "bf16" => Ok(DType::BF16),
            "f16" => Ok(DType::F16),
            "f32" => Ok(DType::F32),
            other => Err(Error::setting(
                "merge_dtype",
                format!("unknown dtype '{other}' (sft, bf16, f16 or f32)"),
            )),
        }
    }

    /// This config with `sft_dtype` read from the SFT model's checkpoint (a hub id is
    /// downloaded): the dtype of its floating-point tensors (the most common one).
    pub fn with_sft_dtype(&self, reporter: &dyn Reporter) -> Result<PipelineConfig> {
        let spec = crate::builtin::resolve_spec(&self.model)?;
        let ck = crate::hub::open_checkpoint(&spec, &crate::hub::HubOptions::from_env(), reporter)?;
        let mut counts: Vec<(crate::io::DType, u64)> = Vec::new();
        for t in ck.tensors().iter().filter(|t| t.dtype.is_float()) {
            match counts.iter_mut().find(|(d, _)| *d == t.dtype) {
                Some((_, n)) => *n += t.nbytes,
                None => counts.push((t.dtype, t.nbytes)),
            }
        }
        let dtype = counts.iter().max_by_key(|(_, n)| *n).map(|(d, _)| *d);
        Ok(PipelineConfig {
            sft_dtype: dtype,
            ..self.clone()
        })
    }
}

/// What `plan.json` records.
#[derive(Serialize)]
struct PlanRecord<'a> {
    warp_version: &'static str,
    config: &'a PipelineConfig,
    steps: &'a [Step],
}

/// Writes `OUT/plan.json` and the RL steps' config files (each atomically).
pub fn write_plan(c: &PipelineConfig, p: &Plan) -> Result<()> {
    let layout = c.layout();
    std::fs::create_dir_all(layout.root()).at(layout.root())?;
    for (path, cfg) in &p.rl_configs {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).at(dir)?;
        }
        crate::io::write_file_atomic(path, &json(cfg)?)?;
    }
    let record = PlanRecord {
        warp_version: env!("CARGO_PKG_VERSION"),
        config: c,
        steps: &p.steps,
    };
    crate::io::write_file_atomic(&layout.plan_json(), &json(&record)?)
}

/// A run folder's `plan.json`, read back.
#[derive(Debug, Deserialize)]
pub struct RecordedPlan {
    pub warp_version: String,
    pub config: PipelineConfig,
    pub steps: Vec<Step>,
}

/// Reads `DIR/plan.json`.
pub fn read_plan(dir: &Path) -> Result<RecordedPlan> {
    let path = RunLayout::new(dir).plan_json();
    let text = match std::fs::read_to_string(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let msg = "not a `warp run` folder (no plan.json)";
            return Err(Error::io(&path, std::io::Error::new(e.kind(), msg)));
        }
        r => r.at(&path)?,
    };
    serde_json::from_str(&text).map_err(|e| Error::format(&path, e.to_string()))
}

/// The steps of a plan as the Slurm launcher takes them.
pub fn slurm_steps(steps: &[Step]) -> Vec<crate::slurm::Step> {
    steps
        .iter()
        .map(|st| crate::slurm::Step {
            id: st.id.clone(),
            after: st.after.clone(),
            argv: st.argv.clone(),
            resume: match (&st.resume_argv, &st.started) {
                (Some(argv), Some(started)) => Some(crate::slurm::Resume {
                    started: started.clone(),
                    argv: argv.clone(),
                }),
                _ => None,
            },
            done: st.done.clone(),
            log: st.log.clone(),
            kind: st.kind,
            array: st.array.clone(),
        })
        .collect()
}

/// What [`submit`] did, and what to follow the jobs with.
pub struct Submitted {
    pub slurm: Slurm,
    pub steps: Vec<crate::slurm::Step>,
    pub submission: Submission,
    /// The settings as recorded (the run folder made absolute).
    pub config: PipelineConfig,
}

/// The Slurm launcher: writes the plan and submits every step that is neither complete nor
/// queued as a batch job (the RL runs of an iteration as one job array, `afterok` on the
/// predecessors); returns without waiting. The run folder is made absolute first, so the plan's
/// paths mean the same in the jobs and to `warp status` run from anywhere.
pub fn submit(c: &PipelineConfig, exe: &Path, reporter: &dyn Reporter) -> Result<Submitted> {
    let mut c = c.clone();
    c.output = std::path::absolute(&c.output).at(&c.output)?;
    c.check()?;
    // Before anything is written: a run folder or working directory that cannot go into a
    // batch script is refused here.
    let slurm = Slurm::new(c.slurm.clone(), &c.output)?;
    let p = plan(&c, exe)?;
    write_plan(&c, &p)?;
    let steps = slurm_steps(&p.steps);
    let submission = slurm.submit(&steps, reporter)?;
    Ok(Submitted {
        slurm,
        steps,
        submission,
        config: c,
    })
}

/// `p` absolute with symbolic links resolved as far as it exists (the rest appended as given).
fn resolved(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            return rest.iter().rev().fold(real, |acc, c| acc.join(c));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return abs,
        }
    }
}

/// Pretty JSON text, with a final newline.
fn json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::Internal(e.to_string()))?;
    Ok((text + "\n").into_bytes())
}

/// Writes the plan and runs the steps that are not complete, in waves of steps whose
/// predecessors are complete. `exe` is the warp executable the steps run.
pub fn execute(
    c: &PipelineConfig,
    exe: &Path,
    launcher: &dyn Launcher,
    reporter: &dyn Reporter,
) -> Result<Vec<Step>> {
    c.check()?;
    let c = &c.with_sft_dtype(reporter)?;
    let p = plan(c, exe)?;
    write_plan(c, &p)?;
    let steps = p.steps;
    let mut complete: BTreeSet<String> = steps
        .iter()
        .filter(|st| st.done.exists())
        .map(|st| st.id.clone())
        .collect();
    for id in &complete {
        reporter.message(&format!("skip  {id} (complete)"));
    }
    loop {
        let ready: Vec<&Step> = steps
            .iter()
            .filter(|st| !complete.contains(&st.id))
            .filter(|st| st.after.iter().all(|a| complete.contains(a)))
            .collect();
        if ready.is_empty() {
            break;
        }
        launcher.run(&ready, reporter)?;
        complete.extend(ready.iter().map(|st| st.id.clone()));
    }
    Ok(steps)
}

/// The checkpoints of a `warp run` folder: the RL trajectories (policy and EMA at every saved
/// step), the LITI grid of each SLERP (its η = 1 point also as `slerp`), the fronts toward the
/// SFT, the LERP, and the init-anchored runs.
pub fn discover(out: &Path) -> Result<Vec<Point>> {
    let layout = RunLayout::new(out);
    let mut pts = Vec::new();
    let traj = |pts: &mut Vec<Point>, run: &RlRunLayout, it: u32, m: u32, anchor_init: bool| {
        for (step, d) in run.saved_steps()? {
            let which: &[(&str, PointKind)] = if anchor_init {
                &[("policy", PointKind::AnchorInit)]
            } else {
                &[("policy", PointKind::Policy), ("ema", PointKind::Ema)]
            };
            for (w, kind) in which {
                let mut p = Point::new(*kind, d.join(w));
                (p.iteration, p.run, p.step) = (Some(it), Some(m), Some(step));
                pts.push(p);
            }
        }
        Ok::<(), Error>(())
    };
    for i in layout.iterations()? {
        for (m, run) in layout.rl_runs(i)? {
            traj(&mut pts, &run, i, m, false)?;
        }
        for (eta, path) in layout.slerp_grid(i)? {
            let mut kinds = vec![PointKind::Liti];
            if eta == 1.0 {
                kinds.insert(0, PointKind::Slerp);
            }
            for kind in kinds {
                let mut p = Point::new(kind, &path);
                (p.iteration, p.eta) = (Some(i), Some(eta));
                pts.push(p);
            }
        }
        for (eta, path) in layout.front_grid(i)? {
            let mut p = Point::new(PointKind::Front, &path);
            (p.iteration, p.eta) = (Some(i), Some(eta));
            pts.push(p);
        }
        let lerp = layout.lerp(i).1;
        if lerp.is_dir() {
            let mut p = Point::new(PointKind::Lerp, lerp);
            (p.iteration, p.eta) = (Some(i), Some(1.0));
            pts.push(p);
        }
    }
    for (m, run) in layout.init_anchor_runs()? {
        traj(&mut pts, &run, 1, m, true)?;
    }
    Ok(pts)
}
