//! `--as adapter|full` of the merge tools (slerp, lerp, liti, ema): merges of PEFT LoRA adapters
//! of one base written as PEFT adapters, computed in rank space from the factors
//! ([`crate::engine::lora`]), or as full checkpoints by the streaming engine.

use std::path::Path;

use super::common::{
    check_new_dir, check_new_file, finish, options, run_merge, EngineArgs, OutputArgs,
};
use super::progress::Progress;
use crate::engine::job;
use crate::engine::lora::{merge_opened, why_not_rank_space};
use crate::error::{Error, Result};
use crate::merge::Method;
use crate::progress::Reporter;

/// What a merge of LoRA adapters writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputKind {
    /// `adapter` when every input but a full --init is a PEFT LoRA adapter of one base and none
    /// saves full tensors; `full` otherwise.
    Auto,
    /// PEFT LoRA adapters of rank Σr holding the merge exactly, computed from the adapters'
    /// factors (no full weight is read or written).
    Adapter,
    /// Full checkpoints (base + merged delta), streamed.
    Full,
}

/// `--as`.
#[derive(clap::Args, Debug)]
pub struct AsArgs {
    /// With PEFT LoRA adapter inputs: write PEFT adapters (`adapter`: rank Σr, the exact merge,
    /// angles from the factors) or full checkpoints (`full`). Default `auto`: adapters when every
    /// input but --init is a LoRA adapter of one base without modules_to_save, else full.
    #[arg(long = "as", value_enum, default_value_t = OutputKind::Auto, value_name = "KIND")]
    pub kind: OutputKind,
}

/// [`run_merge`], or a rank-space merge written as adapters when `--as` asks for it (or allows
/// it and the inputs are adapters of one base).
pub fn run_merge_as(
    method: &dyn Method,
    inputs: Vec<(String, &str)>,
    kind: OutputKind,
    out: &OutputArgs,
    eng: &EngineArgs,
    report: Option<&Path>,
) -> Result<()> {
    if kind == OutputKind::Full {
        return run_merge(method, inputs, out, eng, report);
    }
    // Decided from the paths first (hub ids: from their downloaded snapshots): a merge of full
    // checkpoints opens nothing twice.
    let progress = Progress::new(eng.quiet);
    if let Some(spec) = not_an_adapter(&inputs, &progress) {
        if kind == OutputKind::Adapter {
            return Err(Error::Usage(format!(
                "--as adapter: {spec} is not a PEFT LoRA adapter; a merge is written as an \
                 adapter only when every input but --init is an adapter of one base (use --as \
                 full)"
            )));
        }
        return run_merge(method, inputs, out, eng, report);
    }
    if !eng.dry_run {
        check_new_dir("-o", &out.output, out.force)?;
        if let Some(r) = report {
            check_new_file("--report", r)?;
        }
    }
    let opened = job::open_inputs(inputs.clone(), &progress)?;
    if let Some(why) = why_not_rank_space(&opened) {
        if kind == OutputKind::Adapter {
            return Err(Error::Usage(format!("--as adapter: {why} (use --as full)")));
        }
        progress.message(&format!("note: writing full checkpoints: {why}"));
        drop(opened);
        return run_merge(method, inputs, out, eng, report);
    }
    let o = options(out, eng, report);
    let outcome = job::with_threads(o.threads, || merge_opened(method, &opened, &o, &progress))?;
    finish(outcome, out, eng, &progress)
}

/// The first input (besides a full init) that is not a PEFT adapter (a local folder, or a hub
/// repo holding one), if any.
fn not_an_adapter(inputs: &[(String, &str)], reporter: &dyn Reporter) -> Option<String> {
    let hub = crate::hub::HubOptions::from_env();
    let adapter = |spec: &str| crate::engine::is_adapter_spec(spec, &hub, reporter);
    inputs
        .iter()
        .filter(|(spec, role)| *role != "init" || adapter(spec))
        .find(|(spec, _)| !adapter(spec))
        .map(|(spec, _)| spec.clone())
}
