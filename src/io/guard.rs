//! Reading mapped files that may shrink under the reader.
//!
//! A read of a mapped page that lies past the end of its file — the file was truncated after it
//! was mapped: a re-download, a re-save in place — raises SIGBUS, whose default action kills the
//! process ("Bus error") before any cleanup runs. While a [`ReadGuard`] is alive, the mappings it
//! names are registered with a SIGBUS handler that puts a page of zeros where the page could not
//! be read and records which mapping it was; the faulting read then completes (it reads zeros)
//! and [`ReadGuard::check`] names the file. The caller checks after each chunk, before using what
//! it computed from it, so nothing computed from a page that could not be read is ever written:
//! it takes its normal error path instead (temporary folders removed, one-line error).
//!
//! A SIGBUS at any other address is left to the disposition it had before (by default the
//! process dies, as without the guard). Limits: at most [`SLOTS`] mappings are guarded at once
//! (others keep the default behaviour); a signal handler installed later by other code replaces
//! this one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// Mappings guarded at once (each shard of each input is one).
pub const SLOTS: usize = 4096;

/// A slot is free when `len` is 0; `RESERVED` while it is being filled.
const RESERVED: usize = usize::MAX;

struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
    faulted: AtomicBool,
}

static REGISTRY: [Slot; SLOTS] = [const {
    Slot {
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        faulted: AtomicBool::new(false),
    }
}; SLOTS];
/// Faults handled so far: lets [`ReadGuard::check`] skip the registry scan in the common case.
static FAULTS: AtomicUsize = AtomicUsize::new(0);
static PAGE: AtomicUsize = AtomicUsize::new(4096);
/// The SIGBUS disposition before ours, for addresses that are not ours.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

fn install() {
    PREVIOUS.get_or_init(|| {
        // SAFETY: sysconf and sigaction with valid arguments; the handler only uses
        // async-signal-safe operations (atomics, mmap, sigaction).
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE);
            if page > 0 {
                PAGE.store(page as usize, Ordering::Relaxed);
            }
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_sigbus as *const () as usize;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut new.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &new, &mut old) != 0 {
                old.sa_sigaction = libc::SIG_DFL;
            }
            old
        }
    });
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    for slot in &REGISTRY {
        let len = slot.len.load(Ordering::Acquire);
        if len == 0 || len == RESERVED {
            continue;
        }
        let start = slot.start.load(Ordering::Acquire);
        if addr < start || addr - start >= len {
            continue;
        }
        let page = PAGE.load(Ordering::Relaxed);
        let at = addr & !(page - 1);
        // SAFETY: the page lies inside a read-only mapping registered by a live ReadGuard;
        // replacing it with an anonymous page of zeros only changes what that read returns.
        let p = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                page,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            slot.faulted.store(true, Ordering::SeqCst);
            FAULTS.fetch_add(1, Ordering::SeqCst);
            return;
        }
        break;
    }
    // Not a guarded mapping (or no page could be put there): what SIGBUS did before.
    let Some(prev) = PREVIOUS.get() else { return };
    let handler = prev.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // SAFETY: restoring the default disposition; returning re-runs the faulting access,
        // which then terminates the process as it would have without the guard.
        unsafe {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
        }
    } else if prev.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler was installed with SA_SIGINFO, so it has this signature.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(handler) };
        f(sig, info, ctx);
    } else {
        // SAFETY: a plain handler takes the signal number only.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
        f(sig);
    }
}

/// While alive, a SIGBUS on a read of one of its mappings is recorded instead of killing the
/// process; [`check`](Self::check) reports it.
pub struct ReadGuard {
    slots: Vec<(usize, PathBuf)>,
}

impl ReadGuard {
    /// Guards `maps`: the mapped bytes of each file and the file's path (for the message).
    pub fn new<'a>(maps: impl IntoIterator<Item = (&'a [u8], &'a Path)>) -> ReadGuard {
        install();
        let mut slots = Vec::new();
        for (bytes, path) in maps {
            if bytes.is_empty() {
                continue;
            }
            let free = REGISTRY.iter().position(|s| {
                s.len
                    .compare_exchange(0, RESERVED, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            });
            // A full registry leaves this mapping unguarded (the default behaviour).
            let Some(i) = free else { break };
            let slot = &REGISTRY[i];
            slot.faulted.store(false, Ordering::SeqCst);
            slot.start.store(bytes.as_ptr() as usize, Ordering::Release);
            slot.len.store(bytes.len(), Ordering::Release);
            slots.push((i, path.to_path_buf()));
        }
        ReadGuard { slots }
    }

    /// Errors naming the first guarded file whose mapping could not be read.
    pub fn check(&self) -> Result<()> {
        if FAULTS.load(Ordering::SeqCst) == 0 {
            return Ok(());
        }
        for (i, path) in &self.slots {
            if REGISTRY[*i].faulted.load(Ordering::SeqCst) {
                return Err(unreadable(path));
            }
        }
        Ok(())
    }
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        for (i, _) in &self.slots {
            REGISTRY[*i].len.store(0, Ordering::Release);
        }
    }
}

fn unreadable(path: &Path) -> Error {
    let now = match std::fs::metadata(path) {
        Ok(m) => format!(" (it now has {} bytes)", m.len()),
        Err(e) => format!(" ({e})"),
    };
    Error::format(
        path,
        format!(
            "could not be read: the file was truncated or replaced in place while it was being \
             read{now}, or the disk failed; nothing computed from it was written"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_truncated_mapping_reads_zeros_and_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        let page = PAGE.load(Ordering::Relaxed).max(4096);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&vec![7u8; 4 * page])
            .unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: the test truncates the file on purpose: that is what the guard is for.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        let guard = ReadGuard::new([(&map[..], path.as_path())]);
        assert!(guard.check().is_ok());
        assert_eq!(map[3 * page], 7);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(page as u64)
            .unwrap();
        // Past the new end: SIGBUS without the guard; zeros and a report with it.
        let tail: u64 = map[2 * page..].iter().map(|&b| b as u64).sum();
        assert_eq!(tail, 0);
        assert_eq!(map[0], 7);
        let e = guard.check().unwrap_err().to_string();
        assert!(e.contains("f.bin") && e.contains("truncated"), "{e}");
    }
}
