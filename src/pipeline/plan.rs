//! The plan of a pipeline: its steps (commands of the warp executable) and the config files of
//! its RL steps, built from a [`PipelineConfig`] in three parts: RL runs, merges, evaluation.

use std::path::{Path, PathBuf};

use clap::{Args, FromArgMatches};
use serde::{Deserialize, Serialize};

use super::{PipelineConfig, RunLayout};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::io::DType;
use crate::rl::settings::{given, Anchor, RlConfig};
use crate::slurm::StepKind;

/// One command of the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// The relative path of what it writes (`iter-1/run-2`, `iter-1/slerp`, `eval`).
    pub id: String,
    /// Steps that must be complete first.
    pub after: Vec<String>,
    /// The command line: the warp executable, then the command and its arguments.
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
    pub device: Option<Device>,
    /// The settings file the command reads (RL steps).
    pub config: Option<PathBuf>,
    /// What it does (rl, merge, eval, plot): a scheduler's resources are per kind.
    pub kind: StepKind,
    /// Steps with the same group can be scheduled as one job array: the RL runs of an
    /// iteration (`iter-i/rl`), the init-anchored runs (`init-anchor/rl`).
    pub array: Option<String>,
}

/// The steps, in an order that respects `after`, and the RL settings files they read.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub rl_configs: Vec<(PathBuf, RlConfig)>,
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The keys of an RL config the pipeline sets itself for every run.
const PIPELINE_KEYS: [&str; 10] = [
    "model",
    "prompts",
    "reward",
    "steps",
    "mu",
    "beta",
    "seed",
    "anchor",
    "save_every",
    "device",
];

/// What every RL run shares: the defaults, then the config's `rl` table, then its `rl_args`
/// flags. Neither may set a key the pipeline sets itself.
pub(super) fn rl_base(c: &PipelineConfig) -> Result<RlConfig> {
    let backend_flag = |a: &String| a == "--backend" || a.starts_with("--backend=");
    if c.rl.contains_key("backend") || c.rl_args.iter().any(backend_flag) {
        return Err(Error::setting(
            "rl.backend",
            "set by the pipeline for every run (use its key `trainer`)",
        ));
    }
    for key in c.rl.keys() {
        if PIPELINE_KEYS.contains(&key.as_str()) {
            return Err(Error::setting(
                format!("rl.{key}"),
                format!("set by the pipeline for every run (use its own key `{key}`)"),
            ));
        }
    }
    let cmd = RlConfig::augment_args(clap::Command::new("rl_args").no_binary_name(true));
    let m = cmd
        .try_get_matches_from(&c.rl_args)
        .map_err(|e| Error::setting("rl_args", first_line(&e.to_string())))?;
    let flags = RlConfig::from_arg_matches(&m)
        .map_err(|e| Error::setting("rl_args", first_line(&e.to_string())))?;
    if let Some(id) = given(&m)
        .iter()
        .find(|id| PIPELINE_KEYS.contains(&id.as_str()))
    {
        return Err(Error::setting(
            "rl_args",
            format!(
                "--{} is set by the pipeline for every run (use its key `{id}`)",
                id.replace('_', "-")
            ),
        ));
    }
    let origin = Path::new("pipeline config `rl`");
    let mut base = RlConfig::default().layered(&c.rl, &flags, &m, origin)?;
    base.backend = c.trainer;
    Ok(base)
}

fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or("")
        .trim_start_matches("error: ")
        .to_string()
}

/// Builds steps: the paths of one pipeline and the executable its steps run.
struct Builder<'a> {
    c: &'a PipelineConfig,
    layout: RunLayout,
    exe: String,
    /// `--threads N` for every command, when set.
    threads: Vec<String>,
    base: RlConfig,
    /// The RL runs train LoRA adapters (`lora = R`): their policies and merges are adapters.
    lora: bool,
    plan: Plan,
    /// RL runs so far (they take the devices in turn).
    runs: usize,
}

impl Builder<'_> {
    fn argv(&self, cmd: &str, args: impl IntoIterator<Item = String>) -> Vec<String> {
        let mut v = vec![self.exe.clone(), cmd.to_string()];
        v.extend(args);
        v
    }

    /// One RL run from `init`: its config file, `warp rl --config FILE -o DIR`, and the
    /// `--resume` command for an interrupted attempt.
    fn rl_step(
        &mut self,
        id: String,
        run: super::RlRunLayout,
        init: &str,
        seed: u64,
        anchor: Anchor,
        after: &[String],
    ) {
        let c = self.c;
        let device = c.devices[self.runs % c.devices.len()];
        self.runs += 1;
        let cfg = RlConfig {
            model: init.to_string(),
            prompts: c.prompts.clone(),
            reward: c.reward.clone(),
            steps: c.steps,
            mu: c.mu,
            beta: c.beta,
            seed,
            anchor,
            save_every: c.steps.div_ceil(c.checkpoints).max(1),
            device,
            ..self.base.clone()
        };
        let config = self.layout.step_config(&id);
        let mut argv = self.argv(
            "rl",
            [
                "--config".into(),
                s(&config),
                "-o".into(),
                s(run.dir()),
                "-q".into(),
            ],
        );
        argv.extend(self.threads.iter().cloned());
        let mut resume = self.argv("rl", ["--resume".into(), s(run.dir()), "-q".into()]);
        resume.extend(self.threads.iter().cloned());
        self.plan.rl_configs.push((config.clone(), cfg));
        // `iter-1/run-2` → `iter-1/rl`: the runs that start together.
        let array = id.rsplit_once('/').map(|(group, _)| format!("{group}/rl"));
        self.plan.steps.push(Step {
            kind: StepKind::Rl,
            array,
            log: self.layout.log(&id),
            after: after.to_vec(),
            argv,
            resume_argv: Some(resume),
            done: run.final_dir(),
            started: Some(run.run_json()),
            device: Some(device),
            config: Some(config),
            id,
        });
    }

    /// The RL runs of iteration `i` from `init` (and in iteration 1 the init-anchored ones);
    /// returns the ids and final policies of the EMA-anchored runs.
    fn rl_steps(&mut self, i: u32, init: &str, after: &[String]) -> (Vec<String>, Vec<String>) {
        let c = self.c;
        let (mut ids, mut policies) = (Vec::new(), Vec::new());
        for m in 1..=c.runs {
            let seed = c.seed + 100 * (i as u64 - 1) + m as u64;
            let (id, run) = self.layout.rl_run(i, m);
            ids.push(id.clone());
            policies.push(s(&run.final_model("policy")));
            self.rl_step(id, run, init, seed, Anchor::Ema, after);
        }
        if i == 1 && c.init_anchor_runs {
            for m in 1..=c.runs {
                let (id, run) = self.layout.init_anchor_run(m);
                self.rl_step(id, run, init, c.seed + m as u64, Anchor::Init, after);
            }
        }
        (ids, policies)
    }

    /// SLERP with fused LITI over the η grid, and LERP, of iteration `i`'s policies, written in
    /// `dtype`; returns the SLERP's step id. With LoRA the policies are PEFT adapters of `init`
    /// and the merges are computed in rank space and written as adapters (`--as adapter`), their
    /// factors in f32 whatever `dtype` (the full checkpoints made from them are in `dtype`).
    fn merge_steps(
        &mut self,
        i: u32,
        init: &str,
        policies: &[String],
        after: &[String],
        dtype: DType,
    ) -> String {
        let c = self.c;
        let (slerp_id, slerp_dir) = self.layout.slerp(i);
        let mut args = policies.to_vec();
        args.extend(["--init".into(), init.into(), "-o".into(), s(&slerp_dir)]);
        let mut dtype_args = vec!["--dtype".to_string(), dtype.name().to_ascii_lowercase()];
        if self.lora {
            dtype_args = ["--dtype", "f32", "--as", "adapter"]
                .map(String::from)
                .to_vec();
        }
        args.extend(dtype_args.iter().cloned());
        for e in c.eta_grid() {
            args.extend(["--eta".into(), e.to_string()]);
        }
        args.extend([
            "--report".into(),
            s(&self.layout.slerp_angles(i)),
            "-q".into(),
        ]);
        let slerp = merge_step(
            slerp_id.clone(),
            after.to_vec(),
            self.argv("slerp", args),
            slerp_dir,
            self.layout.log(&slerp_id),
        );
        let (lerp_id, lerp_dir) = self.layout.lerp(i);
        let mut args = policies.to_vec();
        args.extend([
            "--init".into(),
            init.into(),
            "-o".into(),
            s(&lerp_dir),
            "-q".into(),
        ]);
        args.extend(dtype_args);
        let lerp = merge_step(
            lerp_id.clone(),
            after.to_vec(),
            self.argv("lerp", args),
            lerp_dir,
            self.layout.log(&lerp_id),
        );
        self.plan.steps.extend([slerp, lerp]);
        slerp_id
    }

    /// Iteration `i`'s SLERP interpolated toward the SFT model over the η grid (`warp liti`):
    /// the paper's output front when `i` is the last iteration, and what iterations are
    /// compared on.
    /// With LoRA the SLERP is an adapter of the iteration's init, not of the SFT model: the
    /// front interpolates toward its full checkpoint (`merged`, made by [`Self::convert_step`]).
    fn front_step(&mut self, i: u32, merged: &Path, after: &str, dtype: DType) {
        let c = self.c;
        let (id, dir) = self.layout.front(i);
        let mut args = vec![
            "--init".into(),
            c.model.clone(),
            "--merged".into(),
            s(merged),
            "-o".into(),
            s(&dir),
        ];
        for e in c.eta_grid() {
            args.extend(["--eta".into(), e.to_string()]);
        }
        args.extend([
            "--dtype".into(),
            dtype.name().to_ascii_lowercase(),
            "-q".into(),
        ]);
        let log = self.layout.log(&id);
        let argv = self.argv("liti", args);
        let step = merge_step(id, vec![after.to_string()], argv, dir, log);
        self.plan.steps.push(step);
    }

    /// `warp convert ADAPTER -o DIR --dtype DTYPE`: a PEFT adapter folded into its base (the one
    /// its adapter_config.json names), streamed, as the full checkpoint `DIR`.
    fn convert_step(
        &mut self,
        (id, dir): (String, PathBuf),
        adapter: &Path,
        after: &str,
        dtype: DType,
    ) {
        let args = vec![
            s(adapter),
            "-o".into(),
            s(&dir),
            "--dtype".into(),
            dtype.name().to_ascii_lowercase(),
            "-q".into(),
        ];
        let log = self.layout.log(&id);
        let argv = self.argv("convert", args);
        let step = merge_step(id, vec![after.to_string()], argv, dir, log);
        self.plan.steps.push(step);
    }

    /// `warp eval` of the whole folder after every other step, then `warp plot`.
    fn eval_steps(&mut self) {
        let c = self.c;
        let all: Vec<String> = self.plan.steps.iter().map(|st| st.id.clone()).collect();
        let csv = self.layout.eval_csv();
        let mut args = vec![
            "--run".into(),
            s(self.layout.root()),
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
            "--temperature".into(),
            c.eval_temperature
                .unwrap_or(self.base.temperature)
                .to_string(),
            // Conversation prompts are rendered as the RL runs render them.
            "--chat-template".into(),
            self.base.chat_template.to_string(),
            "--device".into(),
            c.devices[0].to_string(),
            "-o".into(),
            s(&csv),
            "-q".into(),
        ];
        args.extend(self.threads.iter().cloned());
        let eval = Step {
            id: "eval".into(),
            after: all,
            argv: self.argv("eval", args),
            resume_argv: None,
            done: csv.clone(),
            started: None,
            log: self.layout.log("eval"),
            device: Some(c.devices[0]),
            config: None,
            kind: StepKind::Eval,
            array: None,
        };
        let svg = self.layout.front_svg();
        let title = format!(
            "WARP on {}: {} iteration(s), M = {}, T = {}",
            c.reward, c.iterations, c.runs, c.steps
        );
        let plot = Step {
            id: "plot".into(),
            after: vec!["eval".into()],
            argv: self.argv(
                "plot",
                [
                    s(&csv),
                    "-o".into(),
                    s(&svg),
                    "--title".into(),
                    title,
                    "-q".into(),
                ],
            ),
            resume_argv: None,
            done: svg,
            started: None,
            log: self.layout.log("plot"),
            device: None,
            config: None,
            kind: StepKind::Plot,
            array: None,
        };
        self.plan.steps.extend([eval, plot]);
    }
}

/// The plan of a pipeline whose steps run the warp executable `exe`.
pub fn plan(c: &PipelineConfig, exe: &Path) -> Result<Plan> {
    c.check()?;
    let base = rl_base(c)?;
    let mut b = Builder {
        c,
        layout: c.layout(),
        exe: s(exe),
        threads: if c.threads > 0 {
            vec!["--threads".into(), c.threads.to_string()]
        } else {
            Vec::new()
        },
        base: base.clone(),
        lora: base.lora.is_some(),
        plan: Plan {
            steps: Vec::new(),
            rl_configs: Vec::new(),
        },
        runs: 0,
    };
    // The RL runs save f32 policies (unless `save_dtype = "same"`); the merges read them next
    // to an init in its own dtype (they compute in f32 whatever the inputs' dtypes) and round
    // only their outputs to the target dtype.
    let sft = c.sft_dtype.unwrap_or(DType::F32);
    let target = c.merge_target(sft)?;
    let mut init = c.model.clone();
    let mut after: Vec<String> = Vec::new();
    for i in 1..=c.iterations {
        let (ids, policies) = b.rl_steps(i, &init, &after);
        let slerp_id = b.merge_steps(i, &init, &policies, &ids, target);
        if !b.lora {
            if i > 1 {
                b.front_step(i, &b.layout.slerp_eta(i, 1.0), &slerp_id, target);
            }
            init = s(&b.layout.slerp_eta(i, c.eta));
            after = vec![slerp_id];
            continue;
        }
        // LoRA: the merges are adapters of this iteration's init. The front needs the SLERP as
        // a full checkpoint (`warp liti` would read an adapter as a delta on its --init, the
        // SFT model); the next iteration trains on the LITI point folded into its base.
        if i > 1 {
            let (full_id, full) = b.layout.slerp_full(i);
            let slerp = b.layout.slerp_eta(i, 1.0);
            b.convert_step((full_id.clone(), full.clone()), &slerp, &slerp_id, target);
            b.front_step(i, &full, &full_id, target);
        }
        if i < c.iterations {
            let (init_id, dir) = b.layout.next_init(i);
            let liti = b.layout.slerp_eta(i, c.eta);
            b.convert_step((init_id.clone(), dir.clone()), &liti, &slerp_id, target);
            init = s(&dir);
            after = vec![init_id];
        }
    }
    b.eval_steps();
    Ok(b.plan)
}

/// A merge-kind step (SLERP, LERP, LITI, convert): runs `argv` after `after`, done when `done`
/// exists, logged to `log`; no resume command, device or config of its own.
fn merge_step(
    id: String,
    after: Vec<String>,
    argv: Vec<String>,
    done: PathBuf,
    log: PathBuf,
) -> Step {
    Step {
        id,
        after,
        argv,
        resume_argv: None,
        done,
        started: None,
        log,
        device: None,
        config: None,
        kind: StepKind::Merge,
        array: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rl_settings_come_from_the_rl_table_and_flags_but_not_pipeline_keys() {
        let mut c = PipelineConfig {
            output: "/o".into(),
            ..PipelineConfig::default()
        };
        c.rl.insert("batch".into(), 4.into());
        c.rl_args = vec!["-n".into(), "2".into(), "--lr".into(), "1e-4".into()];
        let p = plan(&c, Path::new("/bin/warp")).unwrap();
        let (path, cfg) = &p.rl_configs[0];
        assert_eq!(path, Path::new("/o/configs/iter-1-run-1.json"));
        assert_eq!((cfg.batch, cfg.n, cfg.lr), (4, 2, 1e-4));
        assert_eq!((cfg.steps, cfg.seed, cfg.save_every), (100, 2, 25));
        let st = &p.steps[0];
        assert_eq!(
            st.argv,
            [
                "/bin/warp",
                "rl",
                "--config",
                "/o/configs/iter-1-run-1.json",
                "-o",
                "/o/iter-1/run-1",
                "-q"
            ]
        );
        // Iteration 2 starts from iteration 1's LITI point.
        let it2 = p
            .rl_configs
            .iter()
            .find(|(p, _)| p.ends_with("iter-2-run-1.json"))
            .unwrap();
        assert_eq!(it2.1.model, "/o/iter-1/slerp/eta-0.50");

        c.rl_args = vec!["--steps".into(), "5".into()];
        let e = plan(&c, Path::new("w")).unwrap_err().to_string();
        assert!(e.contains("rl_args") && e.contains("--steps"), "{e}");
        c.rl_args = vec!["--batchh".into(), "5".into()];
        let e = plan(&c, Path::new("w")).unwrap_err().to_string();
        assert!(e.contains("rl_args") && e.contains("--batchh"), "{e}");
        c.rl_args.clear();
        c.rl.insert("mu".into(), 0.5.into());
        let e = plan(&c, Path::new("w")).unwrap_err().to_string();
        assert!(e.contains("rl.mu"), "{e}");
        c.rl.remove("mu");
        c.rl.insert("bacth".into(), 1.into());
        let e = plan(&c, Path::new("w")).unwrap_err().to_string();
        assert!(e.contains("bacth"), "{e}");
    }

    /// The steps of a 2-iteration LoRA pipeline: the merges are adapters (`--as adapter`,
    /// factors in f32), iteration 1's LITI point at `eta` is folded into its base
    /// (`iter-1/init`, the SFT dtype) and iteration 2 trains on it, the front reads iteration 2's
    /// SLERP as a full checkpoint, and nothing is made after the last SLERP that no step reads.
    #[test]
    fn a_lora_pipeline_merges_adapters_and_folds_the_next_init() {
        let mut c = PipelineConfig {
            output: "/o".into(),
            iterations: 2,
            init_anchor_runs: false,
            sft_dtype: Some(DType::BF16),
            ..PipelineConfig::default()
        };
        c.rl.insert("lora".into(), 4.into());
        let p = plan(&c, Path::new("w")).unwrap();
        let ids: Vec<&str> = p.steps.iter().map(|st| st.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "iter-1/run-1",
                "iter-1/run-2",
                "iter-1/slerp",
                "iter-1/lerp",
                "iter-1/init",
                "iter-2/run-1",
                "iter-2/run-2",
                "iter-2/slerp",
                "iter-2/lerp",
                "iter-2/slerp-full",
                "iter-2/front",
                "eval",
                "plot"
            ]
        );
        let step = |id: &str| p.steps.iter().find(|st| st.id == id).unwrap();
        let argv = |id: &str| step(id).argv[1..].join(" ");
        assert!(p.rl_configs.iter().all(|(_, cfg)| cfg.lora == Some(4)));
        for id in ["iter-1/slerp", "iter-1/lerp"] {
            let a = argv(id);
            assert!(
                a.starts_with(&format!(
                    "{} /o/iter-1/run-1/final/policy /o/iter-1/run-2/final/policy --init \
                     builtin:arith/model",
                    &id[7..]
                )) && a.contains("--dtype f32 --as adapter"),
                "{a}"
            );
        }
        assert_eq!(
            argv("iter-1/init"),
            "convert /o/iter-1/slerp/eta-0.50 -o /o/iter-1/init --dtype bf16 -q"
        );
        assert_eq!(step("iter-1/init").after, ["iter-1/slerp"]);
        assert_eq!(step("iter-2/run-1").after, ["iter-1/init"]);
        let it2 = p
            .rl_configs
            .iter()
            .find(|(p, _)| p.ends_with("iter-2-run-1.json"))
            .unwrap();
        assert_eq!(it2.1.model, "/o/iter-1/init");
        assert!(argv("iter-2/slerp").contains("--init /o/iter-1/init"));
        assert_eq!(
            argv("iter-2/slerp-full"),
            "convert /o/iter-2/slerp/eta-1.00 -o /o/iter-2/slerp-full --dtype bf16 -q"
        );
        let front = argv("iter-2/front");
        assert!(
            front.starts_with("liti --init builtin:arith/model --merged /o/iter-2/slerp-full"),
            "{front}"
        );
        assert_eq!(step("iter-2/front").after, ["iter-2/slerp-full"]);
        // Without LoRA: no conversions, the next init is the LITI point itself.
        c.rl.clear();
        let p = plan(&c, Path::new("w")).unwrap();
        assert!(p.steps.iter().all(|st| st.argv[1] != "convert"));
        assert!(p.steps.iter().all(|st| !st.argv.contains(&"--as".into())));
    }
}
