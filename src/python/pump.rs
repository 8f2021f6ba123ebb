//! Running library work from Python: the work runs on a thread of its own with the GIL
//! released, while the calling thread wakes every 50 ms to take the GIL briefly, hand the work's
//! progress to Python (a tqdm-compatible object, and the `warp_align` logger) and check for
//! signals. A KeyboardInterrupt (Ctrl-C, or `_thread.interrupt_main`) or an exception raised by
//! the progress object requests cancellation through [`crate::interrupt`], the same token SIGINT
//! sets in the CLI: the work stops at its next check and its error path removes what it had
//! started writing; then the Python exception is raised.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::time::Duration;

use pyo3::prelude::*;

use crate::error::{Error, Result};
use crate::progress::Reporter;

/// What the work reports, queued for the calling thread.
enum Event {
    Start(String, u64),
    Advance(u64),
    Finish,
    Status(String),
    Message(String),
}

/// The work's [`Reporter`]: queues events (never touches Python).
struct Queue(Mutex<Sender<Event>>);

impl Queue {
    fn send(&self, e: Event) {
        if let Ok(tx) = self.0.lock() {
            // The receiver lives until the work ends.
            let _ = tx.send(e);
        }
    }
}

impl Reporter for Queue {
    fn start(&self, label: &str, total: u64) {
        self.send(Event::Start(label.to_string(), total));
    }
    fn start_steps(&self, label: &str, total: u64) {
        self.send(Event::Start(label.to_string(), total));
    }
    fn advance(&self, n: u64) {
        self.send(Event::Advance(n));
    }
    fn finish(&self) {
        self.send(Event::Finish);
    }
    fn status(&self, msg: &str) {
        self.send(Event::Status(msg.to_string()));
    }
    fn message(&self, msg: &str) {
        self.send(Event::Message(msg.to_string()));
    }
}

/// Calls in flight: the cancellation token is global, so it is cleared only when none is.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// `progress`: None, or an object with tqdm's `update(n)` (and optionally `reset(total=)`,
/// `set_description`, `set_postfix_str`, `refresh`; else its `total` is set). Runs no Python
/// code for events nobody receives (byte counts without a progress object), so that a merge
/// without one does not make the caller's thread take the GIL for more than the signal check.
fn deliver(py: Python<'_>, progress: Option<&Py<PyAny>>, events: Vec<Event>) -> PyResult<()> {
    let bar = progress.map(|p| p.bind(py));
    let mut pending = 0u64;
    let flush = |pending: &mut u64| -> PyResult<()> {
        if let (Some(b), true) = (bar, *pending > 0) {
            b.call_method1("update", (*pending,))?;
        }
        *pending = 0;
        Ok(())
    };
    for e in events {
        match e {
            Event::Advance(n) => pending += n,
            Event::Message(m) => {
                flush(&mut pending)?;
                py.import("logging")?
                    .call_method1("getLogger", ("warp_align",))?
                    .call_method1("info", ("%s", m))?;
            }
            Event::Start(label, total) => {
                flush(&mut pending)?;
                if let Some(b) = bar {
                    if b.hasattr("reset")? {
                        let kw = pyo3::types::PyDict::new(py);
                        kw.set_item("total", total)?;
                        b.call_method("reset", (), Some(&kw))?;
                    } else {
                        b.setattr("total", total)?;
                    }
                    if b.hasattr("set_description")? {
                        b.call_method1("set_description", (label,))?;
                    }
                }
            }
            Event::Status(s) => {
                flush(&mut pending)?;
                if let Some(b) = bar.filter(|b| b.hasattr("set_postfix_str").unwrap_or(false)) {
                    b.call_method1("set_postfix_str", (s,))?;
                }
            }
            Event::Finish => {
                flush(&mut pending)?;
                if let Some(b) = bar.filter(|b| b.hasattr("refresh").unwrap_or(false)) {
                    b.call_method0("refresh")?;
                }
            }
        }
    }
    flush(&mut pending)
}

/// Runs `work` with the GIL released (see the module's doc). The work's own error becomes the
/// typed exception ([`super::errors::to_py`]); a Python exception seen meanwhile (a
/// KeyboardInterrupt, or one raised by `progress`) wins, after the work has stopped and cleaned
/// up.
pub fn run<T, F>(py: Python<'_>, progress: Option<Py<PyAny>>, work: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce(&dyn Reporter) -> Result<T> + Send,
{
    if ACTIVE.fetch_add(1, Ordering::SeqCst) == 0 {
        crate::interrupt::clear();
    }
    let (tx, rx) = channel();
    let queue = Queue(Mutex::new(tx));
    let (outcome, py_err) = py.detach(move || {
        std::thread::scope(|s| {
            let worker = s.spawn(move || {
                let q = queue;
                work(&q)
            });
            let mut py_err: Option<PyErr> = None;
            loop {
                let mut events = Vec::new();
                let done = match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(e) => {
                        events.push(e);
                        events.extend(rx.try_iter());
                        false
                    }
                    Err(RecvTimeoutError::Timeout) => false,
                    Err(RecvTimeoutError::Disconnected) => true,
                };
                if py_err.is_none() {
                    let r = Python::attach(|py| {
                        deliver(py, progress.as_ref(), events).and_then(|_| py.check_signals())
                    });
                    if let Err(e) = r {
                        crate::interrupt::request();
                        py_err = Some(e);
                    }
                }
                if done {
                    break;
                }
            }
            let outcome = worker
                .join()
                .unwrap_or_else(|_| Err(Error::Internal("the work panicked".into())));
            (outcome, py_err)
        })
    });
    ACTIVE.fetch_sub(1, Ordering::SeqCst);
    match (py_err, outcome) {
        (Some(e), _) => Err(e),
        (None, Ok(v)) => Ok(v),
        (None, Err(e)) => Err(super::errors::to_py(e)),
    }
}
