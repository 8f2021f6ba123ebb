//! warp's errors as Python exceptions: one base class, `WarpError`, and a subclass per kind of
//! [`Error`], so Python code catches what it can act on (a bad argument, a bad file, the hub…).
//! Each exception carries the one-line message the CLI prints, the CLI's exit code
//! (`exit_code`) and, where the error names them, `path` and `tensor`.

use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyAnyMethods;

use crate::error::Error;

pyo3::create_exception!(
    _native,
    WarpError,
    PyException,
    "Base class of every error warp raises."
);
pyo3::create_exception!(
    _native,
    ArgumentError,
    WarpError,
    "A bad argument or setting (the CLI's exit code 2)."
);
pyo3::create_exception!(
    _native,
    FormatError,
    WarpError,
    "A file that is not a valid checkpoint, a bad tensor, or inputs that cannot be combined."
);
pyo3::create_exception!(
    _native,
    FileError,
    WarpError,
    "An operating-system error on a named path (missing file, permission, full disk)."
);
pyo3::create_exception!(
    _native,
    HubError,
    WarpError,
    "Hugging Face hub: download, upload, protocol."
);
pyo3::create_exception!(
    _native,
    BackendError,
    WarpError,
    "The compute backend (CUDA, libtorch, TRL) failed, or this build lacks a feature."
);
pyo3::create_exception!(
    _native,
    RewardError,
    WarpError,
    "A reward (program, model, verifier) failed."
);
pyo3::create_exception!(
    _native,
    StepError,
    WarpError,
    "A step of a pipeline failed."
);
pyo3::create_exception!(
    _native,
    InternalError,
    WarpError,
    "A broken invariant: a bug in warp."
);
pyo3::create_exception!(
    _native,
    CancelledError,
    WarpError,
    "The operation was cancelled (nothing was left half-written)."
);

/// The Python exception for `e`.
pub fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    let err = match &e {
        // (Usage comes from the CLI layer only; mapped for completeness.)
        Error::Usage { .. } | Error::Setting { .. } => ArgumentError::new_err(msg),
        Error::Format { .. } | Error::Tensor { .. } | Error::Mismatch(_) => {
            FormatError::new_err(msg)
        }
        Error::Io { .. } | Error::Locked { .. } => FileError::new_err(msg),
        Error::Hub(_) => HubError::new_err(msg),
        Error::Compute { .. } | Error::Feature { .. } => BackendError::new_err(msg),
        Error::Reward { .. } => RewardError::new_err(msg),
        Error::Step { .. } => StepError::new_err(msg),
        Error::Internal(_) => InternalError::new_err(msg),
        Error::Interrupted => CancelledError::new_err(msg),
    };
    Python::attach(|py| {
        let v = err.value(py);
        let _ = v.setattr("exit_code", e.exit_code());
        let (path, tensor) = match &e {
            Error::Io { path, .. } | Error::Format { path, .. } | Error::Locked { path, .. } => {
                (Some(path), None)
            }
            Error::Tensor { path, tensor, .. } => (Some(path), Some(tensor)),
            _ => (None, None),
        };
        let _ = v.setattr("path", path.map(|p| p.display().to_string()));
        let _ = v.setattr("tensor", tensor);
    });
    err
}

/// Adds the exception classes to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("WarpError", py.get_type::<WarpError>())?;
    m.add("ArgumentError", py.get_type::<ArgumentError>())?;
    m.add("FormatError", py.get_type::<FormatError>())?;
    m.add("FileError", py.get_type::<FileError>())?;
    m.add("HubError", py.get_type::<HubError>())?;
    m.add("BackendError", py.get_type::<BackendError>())?;
    m.add("RewardError", py.get_type::<RewardError>())?;
    m.add("StepError", py.get_type::<StepError>())?;
    m.add("InternalError", py.get_type::<InternalError>())?;
    m.add("CancelledError", py.get_type::<CancelledError>())?;
    Ok(())
}
