//! Cooperative cancellation. The CLI's signal handler (SIGINT, SIGTERM, SIGHUP) calls
//! [`request_by_signal`]; long loops call [`check`] between chunks or steps, so the error path
//! (and with it the writers' cleanup of temporary folders) runs, and the process exits with
//! 128 + the signal. Everything here is a lock-free atomic, safe to call from a signal handler.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);
/// The first signal that requested cancellation (0: none).
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Requests cancellation (not by a signal).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Requests cancellation because signal `sig` arrived; the first signal is the one recorded.
/// Async-signal-safe.
pub fn request_by_signal(sig: i32) {
    let _ = SIGNAL.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether cancellation was requested.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// The signal that requested cancellation, if one did.
pub fn signal() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// `Err(Interrupted)` once cancellation was requested.
pub fn check() -> crate::Result<()> {
    if REQUESTED.load(Ordering::Relaxed) {
        Err(crate::Error::Interrupted)
    } else {
        Ok(())
    }
}
