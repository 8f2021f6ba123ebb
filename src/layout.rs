//! The folders warp writes, each defined once and used both to write and to read back: a
//! `warp run` folder ([`RunLayout`]) and an RL run folder ([`RlRunLayout`]).
//!
//! ```text
//! OUT/                              RunLayout
//!   plan.json                       the settings and every step
//!   configs/STEP.json               the config file of an RL step (`warp rl --config`)
//!   logs/STEP.log                   each step's stdout and stderr
//!   iter-i/run-m/                   RL runs (RlRunLayout) of iteration i
//!   init-anchor/run-m/              the init-anchored runs (iteration 1)
//!   iter-i/slerp/eta-X.XX/          SLERP with fused LITI, one folder per η
//!   iter-i/slerp-angles.json        angles between the task vectors
//!   iter-i/lerp/                    LERP of the same policies
//!   iter-i/init/                    LoRA runs (`lora = R`), i < I: the LITI point at `eta`
//!                                   (an adapter) folded into its base, the next init
//!   iter-i/slerp-full/              LoRA runs, i ≥ 2: the SLERP (η = 1) as a full checkpoint,
//!                                   what the front interpolates toward the SFT
//!   iter-i/front/eta-X.XX/          iteration i's SLERP toward the SFT (i ≥ 2): the paper's
//!                                   output front {(1 − η)·θ_sft + η·θ_slerp^i}
//!   eval.csv, front.svg             the evaluation and its plot
//!   eval-samples.csv, eval.json     every sample of the evaluation, and its settings
//!
//! RUN/                              RlRunLayout
//!   run.json                        warp version and the RlConfig
//!   metrics.jsonl                   one line per step
//!   step-NNNNNN/{policy,ema,trainer}/   resumable checkpoints (trainer/state.json last)
//!   final/{policy,ema}/             the end of the run
//! ```
//! Step ids are the relative paths of what they write (`iter-1/run-2`, `iter-1/slerp`, `eval`).

use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};
use crate::merge::eta_name;

/// A `warp run` folder.
#[derive(Debug, Clone, PartialEq)]
pub struct RunLayout {
    root: PathBuf,
}

/// Sub-folders `PREFIX<number>` of `dir`, by number (none when `dir` does not exist). Names
/// that start with a dot (staging folders) never match.
fn numbered(dir: &Path, prefix: &str) -> Result<Vec<(u64, PathBuf)>> {
    let mut v = Vec::new();
    if !dir.is_dir() {
        return Ok(v);
    }
    for e in std::fs::read_dir(dir).at(dir)? {
        let e = e.at(dir)?;
        let name = e.file_name().to_string_lossy().to_string();
        let n = name
            .strip_prefix(prefix)
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()));
        if let Some(n) = n.and_then(|n| n.parse().ok()) {
            v.push((n, e.path()));
        }
    }
    v.sort();
    Ok(v)
}

/// `logs/iter-1-run-2.log` for step `iter-1/run-2`.
fn flat(id: &str) -> String {
    id.replace('/', "-")
}

impl RunLayout {
    pub fn new(root: impl Into<PathBuf>) -> RunLayout {
        RunLayout { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn plan_json(&self) -> PathBuf {
        self.root.join("plan.json")
    }
    pub fn eval_csv(&self) -> PathBuf {
        self.root.join("eval.csv")
    }
    /// Every sample of the evaluation (`eval-samples.csv`, [`crate::stats::samples`]).
    pub fn eval_samples_csv(&self) -> PathBuf {
        crate::stats::samples::sidecars(&self.eval_csv()).0
    }
    /// The evaluation's settings (`eval.json`).
    pub fn eval_json(&self) -> PathBuf {
        crate::stats::samples::sidecars(&self.eval_csv()).1
    }
    pub fn front_svg(&self) -> PathBuf {
        self.root.join("front.svg")
    }
    /// The log of step `id`.
    pub fn log(&self, id: &str) -> PathBuf {
        self.root.join("logs").join(format!("{}.log", flat(id)))
    }
    /// The config file of step `id`.
    pub fn step_config(&self, id: &str) -> PathBuf {
        self.root.join("configs").join(format!("{}.json", flat(id)))
    }
    pub fn iteration(&self, i: u32) -> PathBuf {
        self.root.join(format!("iter-{i}"))
    }
    /// Step id and folder of RL run `m` of iteration `i`.
    pub fn rl_run(&self, i: u32, m: u32) -> (String, RlRunLayout) {
        let id = format!("iter-{i}/run-{m}");
        (id.clone(), RlRunLayout::new(self.root.join(id)))
    }
    /// Step id and folder of init-anchored run `m`.
    pub fn init_anchor_run(&self, m: u32) -> (String, RlRunLayout) {
        let id = format!("init-anchor/run-{m}");
        (id.clone(), RlRunLayout::new(self.root.join(id)))
    }
    /// Step id and folder of iteration `i`'s SLERP (one sub-folder per η).
    pub fn slerp(&self, i: u32) -> (String, PathBuf) {
        (format!("iter-{i}/slerp"), self.iteration(i).join("slerp"))
    }
    /// The SLERP's LITI point at `eta`.
    pub fn slerp_eta(&self, i: u32, eta: f64) -> PathBuf {
        self.slerp(i).1.join(eta_name(eta))
    }
    pub fn slerp_angles(&self, i: u32) -> PathBuf {
        self.iteration(i).join("slerp-angles.json")
    }
    /// Step id and folder of iteration `i`'s front toward the SFT model (iterations ≥ 2): its
    /// SLERP interpolated toward the SFT, one sub-folder per η.
    pub fn front(&self, i: u32) -> (String, PathBuf) {
        (format!("iter-{i}/front"), self.iteration(i).join("front"))
    }
    /// Step id and folder of the next init after iteration `i` in a LoRA pipeline: the LITI
    /// point (an adapter) as a full checkpoint.
    pub fn next_init(&self, i: u32) -> (String, PathBuf) {
        (format!("iter-{i}/init"), self.iteration(i).join("init"))
    }
    /// Step id and folder of iteration `i`'s SLERP (η = 1) as a full checkpoint, in a LoRA
    /// pipeline (the adapter's base is the iteration's init, not the SFT model).
    pub fn slerp_full(&self, i: u32) -> (String, PathBuf) {
        (
            format!("iter-{i}/slerp-full"),
            self.iteration(i).join("slerp-full"),
        )
    }
    /// Step id and folder of iteration `i`'s LERP.
    pub fn lerp(&self, i: u32) -> (String, PathBuf) {
        (format!("iter-{i}/lerp"), self.iteration(i).join("lerp"))
    }

    /// The iterations present, by number.
    pub fn iterations(&self) -> Result<Vec<u32>> {
        Ok(numbered(&self.root, "iter-")?
            .into_iter()
            .filter_map(|(i, _)| u32::try_from(i).ok())
            .collect())
    }
    /// The RL runs present in iteration `i`, by number.
    pub fn rl_runs(&self, i: u32) -> Result<Vec<(u32, RlRunLayout)>> {
        runs_in(&self.iteration(i))
    }
    /// The init-anchored runs present, by number.
    pub fn init_anchor_runs(&self) -> Result<Vec<(u32, RlRunLayout)>> {
        runs_in(&self.root.join("init-anchor"))
    }
    /// The LITI points of iteration `i`'s SLERP present, by η.
    pub fn slerp_grid(&self, i: u32) -> Result<Vec<(f64, PathBuf)>> {
        eta_grid(&self.slerp(i).1)
    }
    /// The points of iteration `i`'s front toward the SFT present, by η.
    pub fn front_grid(&self, i: u32) -> Result<Vec<(f64, PathBuf)>> {
        eta_grid(&self.front(i).1)
    }
}

/// The `eta-X.XX` sub-folders of `dir`, by η (none when `dir` does not exist).
fn eta_grid(dir: &Path) -> Result<Vec<(f64, PathBuf)>> {
    let mut grid = Vec::new();
    if !dir.is_dir() {
        return Ok(grid);
    }
    for e in std::fs::read_dir(dir).at(dir)? {
        let e = e.at(dir)?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(eta) = name
            .strip_prefix("eta-")
            .and_then(|v| v.parse::<f64>().ok())
        {
            grid.push((eta, e.path()));
        }
    }
    grid.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(grid)
}

fn runs_in(dir: &Path) -> Result<Vec<(u32, RlRunLayout)>> {
    Ok(numbered(dir, "run-")?
        .into_iter()
        .filter_map(|(m, p)| Some((u32::try_from(m).ok()?, RlRunLayout::new(p))))
        .collect())
}

/// An RL run folder (`warp rl -o RUN`).
#[derive(Debug, Clone, PartialEq)]
pub struct RlRunLayout {
    dir: PathBuf,
}

/// The file in `trainer/` whose presence marks a complete resumable checkpoint.
pub const TRAINER_STATE: &str = "state.json";

impl RlRunLayout {
    pub fn new(dir: impl Into<PathBuf>) -> RlRunLayout {
        RlRunLayout { dir: dir.into() }
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// Exists once the run started: its settings.
    pub fn run_json(&self) -> PathBuf {
        self.dir.join("run.json")
    }
    pub fn metrics(&self) -> PathBuf {
        self.dir.join("metrics.jsonl")
    }
    /// The checkpoint after `step` steps.
    pub fn step(&self, step: u64) -> PathBuf {
        self.dir.join(format!("step-{step:06}"))
    }
    /// Exists once the run is complete.
    pub fn final_dir(&self) -> PathBuf {
        self.dir.join("final")
    }
    /// The policy or EMA (`which`) of the final checkpoint.
    pub fn final_model(&self, which: &str) -> PathBuf {
        self.final_dir().join(which)
    }
    /// The optimizer state of a checkpoint folder.
    pub fn trainer_dir(checkpoint: &Path) -> PathBuf {
        checkpoint.join("trainer")
    }
    /// The saved steps whose policy folder is complete, by step: the trajectory points. Every
    /// complete checkpoint is one; a run of the trl backend keeps the resumable trainer state
    /// of its newest step only, so its older steps are points but not checkpoints.
    pub fn saved_steps(&self) -> Result<Vec<(u64, PathBuf)>> {
        Ok(numbered(&self.dir, "step-")?
            .into_iter()
            .filter(|(_, p)| p.join("policy").is_dir())
            .collect())
    }
    /// The complete resumable checkpoints, by step (a staged, unfinished one is hidden and never
    /// matches).
    pub fn checkpoints(&self) -> Result<Vec<(u64, PathBuf)>> {
        Ok(numbered(&self.dir, "step-")?
            .into_iter()
            .filter(|(_, p)| Self::trainer_dir(p).join(TRAINER_STATE).is_file())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_and_read_back_the_same_way() {
        let tmp = tempfile::tempdir().unwrap();
        let l = RunLayout::new(tmp.path());
        let (id, run) = l.rl_run(2, 1);
        assert_eq!(id, "iter-2/run-1");
        assert_eq!(run.dir(), tmp.path().join("iter-2/run-1"));
        assert_eq!(l.log(&id), tmp.path().join("logs/iter-2-run-1.log"));
        assert_eq!(
            l.step_config(&id),
            tmp.path().join("configs/iter-2-run-1.json")
        );
        assert_eq!(
            l.slerp_eta(1, 0.3),
            tmp.path().join("iter-1/slerp/eta-0.30")
        );
        // Complete checkpoints only: a step folder without trainer/state.json, or a staging
        // folder, is not one.
        for s in [3, 10] {
            std::fs::create_dir_all(RlRunLayout::trainer_dir(&run.step(s))).unwrap();
            std::fs::write(
                RlRunLayout::trainer_dir(&run.step(s)).join(TRAINER_STATE),
                "{}",
            )
            .unwrap();
        }
        std::fs::create_dir_all(run.step(20).join("policy")).unwrap();
        std::fs::create_dir_all(run.dir().join(".step-000030.warp-tmp-1-0")).unwrap();
        let got: Vec<u64> = run
            .checkpoints()
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(got, [3, 10]);
        std::fs::create_dir_all(l.slerp_eta(2, 1.0)).unwrap();
        std::fs::create_dir_all(l.slerp_eta(2, 0.0)).unwrap();
        std::fs::create_dir_all(l.iteration(1)).unwrap();
        std::fs::create_dir_all(tmp.path().join("iter-x")).unwrap();
        assert_eq!(l.iterations().unwrap(), [1, 2]);
        let grid: Vec<f64> = l
            .slerp_grid(2)
            .unwrap()
            .into_iter()
            .map(|(e, _)| e)
            .collect();
        assert_eq!(grid, [0.0, 1.0]);
        let runs: Vec<u32> = l.rl_runs(2).unwrap().into_iter().map(|(m, _)| m).collect();
        assert_eq!(runs, [1]);
        assert!(l.init_anchor_runs().unwrap().is_empty());
    }
}
