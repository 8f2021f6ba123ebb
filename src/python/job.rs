//! One merge, as the CLI runs it (src/cli/common.rs `run_merge`): output checks before any
//! input is read, the inputs opened (local, `builtin:…`, hub ids), the plan, the engine, the
//! report written atomically — minus the terminal (progress goes to a [`Reporter`]) and the
//! hub upload.

use std::path::{Path, PathBuf};

use crate::device::Device;
use crate::engine::{backend_for, run, Input, MergeJob, Plan, Summary};
use crate::error::{Error, Result};
use crate::io::OutDType;
use crate::merge::Method;
use crate::progress::Reporter;

/// The output and engine options of every merge (the CLI's OutputArgs and EngineArgs).
pub struct Options {
    pub out: PathBuf,
    pub force: bool,
    pub dtype: OutDType,
    pub max_shard_size: u64,
    pub memory_budget: u64,
    pub device: Device,
    pub threads: Option<usize>,
    pub allow_nonfinite: bool,
    /// Where to write the per-tensor norms and angles (JSON), as `--report`.
    pub report: Option<PathBuf>,
}

/// A bad argument `name` (ArgumentError in Python).
fn arg(name: &str, msg: String) -> Error {
    Error::setting(name, msg)
}

/// `out` can be created: absent (or `force`), its nearest existing ancestor a folder.
fn check_out(out: &Path, force: bool) -> Result<()> {
    if out.exists() && !force {
        return Err(arg(
            "out",
            format!("{}: exists (pass force=True to replace it)", out.display()),
        ));
    }
    let mut p = out.to_path_buf();
    while let Some(parent) = p.parent().filter(|q| !q.as_os_str().is_empty()) {
        if parent.exists() {
            if !parent.is_dir() {
                return Err(arg(
                    "out",
                    format!("{}: {} is not a folder", out.display(), parent.display()),
                ));
            }
            break;
        }
        p = parent.to_path_buf();
    }
    Ok(())
}

fn check_report(file: &Path) -> Result<()> {
    let parent = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if file.is_dir() || !parent.is_dir() {
        return Err(arg(
            "report",
            format!("{}: not a file in an existing folder", file.display()),
        ));
    }
    Ok(())
}

/// Runs `method` over `inputs` ((spec, role) pairs, in the method's order).
pub fn merge(
    method: &dyn Method,
    inputs: Vec<(String, &str)>,
    o: &Options,
    reporter: &dyn Reporter,
) -> Result<Summary> {
    check_out(&o.out, o.force)?;
    if let Some(r) = &o.report {
        check_report(r)?;
    }
    let hub = crate::hub::HubOptions::from_env();
    let mut opened = Vec::with_capacity(inputs.len());
    for (spec, role) in inputs {
        let local = crate::builtin::resolve_spec(&spec)?;
        let ckpt = crate::hub::open_checkpoint(&local, &hub, reporter)?;
        for w in &ckpt.warnings {
            reporter.message(&format!("warning: {w}"));
        }
        opened.push(Input {
            spec,
            role: role.to_string(),
            ckpt,
            // PEFT LoRA adapters as inputs: the CLI's (src/cli/common.rs), not bound here yet.
            adapter: None,
        });
    }
    let paths: Vec<&Path> = opened.iter().map(|i| i.ckpt.path.as_path()).collect();
    crate::io::writer::check_destination(&o.out, &paths)?;
    if let Some(r) = &o.report {
        crate::io::writer::check_destination(r, &paths)?;
    }
    let job = MergeJob {
        inputs: &opened,
        method,
        dest: o.out.clone(),
        out_dtype: o.dtype,
        max_shard_size: o.max_shard_size,
        force: o.force,
        budget: o.memory_budget,
        allow_nonfinite: o.allow_nonfinite,
    };
    let plan = Plan::new(&job)?;
    if !o.force {
        if let Some(x) = plan.outputs.iter().find(|x| x.exists()) {
            return Err(arg(
                "out",
                format!("{}: exists (pass force=True to replace it)", x.display()),
            ));
        }
    }
    let backend = backend_for(o.device)?;
    reporter.message(&format!(
        "{}: {} input(s) → {} output(s), {} tensors, read {}, write {}, on {}",
        method.name(),
        opened.len(),
        plan.outputs.len(),
        plan.tensors.len(),
        crate::io::writer::human_bytes(plan.read_bytes),
        crate::io::writer::human_bytes(plan.write_bytes),
        backend.name()
    ));
    let go = || run(&job, &plan, backend.as_ref(), reporter);
    let summary = match o.threads {
        None => go()?,
        // A pool of its own: the process-wide one may already be built.
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .map_err(|e| Error::Internal(format!("thread pool of {n}: {e}")))?
            .install(go)?,
    };
    if let Some(rep) = &summary.report {
        reporter.message(crate::merge::report::summary_table(rep).trim_end());
        if let Some(path) = &o.report {
            let text =
                serde_json::to_string_pretty(rep).map_err(|e| Error::Internal(e.to_string()))?;
            crate::io::write_file_atomic(path, (text + "\n").as_bytes())?;
        }
    }
    Ok(summary)
}
