//! One process per run folder: `warp rl` (new or `--resume`) and `warp run` hold an exclusive
//! lock on `RUN/.warp-run.lock` for their whole life, with their pid and host written in it, so
//! a second process on the same folder stops at once with an error naming the holder instead of
//! racing the first one (reclaiming its temporary folders, rewriting its metrics).
//!
//! The lock is `flock(2)` on a file that is never removed while the folder lives (removing a
//! lock file lets a third process lock a new file under the same name while the second still
//! holds the old one): the kernel drops the lock when its holder dies, however it dies, so a
//! stale lock file from a killed run does not block the next one. This is the same rule by
//! which [`super::writer::reclaim_stale`] judges temporary folders: a lock that can be taken
//! belongs to a dead process.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// The lock file's name inside a run folder.
pub const RUN_LOCK_FILE: &str = ".warp-run.lock";

/// While alive, this process is the only one working in the run folder.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
    /// The run folder when this lock created it (removed again by [`RunLock::abandon`]).
    created: Option<PathBuf>,
}

impl RunLock {
    /// Locks the run folder `dir` (created when missing), or fails with [`Error::Locked`]
    /// naming the process that holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        let created = match std::fs::symlink_metadata(dir) {
            Ok(_) => None,
            Err(_) => {
                std::fs::create_dir_all(dir).at(dir)?;
                Some(dir.to_path_buf())
            }
        };
        let path = dir.join(RUN_LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .at(&path)?;
        // SAFETY: flock on a descriptor owned here, kept open as long as the lock is needed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::WouldBlock {
                return Err(Error::io(&path, e));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() {
                "another process (starting up)".to_string()
            } else {
                holder.to_string()
            };
            return Err(Error::Locked {
                path: dir.to_path_buf(),
                holder,
            });
        }
        file.set_len(0).at(&path)?;
        file.rewind().at(&path)?;
        let me = format!("warp (pid {} on {})\n", std::process::id(), host_name());
        file.write_all(me.as_bytes()).at(&path)?;
        Ok(RunLock {
            file,
            path,
            created,
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Gives the lock up after a failed start: a run folder this lock created and that holds
    /// nothing but the lock file is removed again (nothing is left behind).
    pub fn abandon(self) {
        if let Some(dir) = &self.created {
            let only_lock = std::fs::read_dir(dir).is_ok_and(|rd| {
                rd.flatten()
                    .all(|e| e.file_name().to_str() == Some(RUN_LOCK_FILE))
            });
            if only_lock {
                let _ = std::fs::remove_file(&self.path);
                let _ = std::fs::remove_dir(dir);
            }
        }
        drop(self.file);
    }
}

/// This machine's name (for the holder line of a lock file).
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer we own.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "an unknown host".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_a_released_one_is_taken_again() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let held = RunLock::acquire(&dir).unwrap();
        let e = RunLock::acquire(&dir).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())) && msg.contains("run"),
            "{msg}"
        );
        assert_eq!(e.exit_code(), 1);
        drop(held);
        // (A fork by a test running alongside may share the open file, and with it the lock,
        // until its exec closes it: hence the retries.)
        let mut again = RunLock::acquire(&dir);
        for _ in 0..50 {
            if again.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            again = RunLock::acquire(&dir);
        }
        // The folder existed when this lock was taken: it stays.
        again.unwrap().abandon();
        assert!(dir.join(RUN_LOCK_FILE).is_file());
        let fresh = tmp.path().join("fresh");
        RunLock::acquire(&fresh).unwrap().abandon();
        assert!(
            !fresh.exists(),
            "a folder made only for the lock is removed again"
        );
        assert!(dir.exists(), "a folder that existed before stays");
    }
}
