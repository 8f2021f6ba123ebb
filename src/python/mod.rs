//! The Python extension module `warp_align._native` (feature `python`; built by maturin from
//! pyproject.toml). Thin bindings over the library's entry points, the ones the CLI calls: the
//! merges run the same [`crate::engine`] as `warp slerp`/`lerp`/`liti`/`ema`, `inspect` the same
//! checks as `warp inspect`, and `rl_schema` is [`crate::rl::schema`]. Every call releases the
//! GIL while it works, reports progress to Python and stops cleanly on KeyboardInterrupt
//! ([`pump`]); errors are typed exceptions ([`errors`]). The Python-facing API, its docstrings
//! and stubs are in python/warp_align/.

mod errors;
mod job;
mod pump;

use std::path::PathBuf;

use pyo3::prelude::*;

use crate::device::Device;
use crate::error::Error;
use crate::io::OutDType;
use crate::merge::Grouping;
use job::Options;

/// A bad argument `name` (an ArgumentError naming it).
fn bad(name: &str, msg: String) -> PyErr {
    errors::to_py(Error::setting(name, msg))
}

fn size(name: &str, s: &str) -> PyResult<u64> {
    crate::io::writer::parse_size(s).map_err(|e| bad(name, e))
}

/// The options every merge takes, checked before any work.
#[allow(clippy::too_many_arguments)]
fn options(
    out: PathBuf,
    force: bool,
    dtype: &str,
    max_shard_size: &str,
    memory_budget: &str,
    device: &str,
    threads: Option<usize>,
    allow_nonfinite: bool,
    report: Option<PathBuf>,
) -> PyResult<Options> {
    let max = crate::device::max_threads();
    if let Some(n) = threads.filter(|&n| n == 0 || n > max) {
        return Err(bad(
            "threads",
            format!("must be between 1 and {max}, got {n}"),
        ));
    }
    Ok(Options {
        out,
        force,
        dtype: dtype.parse::<OutDType>().map_err(|e| bad("dtype", e))?,
        max_shard_size: size("max_shard_size", max_shard_size)?,
        memory_budget: size("memory_budget", memory_budget)?,
        device: device.parse::<Device>().map_err(|e| bad("device", e))?,
        threads,
        allow_nonfinite,
        report,
    })
}

/// (output folders, report as JSON text) of a finished merge.
type Merged = (Vec<String>, Option<String>);

fn merged(s: crate::engine::Summary) -> Merged {
    let report = s
        .report
        .as_ref()
        .map(|r| serde_json::to_string(r).unwrap_or_default());
    (
        s.outputs.iter().map(|p| p.display().to_string()).collect(),
        report,
    )
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
#[pyo3(signature = (policies, init, out, etas, angle, lerp_threshold, force, dtype, max_shard_size, memory_budget, device, threads, allow_nonfinite, report, progress))]
#[allow(clippy::too_many_arguments)]
fn slerp(
    py: Python<'_>,
    policies: Vec<String>,
    init: String,
    out: PathBuf,
    etas: Vec<f64>,
    angle: &str,
    lerp_threshold: f64,
    force: bool,
    dtype: &str,
    max_shard_size: &str,
    memory_budget: &str,
    device: &str,
    threads: Option<usize>,
    allow_nonfinite: bool,
    report: Option<PathBuf>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Merged> {
    let o = options(
        out,
        force,
        dtype,
        max_shard_size,
        memory_budget,
        device,
        threads,
        allow_nonfinite,
        report,
    )?;
    let g = grouping(angle)?;
    pump::run(py, progress, move |r| {
        let method = crate::merge::slerp::Slerp::new(policies.len(), etas, g, lerp_threshold)?;
        let mut inputs = vec![(init, "init")];
        inputs.extend(policies.into_iter().map(|m| (m, "model")));
        job::merge(&method, inputs, &o, r).map(merged)
    })
}

/// LERP (task arithmetic) with fused LITI (`warp lerp`).
#[pyfunction]
#[pyo3(signature = (policies, init, out, weights, etas, force, dtype, max_shard_size, memory_budget, device, threads, allow_nonfinite, progress))]
#[allow(clippy::too_many_arguments)]
fn lerp(
    py: Python<'_>,
    policies: Vec<String>,
    init: String,
    out: PathBuf,
    weights: Vec<f64>,
    etas: Vec<f64>,
    force: bool,
    dtype: &str,
    max_shard_size: &str,
    memory_budget: &str,
    device: &str,
    threads: Option<usize>,
    allow_nonfinite: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<Merged> {
    let o = options(
        out,
        force,
        dtype,
        max_shard_size,
        memory_budget,
        device,
        threads,
        allow_nonfinite,
        None,
    )?;
    pump::run(py, progress, move |r| {
        let method = crate::merge::lerp::Lerp::new(policies.len(), weights, etas)?;
        let mut inputs = vec![(init, "init")];
        inputs.extend(policies.into_iter().map(|m| (m, "model")));
        job::merge(&method, inputs, &o, r).map(merged)
    })
}

/// LITI towards the init (`warp liti`).
#[pyfunction]
#[pyo3(signature = (init, merged_model, out, etas, force, dtype, max_shard_size, memory_budget, device, threads, allow_nonfinite, progress))]
#[allow(clippy::too_many_arguments)]
fn liti(
    py: Python<'_>,
    init: String,
    merged_model: String,
    out: PathBuf,
    etas: Vec<f64>,
    force: bool,
    dtype: &str,
    max_shard_size: &str,
    memory_budget: &str,
    device: &str,
    threads: Option<usize>,
    allow_nonfinite: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<Merged> {
    let o = options(
        out,
        force,
        dtype,
        max_shard_size,
        memory_budget,
        device,
        threads,
        allow_nonfinite,
        None,
    )?;
    pump::run(py, progress, move |r| {
        let method = crate::merge::liti::Liti::new(etas)?;
        let inputs = vec![(init, "init"), (merged_model, "merged")];
        job::merge(&method, inputs, &o, r).map(merged)
    })
}

/// EMA over a sequence of checkpoints (`warp ema`).
#[pyfunction]
#[pyo3(signature = (checkpoints, mu, out, force, dtype, max_shard_size, memory_budget, device, threads, allow_nonfinite, progress))]
#[allow(clippy::too_many_arguments)]
fn ema(
    py: Python<'_>,
    checkpoints: Vec<String>,
    mu: f64,
    out: PathBuf,
    force: bool,
    dtype: &str,
    max_shard_size: &str,
    memory_budget: &str,
    device: &str,
    threads: Option<usize>,
    allow_nonfinite: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<Merged> {
    let o = options(
        out,
        force,
        dtype,
        max_shard_size,
        memory_budget,
        device,
        threads,
        allow_nonfinite,
        None,
    )?;
    pump::run(py, progress, move |r| {
        let method = crate::merge::ema::Ema::new(mu, checkpoints.len())?;
        let inputs = checkpoints.into_iter().map(|c| (c, "checkpoint")).collect();
        job::merge(&method, inputs, &o, r).map(merged)
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
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_function(wrap_pyfunction!(rl_schema, m)?)?;
    Ok(())
}
