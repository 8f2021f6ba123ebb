//! Cooperative cancellation: binaries install a Ctrl-C handler that calls [`request`]; long
//! loops call [`check`] between chunks, so the error path (and the writer's cleanup) runs.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

pub fn check() -> crate::Result<()> {
    if REQUESTED.load(Ordering::Relaxed) {
        Err(crate::Error::Interrupted)
    } else {
        Ok(())
    }
}
