//! One submission at a time per run folder.

use super::Slurm;
use crate::error::{Error, IoContext, Result};

impl Slurm {
    /// Holds `RUN/slurm.lock` while submitting, so that two submissions for one run folder
    /// cannot both submit the same steps. Released when the returned file is dropped (also if
    /// the process dies).
    pub(super) fn lock(&self) -> Result<std::fs::File> {
        std::fs::create_dir_all(&self.run_dir).at(&self.run_dir)?;
        let path = self.run_dir.join("slurm.lock");
        let f = std::fs::File::create(&path).at(&path)?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor we own and keep open while the lock is needed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            let msg = if e.kind() == std::io::ErrorKind::WouldBlock {
                "another warp is submitting the jobs of this run".to_string()
            } else {
                e.to_string()
            };
            return Err(Error::io(&path, std::io::Error::new(e.kind(), msg)));
        }
        Ok(f)
    }
}
