//! libtorch's CUDA backend, loaded when a run asks for a GPU.
//!
//! libtorch registers its CUDA implementation from the static initialisers of
//! `libtorch_cuda.so`. Our binaries reference none of its symbols, so the linker (whose default is
//! `--as-needed`) leaves it out, and libtorch then reports no CUDA device even on a GPU machine.
//! Linking it unconditionally would cost every CPU run the loading of the CUDA libraries (cuBLAS,
//! cuDNN, …: about 300 MiB of resident memory measured here). Instead it is loaded with
//! `dlopen` — found through the binaries' rpath to torch's lib dir, or `LD_LIBRARY_PATH` — before
//! libtorch is first asked about CUDA, and only when the device is CUDA (or `auto` on a machine
//! with an NVIDIA driver).

use std::ffi::CStr;
use std::sync::OnceLock;

/// Loads `libtorch_cuda.so` once (later calls return the first result); the error says why it
/// could not be loaded. Must run before anything asks libtorch about CUDA (libtorch caches its
/// first answer).
pub fn load_backend() -> Result<(), String> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| open(c"libtorch_cuda.so", libc::RTLD_NOW | libc::RTLD_GLOBAL))
        .clone()
}

/// Whether the NVIDIA driver library can be loaded here (a cheap test for "is there a GPU
/// machine", which does not touch libtorch).
pub fn driver_present() -> bool {
    open(c"libcuda.so.1", libc::RTLD_LAZY | libc::RTLD_LOCAL).is_ok()
}

fn open(name: &CStr, flags: libc::c_int) -> Result<(), String> {
    // SAFETY: dlopen/dlerror with a valid NUL-terminated name; the handle is kept open for the
    // process's lifetime (the library registers global state), so it is never closed.
    unsafe {
        let handle = libc::dlopen(name.as_ptr(), flags);
        if handle.is_null() {
            let err = libc::dlerror();
            let msg = if err.is_null() {
                "unknown error".to_string()
            } else {
                CStr::from_ptr(err).to_string_lossy().into_owned()
            };
            return Err(format!("cannot load {}: {msg}", name.to_string_lossy()));
        }
    }
    Ok(())
}
