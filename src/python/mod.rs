//! The Python extension module `warp_align._native` (feature `python`; built by maturin from
//! pyproject.toml). Thin bindings over the library's entry points, the ones the CLI calls: the
//! merges run the library's [`crate::engine::job::merge`] and
//! [`crate::engine::recipe_job::merge_recipe`], as `warp slerp`/`lerp`/`liti`/`ema`/`merge` do,
//! `inspect` the same checks as `warp inspect`, and `rl_schema` is [`crate::rl::schema`]. Every
//! call releases the GIL while it works, reports progress to Python and stops cleanly on
//! KeyboardInterrupt ([`pump`]); errors are typed exceptions ([`errors`]). The Python-facing
//! API, its docstrings and stubs are in python/warp_align/.

mod errors;
mod pump;

use std::path::PathBuf;

use pyo3::prelude::*;

use crate::device::Device;
use crate::engine::job::{self, Options, Outcome};
use crate::error::{Error, IoContext, Result};
use crate::io::OutDType;
use crate::merge::Grouping;
use crate::progress::Reporter;

/// The merge options' keywords, for the library's messages.
const NAMES: job::Names = job::Names {
    out: "out",
    report: "report",
    device: "device",
    force: "force=True",
    sep: "=",
    quote: "'",
};

/// A bad argument `name` (an ArgumentError naming it).
fn bad(name: &str, msg: String) -> PyErr {
    errors::to_py(Error::setting(name, msg))
}

fn size(name: &str, s: &str) -> PyResult<u64> {
    crate::io::writer::parse_size(s).map_err(|e| bad(name, e))
}

/// The keywords every merge takes (warp_align's `_options`: one dict, the same for all).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct Common {
    out: PathBuf,
    force: bool,
    dtype: String,
    max_shard_size: String,
    memory_budget: String,
    device: String,
    threads: Option<usize>,
    allow_nonfinite: bool,
    dry_run: bool,
    progress: Option<Py<PyAny>>,
}

impl Common {
    /// The library's options, checked before any work, and the progress object.
    fn split(self, report: Option<PathBuf>) -> PyResult<(Options, Option<Py<PyAny>>)> {
        let max = crate::device::max_threads();
        if let Some(n) = self.threads.filter(|&n| n == 0 || n > max) {
            return Err(bad(
                "threads",
                format!("must be between 1 and {max}, got {n}"),
            ));
        }
        let o = Options {
            out: self.out,
            force: self.force,
            dtype: self
                .dtype
                .parse::<OutDType>()
                .map_err(|e| bad("dtype", e))?,
            max_shard_size: size("max_shard_size", &self.max_shard_size)?,
            memory_budget: size("memory_budget", &self.memory_budget)?,
            device: self
                .device
                .parse::<Device>()
                .map_err(|e| bad("device", e))?,
            threads: self.threads,
            allow_nonfinite: self.allow_nonfinite,
            dry_run: self.dry_run,
            report,
            names: &NAMES,
        };
        Ok((o, self.progress))
    }
}

/// (output folders, report as JSON text, dry run's plan as JSON text) of a merge.
type Merged = (Vec<String>, Option<String>, Option<String>);

fn json(v: &serde_json::Value) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Internal(e.to_string()))
}

/// Runs `work` (a merge through the library's [`job`]) as every binding does: options checked,
/// the GIL released ([`pump::run`]), the outcome as [`Merged`].
fn merge_with<F>(py: Python<'_>, c: Common, report: Option<PathBuf>, work: F) -> PyResult<Merged>
where
    F: FnOnce(&Options, &dyn Reporter) -> Result<Outcome> + Send,
{
    let (o, progress) = c.split(report)?;
    pump::run(py, progress, move |r| match work(&o, r)? {
        Outcome::Planned { json: plan, .. } => Ok((Vec::new(), None, Some(json(&plan)?))),
        Outcome::Done(s) => Ok((
            s.outputs.iter().map(|p| p.display().to_string()).collect(),
            s.report.as_ref().map(json).transpose()?,
            None,
        )),
    })
}

/// (init, "init") then (policy, "model") for each policy.
fn with_init(init: String, policies: Vec<String>) -> Vec<(String, &'static str)> {
    let mut inputs = vec![(init, "init")];
    inputs.extend(policies.into_iter().map(|m| (m, "model")));
    inputs
}

fn grouping(angle: &str) -> PyResult<Grouping> {
    match angle {
        "tensor" => Ok(Grouping::Tensor),
        "layer" => Ok(Grouping::Layer),
        "global" => Ok(Grouping::Global),
        _ => Err(bad(
            "angle",
            format!("expected tensor, layer or global, got '{angle}'"),
        )),
    }
}

/// SLERP of task vectors with fused LITI (`warp slerp`).
#[pyfunction]
#[pyo3(signature = (policies, init, etas, angle, lerp_threshold, report, options))]
#[allow(clippy::too_many_arguments)]
fn slerp(
    py: Python<'_>,
    policies: Vec<String>,
    init: String,
    etas: Vec<f64>,
    angle: &str,
    lerp_threshold: f64,
    report: Option<PathBuf>,
    options: Common,
) -> PyResult<Merged> {
    let g = grouping(angle)?;
    merge_with(py, options, report, move |o, r| {
        let method = crate::merge::slerp::Slerp::new(policies.len(), etas, g, lerp_threshold)?;
        job::merge(&method, with_init(init, policies), o, r)
    })
}

/// LERP (task arithmetic) with fused LITI (`warp lerp`).
#[pyfunction]
#[pyo3(signature = (policies, init, weights, etas, options))]
fn lerp(
    py: Python<'_>,
    policies: Vec<String>,
    init: String,
    weights: Vec<f64>,
    etas: Vec<f64>,
    options: Common,
) -> PyResult<Merged> {
    merge_with(py, options, None, move |o, r| {
        let method = crate::merge::lerp::Lerp::new(policies.len(), weights, etas)?;
        job::merge(&method, with_init(init, policies), o, r)
    })
}

/// LITI towards the init (`warp liti`).
#[pyfunction]
#[pyo3(signature = (init, merged_model, etas, options))]
fn liti(
    py: Python<'_>,
    init: String,
    merged_model: String,
    etas: Vec<f64>,
    options: Common,
) -> PyResult<Merged> {
    merge_with(py, options, None, move |o, r| {
        let method = crate::merge::liti::Liti::new(etas)?;
        let inputs = vec![(init, "init"), (merged_model, "merged")];
        job::merge(&method, inputs, o, r)
    })
}

/// EMA over a sequence of checkpoints (`warp ema`).
#[pyfunction]
#[pyo3(signature = (checkpoints, mu, options))]
fn ema(py: Python<'_>, checkpoints: Vec<String>, mu: f64, options: Common) -> PyResult<Merged> {
    merge_with(py, options, None, move |o, r| {
        let method = crate::merge::ema::Ema::new(mu, checkpoints.len())?;
        let inputs = checkpoints.into_iter().map(|c| (c, "checkpoint")).collect();
        job::merge(&method, inputs, o, r)
    })
}

/// A mergekit recipe (`warp merge`): `path` (read here, so that a missing file is a FileError
/// naming it) or `text` (YAML; `name` names it in messages).
#[pyfunction]
#[pyo3(signature = (path, text, name, seed, options))]
fn merge(
    py: Python<'_>,
    path: Option<PathBuf>,
    text: Option<String>,
    name: String,
    seed: u64,
    options: Common,
) -> PyResult<Merged> {
    merge_with(py, options, None, move |o, r| {
        let text = match (path, text) {
            (Some(p), _) => std::fs::read_to_string(&p).at(&p)?,
            (None, Some(t)) => t,
            (None, None) => return Err(Error::setting("recipe", "missing")),
        };
        crate::engine::recipe_job::merge_recipe(&text, &name, seed, o, r)
    })
}

/// `warp inspect --json`: validates the checkpoint completely, returns the JSON text.
#[pyfunction]
#[pyo3(signature = (path, progress))]
fn inspect(py: Python<'_>, path: String, progress: Option<Py<PyAny>>) -> PyResult<String> {
    pump::run(py, progress, move |r| {
        let local = crate::builtin::resolve_spec(&path)?;
        let hub = crate::hub::HubOptions::from_env();
        let ck = crate::hub::open_checkpoint(&local, &hub, r)?;
        ck.check_strict()?;
        crate::io::verify::check_finite_values(&ck, r)?;
        serde_json::to_string(&crate::io::verify::inspect_json(&ck))
            .map_err(|e| Error::Internal(e.to_string()))
    })
}

/// The RL settings' schema (`warp rl --print-schema`), as JSON text.
#[pyfunction]
fn rl_schema() -> String {
    crate::rl::schema::rl_schema().to_string()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    m.add_function(wrap_pyfunction!(slerp, m)?)?;
    m.add_function(wrap_pyfunction!(lerp, m)?)?;
    m.add_function(wrap_pyfunction!(liti, m)?)?;
    m.add_function(wrap_pyfunction!(ema, m)?)?;
    m.add_function(wrap_pyfunction!(merge, m)?)?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_function(wrap_pyfunction!(rl_schema, m)?)?;
    Ok(())
}
