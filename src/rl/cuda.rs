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

/// Lets cuBLAS run f32 matrix products in TF32 (PyTorch's
/// `torch.backends.cuda.matmul.allow_tf32 = True`) and returns libtorch's own reading of the
/// setting afterwards. tch has no binding for it, so the two `at::Context` members are looked up
/// in the loaded libtorch by their (Itanium-mangled) names; both take only the context pointer
/// and a bool, so they can be called through the C ABI. Process-wide; CPU ops are unaffected.
pub fn allow_tf32() -> Result<bool, String> {
    type GlobalContext = unsafe extern "C" fn() -> *mut libc::c_void;
    type SetAllow = unsafe extern "C" fn(*mut libc::c_void, bool);
    type GetAllow = unsafe extern "C" fn(*const libc::c_void) -> bool;
    // SAFETY: the symbols are looked up in the process's already-loaded libtorch (RTLD_DEFAULT);
    // each is checked for NULL before it is transmuted to its exact C++ signature:
    // `at::Context& at::globalContext()`, `void at::Context::setAllowTF32CuBLAS(bool)` and
    // `bool at::Context::allowTF32CuBLAS() const` (the implicit `this` is the first argument).
    unsafe {
        let sym = |name: &CStr| {
            let p = libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr());
            if p.is_null() {
                Err(format!("libtorch has no {}", name.to_string_lossy()))
            } else {
                Ok(p)
            }
        };
        let global: GlobalContext = std::mem::transmute(sym(c"_ZN2at13globalContextEv")?);
        let set: SetAllow = std::mem::transmute(sym(c"_ZN2at7Context18setAllowTF32CuBLASEb")?);
        let get: GetAllow = std::mem::transmute(sym(c"_ZNK2at7Context15allowTF32CuBLASEv")?);
        let ctx = global();
        if ctx.is_null() {
            return Err("libtorch's global context is null".into());
        }
        set(ctx, true);
        Ok(get(ctx))
    }
}
