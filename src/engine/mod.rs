//! The streaming executor (DESIGN.md §1). For each tensor, in the init model's on-disk order:
//! an optional statistics pass (Gram of the task vectors, f64, fixed block order), then the
//! combine pass writing K outputs — chunk by chunk from the mapped inputs, with the chunk size
//! derived from the memory budget, so peak memory does not grow with the model.
//!
//! - [`plan`]: what a job will do and the memory model (`--dry-run`);
//! - `sink`: the outputs, each written by its own thread (computing chunk i+1 overlaps writing
//!   chunk i), atomically;
//! - `stream`: the passes themselves, with every chunk's inputs and outputs checked before use;
//! - [`job`] and [`recipe_job`]: one merge (or recipe) as the CLI and Python run it: the checks
//!   before any input is read, the inputs opened, the plan, then the plan alone (a dry run) or
//!   the run; [`recipe`]: the recipes' executor.
//! - [`lora`]: merges of PEFT LoRA adapters of one base in rank space (statistics and outputs
//!   from the factors, written as PEFT adapters; `--as adapter`).
//!
//! The engine knows no method: coefficients, validation and report entries come from the
//! [`Method`](crate::merge::Method) trait.

pub mod backend;
pub mod cpu;
#[cfg_attr(feature = "cuda", path = "cuda_real.rs")]
pub mod cuda;
mod input;
pub mod job;
pub mod lora;
pub mod plan;
pub mod recipe;
pub mod recipe_job;
pub mod recipe_lora;
mod sink;
mod stream;

use std::path::PathBuf;

pub use crate::device::Device;
pub use backend::{backend_for, Backend, NonFinite, GRAM_BLOCK};
pub use input::{is_adapter_spec, Input, Source};
pub use plan::{Plan, PlannedTensor, PROGRAM_BYTES};

use crate::error::{Error, Result};
use crate::io::guard::ReadGuard;
use crate::io::OutDType;
use crate::merge::Method;
use crate::progress::Reporter;

/// Everything a merge needs. Input 0 is the init/base model: its tensor order, companion files
/// and (by default) dtypes define the outputs. The inputs' float dtypes may differ, tensor by
/// tensor: every input is decoded to f32, combined in f32, and the result encoded once.
pub struct MergeJob<'a> {
    pub inputs: &'a [Input],
    pub method: &'a dyn Method,
    pub dest: PathBuf,
    pub out_dtype: OutDType,
    pub max_shard_size: u64,
    pub force: bool,
    /// Working-memory budget in bytes (chunk buffers and mapped input pages).
    pub budget: u64,
    pub allow_nonfinite: bool,
}

/// Inputs must agree on tensor names and shapes; a tensor may have different float dtypes in
/// different inputs (the merge computes in f32), but a non-float one must have the same dtype
/// everywhere (it is copied and must be equal). Lists the first mismatches.
pub fn check_compatible(inputs: &[Input]) -> Result<()> {
    const SHOW: usize = 10;
    let base = &inputs[0];
    let mut problems = Vec::new();
    for other in &inputs[1..] {
        for t in base.ckpt.tensors() {
            // Named as in the base model; read where input 0 reads it (an adapter's own tensor).
            let name = &t.name;
            let t = base.source(name).map_or(t, |s| s.info);
            match other.source(name).map(|s| s.info) {
                None => problems.push(format!(
                    "{}: tensor '{}' is missing (present in {})",
                    other.spec, name, base.spec
                )),
                Some(o) if o.shape != t.shape => problems.push(format!(
                    "{}: tensor '{}' has shape {:?}, but {:?} in {}",
                    other.spec, name, o.shape, t.shape, base.spec
                )),
                Some(o) if o.dtype != t.dtype && !(o.dtype.is_float() && t.dtype.is_float()) => {
                    problems.push(format!(
                        "{}: tensor '{}' is {}, but {} in {} (only float tensors may differ in \
                         dtype: non-float ones are copied and must be equal)",
                        other.spec, name, o.dtype, t.dtype, base.spec
                    ))
                }
                _ => {}
            }
        }
        for o in other.ckpt.tensors() {
            if base.ckpt.get(&o.name).is_none() {
                problems.push(format!(
                    "{}: tensor '{}' is not in {}",
                    other.spec, o.name, base.spec
                ));
            }
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let total = problems.len();
    // The first line says what is wrong (it is all a one-line log shows).
    let mut msg = match total {
        1 => format!("the inputs do not match: {}", problems[0]),
        _ => format!(
            "the inputs do not match ({total} problems; the first: {})",
            problems[0]
        ),
    };
    for p in problems.iter().take(SHOW).skip(1) {
        msg += "\n  ";
        msg += p;
    }
    if total > SHOW {
        msg += &format!("\n  … and {} more", total - SHOW);
    }
    Err(Error::Mismatch(msg))
}

/// What a run produced.
pub struct Summary {
    pub outputs: Vec<PathBuf>,
    /// Per-tensor and per-group norms and angles of the task vectors (methods with statistics).
    pub report: Option<serde_json::Value>,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

/// Runs a planned job. All outputs appear at once at the end, or none does.
pub fn run(
    job: &MergeJob,
    plan: &Plan,
    backend: &dyn Backend,
    reporter: &dyn Reporter,
) -> Result<Summary> {
    for note in &plan.notes {
        reporter.message(&format!("note: {note}"));
    }
    let mut outputs = sink::Outputs::open(job, plan)?;
    for r in &outputs.reclaimed {
        reporter.message(&crate::io::writer::reclaimed_message(r));
    }
    // Reads of an input truncated under its mapping become an error naming it, not a crash.
    let guard = ReadGuard::new(
        job.inputs
            .iter()
            .flat_map(|i| i.shards().map(|s| (s.mapped(), s.path.as_path()))),
    );
    let cx = stream::Ctx {
        job,
        plan,
        backend,
        reporter,
        guard: &guard,
    };
    let streamed = stream::stream(&cx, &mut outputs.sinks).and_then(|r| {
        // A file changed after its last check but before its last read is seen here.
        for i in job.inputs {
            for s in i.shards() {
                s.check_unchanged()?;
            }
        }
        Ok(r)
    });
    let report = match streamed {
        Ok(r) => r,
        Err(e) => {
            // Dropping the writers and the staging removes every temporary folder.
            outputs.abort();
            return Err(e);
        }
    };
    outputs.finish()?;
    Ok(Summary {
        outputs: plan.outputs.clone(),
        report,
        bytes_read: plan.read_bytes,
        bytes_written: plan.write_bytes,
    })
}
