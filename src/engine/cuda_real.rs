//! The CUDA backend (feature `cuda`). The driver API and NVRTC come through cudarc, both loaded
//! at run time: the build needs no CUDA toolkit, and a binary that finds no driver or no GPU says
//! so (`--device cuda`) or computes on the CPU (`--device auto`). See docs/CUDA.md.
//!
//! Each call (one chunk of the engine) is split into sub-chunks of whole Gram blocks that go
//! through a ring of [`SLOTS`] slots, each with its own pinned host staging buffers, device
//! buffers and events, over three streams:
//!
//! ```text
//! host:     fill pin_in[s] ─┐                          finish s: wait done[s], copy pin_out[s]
//! h2d:                      └ H2D ─ rec h2d[s]
//! compute:                         wait h2d[s] ─ kernel ─ rec kernel[s]
//! d2h:                                                     wait kernel[s] ─ D2H ─ rec done[s]
//! ```
//!
//! so the host staging of sub-chunk s+1, the copy in of s and the kernels of s−1 overlap. A slot
//! is reused only after its previous sub-chunk is finished, which orders every reuse of a buffer.
//!
//! The kernels (`kernels.cu`, compiled by NVRTC for the device's architecture) reproduce the CPU
//! backend's arithmetic operation for operation, so the Gram partials and the output bytes are
//! identical to [`super::cpu::Cpu`]'s. A device error in the middle of a run is reported once on
//! stderr and the run finishes on the CPU (same results); [`Options::strict`] panics instead.

use std::ffi::{c_void, CString};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use cudarc::driver::{
    result as cu, sys, CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys, Ptx};
use rayon::prelude::*;

use super::backend::{dtype_of, uniform, upper_len, Backend, NonFinite, GRAM_BLOCK};
use super::cpu::Cpu;
use crate::error::{Error, Result};
use crate::io::dtype::{decode_f32, encode_f32};
use crate::io::DType;

/// The CUDA C source of the kernels (compiled at run time).
pub const KERNELS_CU: &str = include_str!("kernels.cu");

/// Pipeline depth: sub-chunks in flight at once.
pub const SLOTS: usize = 3;
/// Default elements per sub-chunk (64 Gram blocks); `WARP_CUDA_SUB_CHUNK` overrides it.
pub const DEFAULT_SUB_CHUNK: usize = 64 * GRAM_BLOCK;
const THREADS: u32 = 256;
/// Alignment of each input/output array inside a staging buffer.
const ALIGN: usize = 256;

type DevResult<T> = std::result::Result<T, String>;

/// How the backend runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Elements per pipelined sub-chunk, rounded up to a multiple of [`GRAM_BLOCK`].
    pub sub_chunk_elems: usize,
    /// Panic on a device error instead of finishing on the CPU (tests: a fallback would hide
    /// a GPU bug behind the CPU's correct answer).
    pub strict: bool,
}

impl Default for Options {
    fn default() -> Options {
        let sub_chunk_elems = std::env::var("WARP_CUDA_SUB_CHUNK")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(DEFAULT_SUB_CHUNK);
        Options {
            sub_chunk_elems,
            strict: false,
        }
    }
}

/// The backend for `--device cuda:N`.
pub fn open(device: usize) -> Result<Box<dyn Backend>> {
    Ok(Box::new(CudaBackend::open(device, Options::default())?))
}

fn describe(e: cu::DriverError) -> String {
    let name = e
        .error_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", e.0));
    match e.error_string() {
        Ok(s) => format!("{name}: {}", s.to_string_lossy()),
        Err(_) => name,
    }
}

trait Context<T> {
    fn ctx(self, what: &str) -> DevResult<T>;
}

impl<T> Context<T> for std::result::Result<T, cu::DriverError> {
    fn ctx(self, what: &str) -> DevResult<T> {
        self.map_err(|e| format!("{what}: {}", describe(e)))
    }
}

/// An error opening device `device`.
fn usage(device: usize, msg: impl std::fmt::Display) -> Error {
    Error::compute(format!("cuda:{device}"), msg)
}

/// Blocks of [`THREADS`] covering `threads` threads.
fn grid(threads: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (threads.div_ceil(THREADS as usize) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Whether the CUDA driver library (libcuda.so) can be loaded.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { sys::is_culib_present() }
}

/// Whether NVRTC can be loaded: from the loader path, or else from the usual toolkit folders
/// (CUDA_HOME, CUDA_PATH, /usr/local/cuda*), which are then pre-loaded by full path so that the
/// loader finds the library by its soname.
pub fn nvrtc_present() -> bool {
    static PRELOADED: OnceLock<()> = OnceLock::new();
    PRELOADED.get_or_init(|| {
        // SAFETY: only tries to dlopen the library.
        if !unsafe { nvrtc_sys::is_culib_present() } {
            preload_nvrtc();
        }
    });
    // SAFETY: as above.
    unsafe { nvrtc_sys::is_culib_present() }
}

fn preload_nvrtc() {
    let mut dirs: Vec<std::path::PathBuf> = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Some(d) = std::env::var_os(var) {
            let d = std::path::PathBuf::from(d);
            dirs.extend([
                d.join("lib64"),
                d.join("lib"),
                d.join("targets/x86_64-linux/lib"),
            ]);
        }
    }
    let mut local: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/local")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("cuda"))
                })
                .collect()
        })
        .unwrap_or_default();
    // "cuda" (the usual symlink) first, then the versioned folders, newest first.
    local.sort_by(|a, b| b.cmp(a));
    local.sort_by_key(|p| p.file_name().is_some_and(|n| n != "cuda"));
    for d in local {
        dirs.extend([d.join("lib64"), d.join("targets/x86_64-linux/lib")]);
    }
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut libs: Vec<std::path::PathBuf> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libnvrtc.so."))
            })
            .collect();
        libs.sort();
        for lib in libs {
            let Ok(c) = CString::new(lib.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            // SAFETY: loading a shared library by path; the handle is kept for the process.
            let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            if !h.is_null() {
                return;
            }
        }
    }
}

/// NVRTC's version, when it can be loaded.
pub fn nvrtc_version() -> Option<(i32, i32)> {
    if !nvrtc_present() {
        return None;
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: plain out-parameters.
    unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .ok()?;
    Some((major, minor))
}

/// Compiles `kernels.cu` with NVRTC for `arch`: `sm_XY` gives a CUBIN, `compute_XY` PTX (with
/// its terminating NUL). Needs NVRTC only, no GPU. Errors carry NVRTC's log.
pub fn compile_kernels(arch: &str) -> std::result::Result<Vec<u8>, String> {
    if !nvrtc_present() {
        return Err(
            "NVRTC (libnvrtc.so) not found: add the CUDA toolkit's lib64 folder to \
                    LD_LIBRARY_PATH, or set CUDA_HOME"
                .into(),
        );
    }
    let src = CString::new(format!(
        "#define WARP_GRAM_BLOCK {GRAM_BLOCK}\n{KERNELS_CU}"
    ))
    .map_err(|e| e.to_string())?;
    let prog = nvrtc::create_program(&src, Some(c"warp_kernels.cu"))
        .map_err(|e| format!("nvrtcCreateProgram: {e:?}"))?;
    let opts = [
        format!("--gpu-architecture={arch}"),
        "--fmad=false".to_string(),
        "--ftz=false".to_string(),
        "--prec-div=true".to_string(),
        "--prec-sqrt=true".to_string(),
    ];
    // SAFETY: `prog` is a live program; it is destroyed on every path below.
    let compiled = unsafe { nvrtc::compile_program(prog, &opts) };
    let log = unsafe { nvrtc::get_program_log(prog) }
        .map(|l| {
            let bytes: Vec<u8> = l.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
            String::from_utf8_lossy(&bytes).trim().to_string()
        })
        .unwrap_or_default();
    let image = match compiled {
        Err(e) => Err(format!(
            "NVRTC failed to compile the kernels ({e:?}):\n{log}"
        )),
        Ok(()) if arch.starts_with("sm_") => {
            let mut size = 0usize;
            // SAFETY: the program compiled; the buffer has the size NVRTC reports.
            unsafe { nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size) }
                .result()
                .and_then(|()| {
                    let mut buf = vec![0u8; size];
                    unsafe { nvrtc_sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast()) }
                        .result()
                        .map(|()| buf)
                })
                .map_err(|e| format!("nvrtcGetCUBIN: {e:?}"))
        }
        Ok(()) => unsafe { nvrtc::get_ptx(prog) }
            .map(|p| p.into_iter().map(|c| c as u8).collect())
            .map_err(|e| format!("nvrtcGetPTX: {e:?}")),
    };
    // SAFETY: created above, not used afterwards.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    image
}

/// Page-locked host memory (cuMemHostAlloc), grown on demand. Needs the context current.
struct HostBuf {
    ptr: *mut u8,
    cap: usize,
}

impl HostBuf {
    fn new() -> HostBuf {
        HostBuf {
            ptr: std::ptr::null_mut(),
            cap: 0,
        }
    }

    fn ensure(&mut self, bytes: usize) -> DevResult<()> {
        if self.cap >= bytes {
            return Ok(());
        }
        self.free();
        let cap = bytes.next_multiple_of(1 << 20);
        // SAFETY: plain allocation; freed in `free`.
        self.ptr = unsafe { cu::malloc_host(cap, 0) }.ctx("cuMemHostAlloc")? as *mut u8;
        self.cap = cap;
        Ok(())
    }

    /// SAFETY: no device operation may be writing or reading the range.
    unsafe fn slice_mut(&mut self, off: usize, len: usize) -> &mut [u8] {
        assert!(off + len <= self.cap);
        std::slice::from_raw_parts_mut(self.ptr.add(off), len)
    }

    /// SAFETY: no device operation may be writing the range.
    unsafe fn slice(&self, off: usize, len: usize) -> &[u8] {
        assert!(off + len <= self.cap);
        std::slice::from_raw_parts(self.ptr.add(off), len)
    }

    fn free(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: allocated by cuMemHostAlloc; no operation uses it any more.
            let _ = unsafe { cu::free_host(self.ptr as *mut c_void) };
            self.ptr = std::ptr::null_mut();
            self.cap = 0;
        }
    }
}

impl Drop for HostBuf {
    fn drop(&mut self) {
        self.free();
    }
}

/// Device memory (cuMemAlloc), grown on demand. Needs the context current.
struct DevBuf {
    ptr: sys::CUdeviceptr,
    cap: usize,
}

impl DevBuf {
    fn new() -> DevBuf {
        DevBuf { ptr: 0, cap: 0 }
    }

    fn ensure(&mut self, bytes: usize) -> DevResult<()> {
        if self.cap >= bytes {
            return Ok(());
        }
        self.free();
        let cap = bytes.max(8).next_multiple_of(1 << 20);
        // SAFETY: plain allocation; freed in `free`.
        self.ptr = unsafe { cu::malloc_sync(cap) }.ctx("cuMemAlloc")?;
        self.cap = cap;
        Ok(())
    }

    fn free(&mut self) {
        if self.ptr != 0 {
            // SAFETY: allocated by cuMemAlloc; no operation uses it any more.
            let _ = unsafe { cu::free_sync(self.ptr) };
            self.ptr = 0;
            self.cap = 0;
        }
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        self.free();
    }
}

/// One stage of the pipeline ring.
struct Slot {
    pin_in: HostBuf,
    pin_out: HostBuf,
    pin_flag: HostBuf,
    dev_in: DevBuf,
    dev_out: DevBuf,
    dev_flag: DevBuf,
    ev_h2d: sys::CUevent,
    ev_kernel: sys::CUevent,
    ev_done: sys::CUevent,
    /// The sub-chunk (first element, length) in flight in this slot.
    pending: Option<(usize, usize)>,
}

impl Slot {
    fn new() -> DevResult<Slot> {
        let ev =
            || cu::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING).ctx("cuEventCreate");
        Ok(Slot {
            pin_in: HostBuf::new(),
            pin_out: HostBuf::new(),
            pin_flag: HostBuf::new(),
            dev_in: DevBuf::new(),
            dev_out: DevBuf::new(),
            dev_flag: DevBuf::new(),
            ev_h2d: ev()?,
            ev_kernel: ev()?,
            ev_done: ev()?,
            pending: None,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        for e in [self.ev_h2d, self.ev_kernel, self.ev_done] {
            // SAFETY: created in `new`, not used afterwards (the streams were synchronised).
            let _ = unsafe { cu::event::destroy(e) };
        }
    }
}

/// What a pipelined pass computes and where its results go.
enum Dest<'a, 'b> {
    /// blocks × pairs Gram partials for the whole chunk.
    Gram { out: &'a mut [f64], pairs: usize },
    /// K output arrays.
    Combine {
        outs: &'a mut [&'b mut [u8]],
        out_dtype: DType,
        check_finite: bool,
    },
}

fn dtype_code(d: DType) -> i32 {
    match d {
        DType::F32 => 0,
        DType::BF16 => 1,
        DType::F16 => 2,
        DType::F64 => 3,
        other => unreachable!("CUDA kernels on non-float dtype {other}"),
    }
}

/// Large host copies go through rayon: the source is often mmapped file pages, whose faults
/// then also resolve in parallel.
fn par_copy(dst: &mut [u8], src: &[u8]) {
    const PIECE: usize = 1 << 20;
    if src.len() <= 2 * PIECE {
        dst.copy_from_slice(src);
    } else {
        dst.par_chunks_mut(PIECE)
            .zip(src.par_chunks(PIECE))
            .for_each(|(d, s)| d.copy_from_slice(s));
    }
}

/// Stages `src` (elements of `dtype`) as f32 into `dst`: inputs of mixed dtypes are converted on
/// load, so the kernels see one dtype (bf16, f16 → f32 is exact; f64 rounds as the CPU's
/// decoding does, so results stay identical to the CPU backend's).
fn par_convert_f32(dtype: DType, dst: &mut [u8], src: &[u8]) {
    const PIECE: usize = 1 << 16;
    let es = dtype.size();
    dst.par_chunks_mut(PIECE * 4)
        .zip(src.par_chunks(PIECE * es))
        .for_each_init(
            || vec![0f32; PIECE],
            |tmp, (d, s)| {
                let n = d.len() / 4;
                decode_f32(dtype, s, &mut tmp[..n]);
                encode_f32(DType::F32, &tmp[..n], d);
            },
        );
}

/// The non-finite value a kernel key names (`bad_key` in kernels.cu: block, then input, then
/// element), for `n` inputs.
#[doc(hidden)]
pub fn decode_key(key: u64, n: usize) -> NonFinite {
    let gb = GRAM_BLOCK as u64;
    let rest = key / gb;
    NonFinite {
        input: (rest % n as u64) as usize,
        index: rest / n as u64 * gb + key % gb,
    }
}

/// Driver state. Handles are used from whichever thread holds the lock, after making the
/// context current.
struct Inner {
    ctx: Arc<CudaContext>,
    f_gram: CudaFunction,
    f_combine: CudaFunction,
    h2d: Arc<CudaStream>,
    compute: Arc<CudaStream>,
    d2h: Arc<CudaStream>,
    slots: Vec<Slot>,
    coeffs: DevBuf,
    sub: usize,
}

// SAFETY: driver handles are not tied to a thread once the context is made current on the thread
// that uses them (every entry point does so), and the Mutex serialises all use.
unsafe impl Send for Inner {}

/// Where one pass's arrays live in a slot's staging buffers.
#[derive(Clone, Copy)]
struct Layout {
    /// Bytes per input element.
    ies: usize,
    /// Bytes between the inputs in the input buffers.
    in_stride: usize,
    /// Bytes between the K outputs in the output buffers (0 for the Gram pass).
    out_stride: usize,
}

impl Inner {
    fn bind(&self) -> DevResult<()> {
        self.ctx.bind_to_thread().ctx("cuCtxSetCurrent")
    }

    /// Runs `inputs` (all `elems` long, of `in_dtypes`: see [`dtype_of`]) through the pipeline;
    /// returns the smallest non-finite key the kernels met. Sub-chunk s is staged while s−1 is
    /// computed and copied out (see the module docs). Inputs of mixed dtypes are staged as f32.
    fn pipeline(
        &mut self,
        in_dtypes: &[DType],
        inputs: &[&[u8]],
        elems: usize,
        dest: &mut Dest,
        coeffs: (sys::CUdeviceptr, usize),
    ) -> DevResult<Option<u64>> {
        let in_dtype = uniform(in_dtypes).unwrap_or(DType::F32);
        let layout = self.buffers(in_dtype, inputs.len(), elems, dest)?;
        let mut bad = None;
        let sub = self.sub;
        let subs = elems.div_ceil(sub);
        for s in 0..subs {
            let si = s % SLOTS;
            self.finish(si, dest, layout.out_stride, &mut bad)?;
            let (lo, len) = (s * sub, sub.min(elems - s * sub));
            self.stage(si, (inputs, in_dtypes), lo, len, layout);
            // SAFETY: the slot is idle (finished above) and its buffers hold `len` elements.
            unsafe { self.launch(si, inputs.len(), lo, len, layout, in_dtype, dest, coeffs)? };
            self.slots[si].pending = Some((lo, len));
        }
        for s in subs.saturating_sub(SLOTS)..subs {
            self.finish(s % SLOTS, dest, layout.out_stride, &mut bad)?;
        }
        Ok(bad)
    }

    /// Sizes every slot's buffers for sub-chunks of this pass.
    fn buffers(
        &mut self,
        in_dtype: DType,
        n: usize,
        elems: usize,
        dest: &Dest,
    ) -> DevResult<Layout> {
        let ies = in_dtype.size();
        let span = self.sub.min(elems.next_multiple_of(GRAM_BLOCK));
        let in_stride = (span * ies).next_multiple_of(ALIGN);
        let (out_stride, out_bytes) = match dest {
            Dest::Gram { pairs, .. } => (0, span / GRAM_BLOCK * *pairs * 8),
            Dest::Combine {
                outs, out_dtype, ..
            } => {
                let s = (span * out_dtype.size()).next_multiple_of(ALIGN);
                (s, s * outs.len())
            }
        };
        for slot in &mut self.slots {
            slot.pin_in.ensure(in_stride * n)?;
            slot.dev_in.ensure(in_stride * n)?;
            slot.pin_out.ensure(out_bytes)?;
            slot.dev_out.ensure(out_bytes)?;
            slot.pin_flag.ensure(8)?;
            slot.dev_flag.ensure(8)?;
        }
        Ok(Layout {
            ies,
            in_stride,
            out_stride,
        })
    }

    /// Copies elements `lo..lo+len` of every input into slot `si`'s pinned buffer (which also
    /// faults mapped file pages in, in parallel), converting to f32 an input whose dtype is not
    /// the layout's. The slot must be idle.
    fn stage(
        &mut self,
        si: usize,
        (inputs, dtypes): (&[&[u8]], &[DType]),
        lo: usize,
        len: usize,
        l: Layout,
    ) {
        let slot = &mut self.slots[si];
        for (j, x) in inputs.iter().enumerate() {
            // SAFETY: the slot is idle: no device operation uses its buffers.
            let dst = unsafe { slot.pin_in.slice_mut(j * l.in_stride, len * l.ies) };
            let dt = dtype_of(dtypes, j);
            let es = dt.size();
            if es == l.ies {
                par_copy(dst, &x[lo * es..(lo + len) * es]);
            } else {
                par_convert_f32(dt, dst, &x[lo * es..(lo + len) * es]);
            }
        }
    }

    /// Queues slot `si`'s sub-chunk: copy in on `h2d`, the kernel on `compute`, copy out on
    /// `d2h`, each stream waiting for the previous one's event.
    ///
    /// # Safety
    /// The slot must be idle and staged for `len` elements of `n` inputs with `layout`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn launch(
        &self,
        si: usize,
        n: usize,
        lo: usize,
        len: usize,
        l: Layout,
        in_dtype: DType,
        dest: &Dest,
        coeffs: (sys::CUdeviceptr, usize),
    ) -> DevResult<()> {
        let slot = &self.slots[si];
        self.copy_in(slot, n, len, l)?;
        let p_in: u64 = slot.dev_in.ptr;
        let in_stride = l.in_stride as u64;
        let n_in = n as i32;
        let in_dt = dtype_code(in_dtype);
        let elems = len as u64;
        let base = lo as u64;
        let p_out: u64 = slot.dev_out.ptr;
        let p_flag: u64 = slot.dev_flag.ptr;
        // The argument order is the kernels' parameter order (kernels.cu).
        match dest {
            Dest::Gram { pairs, .. } => {
                let threads = len.div_ceil(GRAM_BLOCK) * *pairs * 8;
                let mut b = self.compute.launch_builder(&self.f_gram);
                b.arg(&p_in).arg(&in_stride).arg(&n_in).arg(&in_dt);
                b.arg(&elems).arg(&base).arg(&p_out).arg(&p_flag);
                b.launch(grid(threads)).ctx("launching warp_gram")?;
            }
            Dest::Combine {
                outs,
                out_dtype,
                check_finite,
            } => {
                debug_assert_eq!(coeffs.1, outs.len() * n);
                let p_coeffs: u64 = coeffs.0;
                let k = outs.len() as i32;
                let out_stride = l.out_stride as u64;
                let out_dt = dtype_code(*out_dtype);
                let check = *check_finite as i32;
                let mut b = self.compute.launch_builder(&self.f_combine);
                b.arg(&p_in).arg(&in_stride).arg(&n_in).arg(&in_dt);
                b.arg(&p_coeffs)
                    .arg(&k)
                    .arg(&p_out)
                    .arg(&out_stride)
                    .arg(&out_dt);
                b.arg(&elems).arg(&base).arg(&check).arg(&p_flag);
                b.launch(grid(len)).ctx("launching warp_combine")?;
            }
        }
        cu::event::record(slot.ev_kernel, self.compute.cu_stream()).ctx("cuEventRecord")?;
        self.copy_out(slot, len, l, dest)
    }

    /// The H2D copies of a staged slot on `h2d`; `compute` waits for them and clears the
    /// slot's non-finite flag.
    ///
    /// # Safety
    /// The slot must be staged for `len` elements of `n` inputs with `l`.
    unsafe fn copy_in(&self, slot: &Slot, n: usize, len: usize, l: Layout) -> DevResult<()> {
        for j in 0..n {
            let off = j * l.in_stride;
            sys::cuMemcpyHtoDAsync_v2(
                slot.dev_in.ptr + off as u64,
                slot.pin_in.ptr.add(off) as *const c_void,
                len * l.ies,
                self.h2d.cu_stream(),
            )
            .result()
            .ctx("cuMemcpyHtoDAsync")?;
        }
        cu::event::record(slot.ev_h2d, self.h2d.cu_stream()).ctx("cuEventRecord")?;
        let wait = sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT;
        cu::stream::wait_event(self.compute.cu_stream(), slot.ev_h2d, wait)
            .ctx("cuStreamWaitEvent")?;
        cu::memset_d8_async(slot.dev_flag.ptr, 0xFF, 8, self.compute.cu_stream())
            .ctx("cuMemsetD8Async")
    }

    /// The D2H copies of a slot's results (and its flag) on `d2h`, after its kernel.
    ///
    /// # Safety
    /// The slot's kernel must be queued, its `ev_kernel` recorded after it.
    unsafe fn copy_out(&self, slot: &Slot, len: usize, l: Layout, dest: &Dest) -> DevResult<()> {
        let wait = sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT;
        cu::stream::wait_event(self.d2h.cu_stream(), slot.ev_kernel, wait)
            .ctx("cuStreamWaitEvent")?;
        let d2h = |off: usize, bytes: usize| {
            sys::cuMemcpyDtoHAsync_v2(
                slot.pin_out.ptr.add(off) as *mut c_void,
                slot.dev_out.ptr + off as u64,
                bytes,
                self.d2h.cu_stream(),
            )
            .result()
            .ctx("cuMemcpyDtoHAsync")
        };
        match dest {
            Dest::Gram { pairs, .. } => d2h(0, len.div_ceil(GRAM_BLOCK) * *pairs * 8)?,
            Dest::Combine {
                outs, out_dtype, ..
            } => {
                for k in 0..outs.len() {
                    d2h(k * l.out_stride, len * out_dtype.size())?;
                }
            }
        }
        sys::cuMemcpyDtoHAsync_v2(
            slot.pin_flag.ptr as *mut c_void,
            slot.dev_flag.ptr,
            8,
            self.d2h.cu_stream(),
        )
        .result()
        .ctx("cuMemcpyDtoHAsync")?;
        cu::event::record(slot.ev_done, self.d2h.cu_stream()).ctx("cuEventRecord")
    }

    /// Waits for the sub-chunk in flight in slot `si` (if any) and copies its results out
    /// (`out_stride`: bytes between the K outputs in the staging buffer).
    fn finish(
        &mut self,
        si: usize,
        dest: &mut Dest,
        out_stride: usize,
        bad: &mut Option<u64>,
    ) -> DevResult<()> {
        let slot = &mut self.slots[si];
        let Some((lo, len)) = slot.pending.take() else {
            return Ok(());
        };
        // SAFETY: a live event recorded after the last copy into this slot's host buffers.
        unsafe { cu::event::synchronize(slot.ev_done) }.ctx("cuEventSynchronize")?;
        let word = |b: &[u8]| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            a
        };
        // SAFETY (reads below): the device is done with this slot.
        let flag = u64::from_le_bytes(word(unsafe { slot.pin_flag.slice(0, 8) }));
        if flag != u64::MAX {
            *bad = Some(bad.map_or(flag, |b| b.min(flag)));
        }
        match dest {
            Dest::Gram { out, pairs } => {
                let first = lo / GRAM_BLOCK * *pairs;
                let n = len.div_ceil(GRAM_BLOCK) * *pairs;
                let bytes = unsafe { slot.pin_out.slice(0, n * 8) };
                for (o, b) in out[first..first + n].iter_mut().zip(bytes.chunks_exact(8)) {
                    *o = f64::from_le_bytes(word(b));
                }
            }
            Dest::Combine {
                outs, out_dtype, ..
            } => {
                let oes = out_dtype.size();
                for (k, o) in outs.iter_mut().enumerate() {
                    let src = unsafe { slot.pin_out.slice(k * out_stride, len * oes) };
                    par_copy(&mut o[lo * oes..(lo + len) * oes], src);
                }
            }
        }
        Ok(())
    }

    /// Abandons whatever is in flight (after an error), as far as the device still answers.
    fn reset(&mut self) {
        let _ = self.bind();
        for s in [&self.h2d, &self.compute, &self.d2h] {
            let _ = s.synchronize();
        }
        for slot in &mut self.slots {
            slot.pending = None;
        }
    }

    fn gram(
        &mut self,
        dtypes: &[DType],
        inputs: &[&[u8]],
        out: &mut Vec<f64>,
    ) -> DevResult<std::result::Result<(), NonFinite>> {
        let n = inputs.len();
        let pairs = upper_len(n.saturating_sub(1));
        let elems = inputs[0].len() / dtype_of(dtypes, 0).size();
        let start = out.len();
        out.resize(start + elems.div_ceil(GRAM_BLOCK) * pairs, 0.0);
        if pairs == 0 || elems == 0 {
            return Ok(Ok(()));
        }
        self.bind()?;
        let mut dest = Dest::Gram {
            out: &mut out[start..],
            pairs,
        };
        let bad = self.pipeline(dtypes, inputs, elems, &mut dest, (0, 0))?;
        Ok(match bad {
            Some(key) => Err(decode_key(key, n)),
            None => Ok(()),
        })
    }

    fn combine(
        &mut self,
        in_dtypes: &[DType],
        inputs: &[&[u8]],
        coeffs: &[Vec<f32>],
        out_dtype: DType,
        outs: &mut [&mut [u8]],
        check_finite: bool,
    ) -> DevResult<std::result::Result<(), NonFinite>> {
        let n = inputs.len();
        let elems = inputs[0].len() / dtype_of(in_dtypes, 0).size();
        if elems == 0 || (coeffs.is_empty() && !check_finite) {
            return Ok(Ok(()));
        }
        self.bind()?;
        // Only inputs some output uses go to the device (a zero column is never read), unless
        // all must be checked.
        let used: Vec<usize> = (0..n)
            .filter(|&i| check_finite || coeffs.iter().any(|r| r[i] != 0.0))
            .collect();
        let dev_inputs: Vec<&[u8]> = used.iter().map(|&i| inputs[i]).collect();
        let dev_dtypes: Vec<DType> = used.iter().map(|&i| dtype_of(in_dtypes, i)).collect();
        let flat: Vec<f32> = coeffs
            .iter()
            .flat_map(|r| used.iter().map(move |&i| r[i]))
            .collect();
        if !flat.is_empty() {
            self.coeffs.ensure(flat.len() * 4)?;
            // SAFETY: the buffer holds `flat`; no kernel is running (every call drains).
            unsafe { cu::memcpy_htod_sync(self.coeffs.ptr, &flat) }.ctx("cuMemcpyHtoD")?;
        }
        let oes = out_dtype.size();
        let mut out_slices: Vec<&mut [u8]> =
            outs.iter_mut().map(|o| &mut o[..elems * oes]).collect();
        let mut dest = Dest::Combine {
            outs: &mut out_slices,
            out_dtype,
            check_finite,
        };
        let bad = self.pipeline(
            &dev_dtypes,
            &dev_inputs,
            elems,
            &mut dest,
            (self.coeffs.ptr, flat.len()),
        )?;
        Ok(match bad {
            // With check_finite every input is on the device, so device index = input index.
            Some(key) => Err(decode_key(key, n)),
            None => Ok(()),
        })
    }

    /// Pinned host → device bandwidth alone, in GB/s (10⁹ bytes per second).
    fn bench_h2d(&mut self, bytes: usize, reps: usize) -> DevResult<f64> {
        self.bind()?;
        let mut host = HostBuf::new();
        let mut dev = DevBuf::new();
        host.ensure(bytes)?;
        dev.ensure(bytes)?;
        // SAFETY: nothing uses the fresh buffer yet; touching it maps its pages.
        unsafe { host.slice_mut(0, bytes) }
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = i as u8);
        let stream = self.h2d.cu_stream();
        // SAFETY: both buffers hold `bytes`; nothing else uses them.
        let copy = |host: &HostBuf| unsafe {
            sys::cuMemcpyHtoDAsync_v2(dev.ptr, host.ptr as *const c_void, bytes, stream)
                .result()
                .ctx("cuMemcpyHtoDAsync")
        };
        copy(&host)?;
        self.h2d.synchronize().ctx("cuStreamSynchronize")?;
        let t = Instant::now();
        for _ in 0..reps {
            copy(&host)?;
        }
        self.h2d.synchronize().ctx("cuStreamSynchronize")?;
        let secs = t.elapsed().as_secs_f64();
        Ok((bytes * reps) as f64 / secs / 1e9)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The raw buffers and events go first, with the context current and the streams idle;
        // the streams, module and context (cudarc's) are released after, by their own drops.
        let _ = self.bind();
        for s in [&self.h2d, &self.compute, &self.d2h] {
            let _ = s.synchronize();
        }
        self.slots.clear();
        self.coeffs.free();
    }
}

/// The CUDA backend of one device.
pub struct CudaBackend {
    name: String,
    strict: bool,
    /// Set after a device error: every later call runs on the CPU.
    failed: AtomicBool,
    inner: Mutex<Inner>,
}

impl CudaBackend {
    /// Opens device `device`: loads the driver and NVRTC, compiles the kernels for the device.
    pub fn open(device: usize, opts: Options) -> Result<CudaBackend> {
        if !driver_present() {
            return Err(usage(
                device,
                "no CUDA driver found (libcuda.so): install the NVIDIA driver, or compute on the CPU",
            ));
        }
        // A symbol missing from an old driver is a panic inside cudarc: make it an error.
        match std::panic::catch_unwind(AssertUnwindSafe(|| Self::open_inner(device, opts))) {
            Ok(r) => r,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown failure".into());
                Err(usage(device, format!("CUDA initialisation failed: {msg}")))
            }
        }
    }

    fn open_inner(device: usize, opts: Options) -> Result<CudaBackend> {
        cu::init().map_err(|e| {
            usage(
                device,
                format!("the CUDA driver found no usable GPU ({})", describe(e)),
            )
        })?;
        let count = cu::device::get_count().map_err(|e| usage(device, describe(e)))?;
        if count <= 0 {
            return Err(usage(device, "no CUDA device found"));
        }
        if device >= count as usize {
            return Err(usage(
                device,
                format!("this machine has {count} CUDA device(s), numbered from 0"),
            ));
        }
        let dev = cu::device::get(device as i32).map_err(|e| usage(device, describe(e)))?;
        let gpu = cu::device::get_name(dev).unwrap_or_else(|_| "GPU".into());
        let attr = |a| unsafe { cu::device::get_attribute(dev, a) };
        let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
            .map_err(|e| usage(device, describe(e)))?;
        let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
            .map_err(|e| usage(device, describe(e)))?;
        let Some((nv_major, nv_minor)) = nvrtc_version() else {
            return Err(usage(
                device,
                "NVRTC not found (libnvrtc.so): add the CUDA toolkit's lib64 folder to \
                 LD_LIBRARY_PATH or set CUDA_HOME, or compute on the CPU",
            ));
        };
        let image = compile_kernels(&format!("sm_{major}{minor}"))
            .map_err(|e| usage(device, format!("sm_{major}{minor}: {e}")))?;
        let sub = opts.sub_chunk_elems.max(1).next_multiple_of(GRAM_BLOCK);
        let setup = || -> DevResult<Inner> {
            let ctx = CudaContext::new(device).ctx("cuDevicePrimaryCtxRetain")?;
            let module = ctx
                .load_module(Ptx::from_binary(image))
                .ctx("cuModuleLoadData")?;
            let f_gram = module
                .load_function("warp_gram")
                .ctx("cuModuleGetFunction(warp_gram)")?;
            let f_combine = module
                .load_function("warp_combine")
                .ctx("cuModuleGetFunction(warp_combine)")?;
            let stream = || ctx.new_stream().ctx("cuStreamCreate");
            let (h2d, compute, d2h) = (stream()?, stream()?, stream()?);
            let mut slots = Vec::with_capacity(SLOTS);
            for _ in 0..SLOTS {
                slots.push(Slot::new()?);
            }
            Ok(Inner {
                ctx,
                f_gram,
                f_combine,
                h2d,
                compute,
                d2h,
                slots,
                coeffs: DevBuf::new(),
                sub,
            })
        };
        let inner = setup().map_err(|e| usage(device, e))?;
        Ok(CudaBackend {
            name: format!("cuda:{device} ({gpu}, sm_{major}{minor}, NVRTC {nv_major}.{nv_minor})"),
            strict: opts.strict,
            failed: AtomicBool::new(false),
            inner: Mutex::new(inner),
        })
    }

    fn with_inner<T>(&self, f: impl FnOnce(&mut Inner) -> DevResult<T>) -> Option<T> {
        if self.failed.load(Ordering::Relaxed) {
            return None;
        }
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            Err(_) => {
                self.fail("the backend's state was poisoned by an earlier panic");
                return None;
            }
        };
        match f(&mut guard) {
            Ok(v) => Some(v),
            Err(e) => {
                guard.reset();
                drop(guard);
                self.fail(&e);
                None
            }
        }
    }

    fn fail(&self, e: &str) {
        if self.strict {
            panic!("CUDA backend: {e}");
        }
        if !self.failed.swap(true, Ordering::Relaxed) {
            eprintln!(
                "warning: {}: {e}; finishing on the CPU (same results, slower)",
                self.name
            );
        }
    }

    /// Pinned host → device copy bandwidth alone (GB/s) over `reps` copies of `bytes`.
    pub fn h2d_bandwidth(&self, bytes: usize, reps: usize) -> Result<f64> {
        let mut g = self
            .inner
            .lock()
            .map_err(|_| Error::Internal("CUDA backend state poisoned".into()))?;
        g.bench_h2d(bytes.max(1), reps.max(1))
            .map_err(|e| Error::compute(&self.name, e))
    }

    /// Whether a device error made this backend fall back to the CPU.
    pub fn fell_back(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> String {
        if self.fell_back() {
            format!("{} — failed, running on the CPU", self.name)
        } else {
            self.name.clone()
        }
    }

    fn gram(
        &self,
        dtypes: &[DType],
        inputs: &[&[u8]],
        out: &mut Vec<f64>,
    ) -> Result<(), NonFinite> {
        let start = out.len();
        if let Some(r) = self.with_inner(|g| g.gram(dtypes, inputs, out)) {
            return r;
        }
        out.truncate(start);
        Cpu.gram(dtypes, inputs, out)
    }

    fn combine(
        &self,
        in_dtypes: &[DType],
        inputs: &[&[u8]],
        coeffs: &[Vec<f32>],
        out_dtype: DType,
        outs: &mut [&mut [u8]],
        check_finite: bool,
    ) -> Result<(), NonFinite> {
        if let Some(r) =
            self.with_inner(|g| g.combine(in_dtypes, inputs, coeffs, out_dtype, outs, check_finite))
        {
            return r;
        }
        Cpu.combine(in_dtypes, inputs, coeffs, out_dtype, outs, check_finite)
    }
}
