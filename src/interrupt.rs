//! Cooperative cancellation (interruption by a signal; not `warp cancel`, which is
//! [`crate::cli`]'s scancel of a run's Slurm jobs). The CLI's signal handler (SIGINT, SIGTERM, SIGHUP) calls
//! [`request_by_signal`]; long loops call [`check`] between chunks or steps, so the error path
//! (and with it the writers' cleanup of temporary folders) runs, and the process exits with
//! 128 + the signal. Everything here is a lock-free atomic, safe to call from a signal handler.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Child processes to pass a forced stop on to (see [`track_child`]).
static CHILDREN: [AtomicI32; 64] = [const { AtomicI32::new(0) }; 64];

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

/// Records a running child process (in a process group of its own, so a terminal's signals do
/// not reach it): if this process is forced to stop at once (a second signal), it first sends
/// the child SIGTERM, so the child still stops cleanly. Up to 64 children are tracked.
pub fn track_child(pid: u32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    for slot in &CHILDREN {
        if slot
            .compare_exchange(0, pid, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return;
        }
    }
}

/// Forgets a child; call it as soon as the child is reaped (its pid may be reused after).
pub fn untrack_child(pid: u32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    for slot in &CHILDREN {
        let _ = slot.compare_exchange(pid, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// Sends `sig` to every tracked child. Async-signal-safe (atomics and kill(2)).
pub fn signal_children(sig: i32) {
    for slot in &CHILDREN {
        let pid = slot.load(Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: kill(2) on a child pid tracked while it is not yet reaped.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }
}
