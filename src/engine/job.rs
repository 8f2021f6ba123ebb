//! One merge as the front ends run it — `warp slerp`/`lerp`/`liti`/`ema`/`convert` and the
//! Python package's functions: the destination checked before any input is read, the inputs
//! opened (local paths, `builtin:…`, hub ids, LoRA adapters), the plan, then either the plan
//! itself (a dry run) or the engine and the report file. The front ends keep what is theirs:
//! argument parsing, the terminal or Python's progress, stdout, the hub upload. `warp merge`'s
//! recipes: [`super::recipe_job`].

use std::path::{Path, PathBuf};

use super::{backend_for, run, Input, MergeJob, Plan, Summary};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::io::writer::{check_destination, human_bytes};
use crate::io::OutDType;
use crate::merge::Method;
use crate::progress::Reporter;

/// How the caller names the arguments in messages: the CLI's flags (`-o out: exists (use
/// --force to replace it)`) or Python's keywords (`out='out': exists (use force=True …)`); each
/// front end has its own (`cli::common::NAMES`, the Python module's `NAMES`).
pub struct Names {
    pub out: &'static str,
    pub report: &'static str,
    pub device: &'static str,
    /// How to ask for a replacement of an existing output.
    pub force: &'static str,
    /// Between a name and its value: " " (flags) or "=" (keywords).
    pub sep: &'static str,
    /// Around a value: "" (flags) or "'" (keywords).
    pub quote: &'static str,
}

impl Names {
    /// `-o out` / `out='out'`: an argument with its value, as the caller wrote it.
    pub fn arg(&self, name: &str, value: impl std::fmt::Display) -> String {
        format!("{name}{}{q}{value}{q}", self.sep, q = self.quote)
    }

    /// A bad argument: exit code 2 in the CLI, ArgumentError in Python.
    fn bad(&self, name: &str, value: &Path, msg: impl Into<String>) -> Error {
        Error::setting(self.arg(name, value.display()), msg)
    }
}

/// The output and engine options of every merge (the CLI's OutputArgs and EngineArgs, Python's
/// keywords).
pub struct Options {
    pub out: PathBuf,
    pub force: bool,
    pub dtype: OutDType,
    pub max_shard_size: u64,
    pub memory_budget: u64,
    pub device: Device,
    /// CPU threads of this merge (a pool of its own), else rayon's pool.
    pub threads: Option<usize>,
    pub allow_nonfinite: bool,
    /// Plan only: nothing is read beyond the headers, nothing written.
    pub dry_run: bool,
    /// Where to write the per-tensor norms and angles (JSON), as `--report`.
    pub report: Option<PathBuf>,
    pub names: &'static Names,
}

/// What a merge did.
pub enum Outcome {
    /// A dry run: the plan as the table `--dry-run` prints and as `--dry-run --json`'s object.
    Planned {
        table: String,
        json: serde_json::Value,
    },
    Done(Summary),
}

impl Outcome {
    pub(crate) fn planned<P: serde::Serialize>(plan: &P, table: String) -> Result<Outcome> {
        let json = serde_json::to_value(plan).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(Outcome::Planned { table, json })
    }
}

/// The output folder `name` names can be written: it does not exist (or `force`), and its
/// nearest existing ancestor is a folder (so the parents can be created). Checked before any
/// input is read.
pub fn check_new_dir(names: &Names, name: &str, dir: &Path, force: bool) -> Result<()> {
    if dir.exists() && !force {
        let how = format!("exists (use {} to replace it)", names.force);
        return Err(names.bad(name, dir, how));
    }
    let mut p = parent_of(dir);
    loop {
        if p.exists() {
            if p.is_dir() {
                return Ok(());
            }
            return Err(names.bad(name, dir, format!("{} is not a folder", p.display())));
        }
        match p.parent() {
            Some(q) if !q.as_os_str().is_empty() => p = q.to_path_buf(),
            _ => return Ok(()),
        }
    }
}

/// The output file `name` names can be written: its parent is an existing folder and it is not
/// a folder itself. Checked before any input is read.
pub fn check_new_file(names: &Names, name: &str, file: &Path) -> Result<()> {
    if file.is_dir() {
        return Err(names.bad(name, file, "is a folder, not a file"));
    }
    let parent = parent_of(file);
    if !parent.is_dir() {
        let msg = format!("the folder {} does not exist", parent.display());
        return Err(names.bad(name, file, msg));
    }
    Ok(())
}

fn parent_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Opens the inputs ((spec, role) pairs: local paths, `builtin:…` files, hub ids, LoRA
/// adapters), their warnings as messages.
pub fn open_inputs(inputs: Vec<(String, &str)>, reporter: &dyn Reporter) -> Result<Vec<Input>> {
    let hub = crate::hub::HubOptions::from_env();
    let mut opened = Vec::with_capacity(inputs.len());
    // A LoRA adapter's base: the init, or else the one its config names.
    let init = inputs
        .iter()
        .find(|(_, role)| *role == "init")
        .map(|(s, _)| s.clone());
    for (spec, role) in inputs {
        let input = Input::open(spec, role, init.as_deref(), &hub, reporter)?;
        for w in &input.ckpt.warnings {
            reporter.message(&format!("warning: {w}"));
        }
        opened.push(input);
    }
    Ok(opened)
}

/// Runs `work` in a pool of `threads` threads of its own (the process-wide one may already be
/// built, e.g. by an earlier call from Python), or in rayon's pool.
pub fn with_threads<T: Send>(
    threads: Option<usize>,
    work: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    match threads {
        None => work(),
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .map_err(|e| Error::Internal(format!("thread pool of {n}: {e}")))?
            .install(work),
    }
}

/// Runs `method` over `inputs` ((spec, role) pairs, in the method's order). Every output path
/// is checked before the first input byte is read.
pub fn merge(
    method: &dyn Method,
    inputs: Vec<(String, &str)>,
    o: &Options,
    reporter: &dyn Reporter,
) -> Result<Outcome> {
    if !o.dry_run {
        check_new_dir(o.names, o.names.out, &o.out, o.force)?;
        if let Some(r) = &o.report {
            check_new_file(o.names, o.names.report, r)?;
        }
    }
    with_threads(o.threads, || {
        merge_opened(method, open_inputs(inputs, reporter)?, o, reporter)
    })
}

/// [`merge`] of inputs already opened (the caller has checked the destination is new).
pub(crate) fn merge_opened(
    method: &dyn Method,
    opened: Vec<Input>,
    o: &Options,
    reporter: &dyn Reporter,
) -> Result<Outcome> {
    let paths: Vec<&Path> = opened.iter().map(|i| i.ckpt.path.as_path()).collect();
    check_destination(&o.out, &paths)?;
    if let Some(r) = &o.report {
        check_destination(r, &paths)?;
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
    if o.dry_run {
        return Outcome::planned(&plan, plan.table());
    }
    if let (false, Some(x)) = (o.force, plan.outputs.iter().find(|x| x.exists())) {
        let how = format!("exists (use {} to replace it)", o.names.force);
        return Err(o.names.bad(o.names.out, x, how));
    }
    let backend = backend_for(o.device)?;
    reporter.message(&format!(
        "{}: {} input(s) → {} output(s), {} tensors, read {}, write {}, on {}",
        method.name(),
        opened.len(),
        plan.outputs.len(),
        plan.tensors.len(),
        human_bytes(plan.read_bytes),
        human_bytes(plan.write_bytes),
        backend.name()
    ));
    let started = std::time::Instant::now();
    let summary = run(&job, &plan, backend.as_ref(), reporter)?;
    let secs = started.elapsed().as_secs_f64();
    reporter.message(&format!(
        "done in {secs:.1} s ({}/s read)",
        human_bytes((summary.bytes_read as f64 / secs.max(1e-9)) as u64)
    ));
    if let Some(rep) = &summary.report {
        reporter.message(crate::merge::report::summary_table(rep).trim_end());
        if let Some(path) = &o.report {
            let text =
                serde_json::to_string_pretty(rep).map_err(|e| Error::Internal(e.to_string()))?;
            crate::io::write_file_atomic(path, (text + "\n").as_bytes())?;
        }
    }
    Ok(Outcome::Done(summary))
}
