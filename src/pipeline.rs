//! `warp run`: the iterated WARP pipeline as a plan of self-contained commands.
//!
//! For each iteration i: M `warp-rl` runs from the same init (each its own seed and EMA anchor),
//! `warp-slerp` of their policies with fused LITI over the η grid, `warp-lerp` of the same
//! policies (the baseline), and the LITI point at `eta` becomes the next iteration's init.
//! Then `warp eval` measures every checkpoint of the run folder and `warp plot` draws the front.
//!
//! Every step is a command line recorded in `OUT/plan.json`, so a scheduler can run the M runs
//! of an iteration on M GPUs or nodes; the [`Launcher`] seam runs them here (`local`). A step
//! whose output exists is skipped, and an RL run that was interrupted is resumed
//! (`warp-rl --resume`), so re-running `warp run` continues where it stopped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::merge::eta_name;
use crate::progress::Reporter;

/// The settings of a pipeline (a TOML file; every key optional).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// The SFT model the first iteration starts from (folder or hub id).
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
    /// Extra `warp-rl` arguments (e.g. ["--batch", "32", "--lr", "1e-4"]).
    pub rl_args: Vec<String>,
    /// Also train M runs anchored to the frozen init in iteration 1 (the paper's ablation).
    pub init_anchor_runs: bool,
    /// Commands running at once (RL runs of an iteration).
    pub jobs: u32,
    /// Devices given to the RL runs in turn (`auto`, `cpu`, `cuda:N`).
    pub devices: Vec<String>,
    /// `local` (this machine). A Slurm launcher will follow.
    pub launcher: String,
    /// Evaluation: completions per held-out prompt, and how many prompts (0 = all).
    pub eval_samples: u32,
    pub eval_prompts: u32,
    /// libtorch threads per command (0 = libtorch's default).
    pub threads: u32,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        let builtin = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/arith");
        PipelineConfig {
            model: format!("{builtin}/model"),
            prompts: format!("{builtin}/train.jsonl").into(),
            heldout: format!("{builtin}/heldout.jsonl").into(),
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
            rl_args: Vec::new(),
            init_anchor_runs: true,
            jobs: 1,
            devices: vec!["auto".into()],
            launcher: "local".into(),
            eval_samples: 2,
            eval_prompts: 500,
            threads: 0,
        }
    }
}

impl PipelineConfig {
    /// Reads a TOML file (unknown keys are an error naming them).
    pub fn from_toml(path: &Path) -> Result<PipelineConfig> {
        let text = std::fs::read_to_string(path).at(path)?;
        toml::from_str(&text).map_err(|e| Error::format(path, format!("{e}")))
    }

    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Usage(m));
        if self.iterations == 0 || self.steps == 0 || self.checkpoints == 0 {
            return bad("iterations, steps and checkpoints must be > 0".into());
        }
        if self.runs < 2 {
            return bad(format!(
                "runs must be ≥ 2 (SLERP merges M ≥ 2 policies), got {}",
                self.runs
            ));
        }
        if self.etas.is_empty() || self.etas.iter().any(|e| !e.is_finite()) {
            return bad("etas must be a non-empty list of numbers".into());
        }
        if !(self.eta > 0.0 && self.eta <= 1.0) {
            return bad(format!("eta must be in (0, 1], got {}", self.eta));
        }
        if self.jobs == 0 || self.devices.is_empty() {
            return bad("jobs must be > 0 and devices non-empty".into());
        }
        if self.launcher != "local" {
            return bad(format!(
                "unknown launcher '{}' (only 'local' for now)",
                self.launcher
            ));
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
}

/// One command of the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub id: String,
    /// Steps that must be complete first.
    pub after: Vec<String>,
    /// The command line (program first: a warp binary).
    pub argv: Vec<String>,
    /// How to continue an interrupted attempt, when the step supports it.
    pub resume_argv: Option<Vec<String>>,
    /// Exists once the step is complete (written atomically by the command).
    pub done: PathBuf,
    /// Exists when an attempt started (then `resume_argv` is used).
    pub started: Option<PathBuf>,
    /// The command's stdout and stderr.
    pub log: PathBuf,
    /// Device of an RL run (for launchers that place work).
    pub device: Option<String>,
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn run_dir(out: &Path, iteration: u32, run: u32) -> PathBuf {
    out.join(format!("iter-{iteration}"))
        .join(format!("run-{run}"))
}

/// The plan of a pipeline: its commands in an order that respects `after`.
pub fn plan(c: &PipelineConfig, bin_dir: &Path) -> Vec<Step> {
    let out = &c.output;
    let exe = |name: &str| s(&bin_dir.join(name));
    let logs = out.join("logs");
    let save_every = c.steps.div_ceil(c.checkpoints).max(1);
    let threads: Vec<String> = if c.threads > 0 {
        vec!["--threads".into(), c.threads.to_string()]
    } else {
        Vec::new()
    };
    let mut steps = Vec::new();
    let mut init = c.model.clone();
    let mut init_step: Option<String> = None;
    let mut k = 0usize;
    let grid = c.eta_grid();
    let rl = |init: &str, dir: &Path, seed: u64, anchor: &str, device: &str| -> Vec<String> {
        let mut a = vec![
            exe("warp-rl"),
            init.to_string(),
            "-o".into(),
            s(dir),
            "--prompts".into(),
            s(&c.prompts),
            "--reward".into(),
            c.reward.clone(),
            "--steps".into(),
            c.steps.to_string(),
            "--mu".into(),
            c.mu.to_string(),
            "--beta".into(),
            c.beta.to_string(),
            "--seed".into(),
            seed.to_string(),
            "--anchor".into(),
            anchor.into(),
            "--save-every".into(),
            save_every.to_string(),
            "--device".into(),
            device.into(),
            "-q".into(),
        ];
        a.extend(c.rl_args.iter().cloned());
        a.extend(threads.iter().cloned());
        a
    };
    for i in 1..=c.iterations {
        let mut policies = Vec::new();
        let mut ids = Vec::new();
        let mut rl_runs: Vec<(String, PathBuf, &str)> = (1..=c.runs)
            .map(|m| (format!("iter-{i}/run-{m}"), run_dir(out, i, m), "ema"))
            .collect();
        if i == 1 && c.init_anchor_runs {
            rl_runs.extend((1..=c.runs).map(|m| {
                (
                    format!("init-anchor/run-{m}"),
                    out.join("init-anchor").join(format!("run-{m}")),
                    "init",
                )
            }));
        }
        for (id, dir, anchor) in rl_runs {
            let m: u32 = id
                .rsplit('-')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            let device = c.devices[k % c.devices.len()].clone();
            k += 1;
            let seed = c.seed + 100 * (i as u64 - 1) + m as u64;
            let mut resume = vec![exe("warp-rl"), "--resume".into(), s(&dir), "-q".into()];
            resume.extend(threads.iter().cloned());
            if anchor == "ema" {
                policies.push(s(&dir.join("final/policy")));
                ids.push(id.clone());
            }
            steps.push(Step {
                log: logs.join(format!("{}.log", id.replace('/', "-"))),
                after: init_step.iter().cloned().collect(),
                argv: rl(&init, &dir, seed, anchor, &device),
                resume_argv: Some(resume),
                done: dir.join("final"),
                started: Some(dir.join("run.json")),
                device: Some(device),
                id,
            });
        }
        let it = out.join(format!("iter-{i}"));
        let mut slerp = vec![exe("warp-slerp")];
        slerp.extend(policies.iter().cloned());
        slerp.extend([
            "--init".into(),
            init.clone(),
            "-o".into(),
            s(&it.join("slerp")),
        ]);
        for e in &grid {
            slerp.extend(["--eta".into(), e.to_string()]);
        }
        slerp.extend([
            "--report".into(),
            s(&it.join("slerp-angles.json")),
            "-q".into(),
        ]);
        let slerp_id = format!("iter-{i}/slerp");
        steps.push(Step {
            id: slerp_id.clone(),
            after: ids.clone(),
            argv: slerp,
            resume_argv: None,
            done: it.join("slerp"),
            started: None,
            log: logs.join(format!("iter-{i}-slerp.log")),
            device: None,
        });
        let mut lerp = vec![exe("warp-lerp")];
        lerp.extend(policies.iter().cloned());
        lerp.extend([
            "--init".into(),
            init.clone(),
            "-o".into(),
            s(&it.join("lerp")),
            "-q".into(),
        ]);
        steps.push(Step {
            id: format!("iter-{i}/lerp"),
            after: ids,
            argv: lerp,
            resume_argv: None,
            done: it.join("lerp"),
            started: None,
            log: logs.join(format!("iter-{i}-lerp.log")),
            device: None,
        });
        init = s(&it.join("slerp").join(eta_name(c.eta)));
        init_step = Some(slerp_id);
    }
    let all: Vec<String> = steps.iter().map(|st| st.id.clone()).collect();
    let mut eval = vec![
        exe("warp"),
        "eval".into(),
        "--run".into(),
        s(out),
        "--sft".into(),
        c.model.clone(),
        "--prompts".into(),
        s(&c.heldout),
        "--reward".into(),
        c.reward.clone(),
        "--samples".into(),
        c.eval_samples.to_string(),
        "--max-prompts".into(),
        c.eval_prompts.to_string(),
        "-o".into(),
        s(&out.join("eval.csv")),
        "-q".into(),
    ];
    eval.extend(threads.iter().cloned());
    steps.push(Step {
        id: "eval".into(),
        after: all,
        argv: eval,
        resume_argv: None,
        done: out.join("eval.csv"),
        started: None,
        log: logs.join("eval.log"),
        device: None,
    });
    steps.push(Step {
        id: "plot".into(),
        after: vec!["eval".into()],
        argv: vec![
            exe("warp"),
            "plot".into(),
            s(&out.join("eval.csv")),
            "-o".into(),
            s(&out.join("front.svg")),
            "--title".into(),
            format!(
                "WARP on {}: {} iteration(s), M = {}, T = {}",
                c.reward, c.iterations, c.runs, c.steps
            ),
            "-q".into(),
        ],
        resume_argv: None,
        done: out.join("front.svg"),
        started: None,
        log: logs.join("plot.log"),
        device: None,
    });
    steps
}

/// Runs a set of independent steps to completion.
pub trait Launcher {
    fn run(&self, steps: &[&Step], reporter: &dyn Reporter) -> Result<()>;
}

/// Runs steps as child processes of this one, up to `jobs` at a time.
pub struct Local {
    pub jobs: usize,
}

/// Whether an earlier attempt of `st` started and can be continued.
fn resumable(st: &Step) -> bool {
    st.resume_argv.is_some() && st.started.as_ref().is_some_and(|p| p.exists())
}

fn spawn(st: &Step) -> Result<Child> {
    let argv = match &st.resume_argv {
        Some(r) if resumable(st) => r,
        _ => &st.argv,
    };
    if let Some(dir) = st.log.parent() {
        std::fs::create_dir_all(dir).at(dir)?;
    }
    let log = std::fs::File::create(&st.log).at(&st.log)?;
    let err = log.try_clone().at(&st.log)?;
    Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .map_err(|e| Error::Usage(format!("step {}: cannot start {}: {e}", st.id, argv[0])))
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

impl Launcher for Local {
    fn run(&self, steps: &[&Step], reporter: &dyn Reporter) -> Result<()> {
        let mut queue: Vec<&Step> = steps.to_vec();
        queue.reverse();
        let mut running: Vec<(&Step, Child)> = Vec::new();
        let mut failure: Option<Error> = None;
        while failure.is_none() && (!queue.is_empty() || !running.is_empty()) {
            while running.len() < self.jobs.max(1) {
                let Some(st) = queue.pop() else { break };
                let verb = if resumable(st) { "resume" } else { "start " };
                reporter.message(&format!("{verb} {}  (log: {})", st.id, st.log.display()));
                running.push((st, spawn(st)?));
            }
            std::thread::sleep(Duration::from_millis(100));
            if crate::cancel::check().is_err() {
                failure = Some(Error::Interrupted);
                break;
            }
            let mut k = 0;
            while k < running.len() {
                let (st, child) = &mut running[k];
                match child.try_wait().at(&st.log)? {
                    None => k += 1,
                    Some(status) => {
                        let st = *st;
                        running.swap_remove(k);
                        if status.success() && st.done.exists() {
                            reporter.message(&format!("done  {}", st.id));
                        } else {
                            failure = Some(Error::Usage(format!(
                                "step {} failed ({status}); see {}:\n{}",
                                st.id,
                                st.log.display(),
                                log_tail(&st.log)
                            )));
                            break;
                        }
                    }
                }
            }
        }
        // On failure or Ctrl-C the others are stopped; their last checkpoints stay resumable.
        for (_, mut child) in running {
            let _ = child.kill();
            let _ = child.wait();
        }
        failure.map_or(Ok(()), Err)
    }
}

/// Writes `OUT/plan.json` and runs the steps that are not complete, in waves of steps whose
/// predecessors are complete.
pub fn execute(
    c: &PipelineConfig,
    bin_dir: &Path,
    launcher: &dyn Launcher,
    reporter: &dyn Reporter,
) -> Result<Vec<Step>> {
    c.check()?;
    let steps = plan(c, bin_dir);
    std::fs::create_dir_all(&c.output).at(&c.output)?;
    let plan_path = c.output.join("plan.json");
    let recorded = serde_json::json!({
        "warp_version": env!("CARGO_PKG_VERSION"),
        "config": c,
        "steps": steps,
    });
    let text = serde_json::to_string_pretty(&recorded).unwrap_or_default() + "\n";
    crate::io::write_file_atomic(&plan_path, text.as_bytes())?;
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

/// A checkpoint to evaluate and where it sits in a WARP run: the leading columns of the
/// evaluation CSV that `warp plot` reads (see [`crate::plot`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub label: String,
    /// sft, liti, slerp, lerp, policy, ema, anchor_init or model.
    pub kind: String,
    pub iteration: Option<u32>,
    pub run: Option<u32>,
    pub step: Option<u64>,
    pub eta: Option<f64>,
    pub path: PathBuf,
}

fn numbered(dir: &Path, prefix: &str) -> Result<Vec<(u64, PathBuf)>> {
    let mut v = Vec::new();
    if !dir.is_dir() {
        return Ok(v);
    }
    for e in std::fs::read_dir(dir).at(dir)? {
        let e = e.at(dir)?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(n) = name.strip_prefix(prefix).and_then(|n| n.parse().ok()) {
            v.push((n, e.path()));
        }
    }
    v.sort();
    Ok(v)
}

/// The checkpoints of a `warp run` folder: the RL trajectories (policy and EMA at every saved
/// step), the LITI grid of each SLERP (its η = 1 point also as `slerp`), the LERP, and the
/// init-anchored runs.
pub fn discover(out: &Path) -> Result<Vec<Point>> {
    let mut pts = Vec::new();
    let traj = |pts: &mut Vec<Point>, dir: &Path, it: Option<u32>, run: u32, anchor_init: bool| {
        for (step, d) in numbered(dir, "step-")? {
            let which: &[&str] = if anchor_init {
                &["policy"]
            } else {
                &["policy", "ema"]
            };
            for w in which {
                let kind = if anchor_init { "anchor_init" } else { w };
                pts.push(Point {
                    label: String::new(),
                    kind: kind.to_string(),
                    iteration: it,
                    run: Some(run),
                    step: Some(step),
                    eta: None,
                    path: d.join(w),
                });
            }
        }
        Ok::<(), Error>(())
    };
    for (i, it) in numbered(out, "iter-")? {
        let i = i as u32;
        for (m, rd) in numbered(&it, "run-")? {
            traj(&mut pts, &rd, Some(i), m as u32, false)?;
        }
        let slerp = it.join("slerp");
        if slerp.is_dir() {
            let mut grid = Vec::new();
            for e in std::fs::read_dir(&slerp).at(&slerp)? {
                let e = e.at(&slerp)?;
                let name = e.file_name().to_string_lossy().to_string();
                if let Some(eta) = name
                    .strip_prefix("eta-")
                    .and_then(|v| v.parse::<f64>().ok())
                {
                    grid.push((eta, e.path()));
                }
            }
            grid.sort_by(|a, b| a.0.total_cmp(&b.0));
            for (eta, p) in grid {
                if eta == 1.0 {
                    pts.push(Point {
                        label: String::new(),
                        kind: "slerp".into(),
                        iteration: Some(i),
                        run: None,
                        step: None,
                        eta: Some(1.0),
                        path: p.clone(),
                    });
                }
                pts.push(Point {
                    label: String::new(),
                    kind: "liti".into(),
                    iteration: Some(i),
                    run: None,
                    step: None,
                    eta: Some(eta),
                    path: p,
                });
            }
        }
        let lerp = it.join("lerp");
        if lerp.is_dir() {
            pts.push(Point {
                label: String::new(),
                kind: "lerp".into(),
                iteration: Some(i),
                run: None,
                step: None,
                eta: Some(1.0),
                path: lerp,
            });
        }
    }
    for (m, rd) in numbered(&out.join("init-anchor"), "run-")? {
        traj(&mut pts, &rd, Some(1), m as u32, true)?;
    }
    Ok(pts)
}
