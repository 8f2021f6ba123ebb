//! SIGINT, SIGTERM and SIGHUP for every command, one policy.
//!
//! A cooperative command (one that checks [`crate::interrupt`] in its long loops) gets a handler
//! that only records the signal: the command stops at its next check, its error path removes
//! temporary folders, and `main` exits with 128 + the signal. A second signal, or any signal to a
//! command that does not check, ends the process at once with the default action (the exit
//! status the shell then reports is the same 128 + N); children tracked with
//! [`crate::interrupt::track_child`] get SIGTERM first.
//!
//! SIGTERM is how Slurm, `timeout`, systemd and container runtimes stop a job, and SIGHUP what a
//! closed terminal sends, so both are handled exactly like Ctrl-C.

use std::sync::atomic::{AtomicBool, Ordering};

/// The signals handled.
pub const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

static COOPERATIVE: AtomicBool = AtomicBool::new(false);

/// Async-signal-safe: atomics, `signal` and `raise` only.
extern "C" fn on_signal(sig: libc::c_int) {
    if !COOPERATIVE.load(Ordering::SeqCst) || crate::interrupt::requested() {
        // Children that a terminal's signal does not reach (`warp run`'s steps) are asked to
        // stop cleanly before this process ends.
        crate::interrupt::signal_children(libc::SIGTERM);
        // SAFETY: restoring the default action and re-raising are async-signal-safe.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
        return;
    }
    crate::interrupt::request_by_signal(sig);
}

/// Installs the handler for [`SIGNALS`]. With `cooperative` false the process ends at the
/// first signal (the default action), as it would without a handler.
pub fn install(cooperative: bool) {
    COOPERATIVE.store(cooperative, Ordering::SeqCst);
    for sig in SIGNALS {
        // SAFETY: a zeroed sigaction with a valid handler and an empty mask; SA_RESTART so that
        // blocking system calls resume (the loops poll for the request).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// `SIGTERM` for 15, and so on.
pub fn name(sig: i32) -> String {
    match sig {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGHUP => "SIGHUP".into(),
        n => format!("signal {n}"),
    }
}
