//! The compute seam of the engine: two kernels over one chunk of N aligned input slices.
//! `cpu` implements it with rayon; `cuda` (feature `cuda`) on the GPU. Without the feature a
//! dummy CUDA backend exists that only says so, so no caller needs `#[cfg]`.

use crate::device::Device;
use crate::io::DType;

/// Elements per Gram block. Partial sums are produced per block and folded in block order by the
/// engine, so the Gram matrix is bit-identical for any thread count, chunk size or budget.
pub const GRAM_BLOCK: usize = 8192;

/// The first non-finite value met: which input, which element of the chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonFinite {
    pub input: usize,
    pub index: u64,
}

/// Number of upper-triangle entries of an M×M Gram matrix.
pub fn upper_len(m: usize) -> usize {
    m * (m + 1) / 2
}

/// The dtype of input `i` given the inputs' dtypes as the kernels take them: one per input, or
/// a single one shared by all (inputs may mix float dtypes: every kernel computes in f32).
pub fn dtype_of(dtypes: &[DType], i: usize) -> DType {
    if dtypes.len() == 1 {
        dtypes[0]
    } else {
        dtypes[i]
    }
}

/// Whether every input has the same dtype (then it is that one).
pub fn uniform(dtypes: &[DType]) -> Option<DType> {
    let first = *dtypes.first()?;
    dtypes.iter().all(|&d| d == first).then_some(first)
}

/// The kernel seam. `dtypes`/`in_dtypes` give the inputs' dtypes (see [`dtype_of`]).
pub trait Backend: Send + Sync {
    fn name(&self) -> String;

    /// Gram partial sums of the task vectors δm = x_m − x_0 (m = 1..N−1) of one chunk: for each
    /// block of [`GRAM_BLOCK`] elements in order, the upper triangle (i ≤ j, row-major) of
    /// Σ δi·δj accumulated in f64. Appends `blocks × upper_len(N−1)` values to `out`.
    /// Reports the first non-finite input value instead, when one exists.
    fn gram(&self, dtypes: &[DType], inputs: &[&[u8]], out: &mut Vec<f64>)
        -> Result<(), NonFinite>;

    /// out_k = Σ_n coeffs[k][n] · x_n for every element, computed in f32 (terms added in input
    /// order, the first non-zero term initialising the sum), encoded as `out_dtype` with
    /// round-to-nearest-even. Zero coefficients skip their input. When `check_finite`, reports
    /// the first non-finite input value.
    fn combine(
        &self,
        in_dtypes: &[DType],
        inputs: &[&[u8]],
        coeffs: &[Vec<f32>],
        out_dtype: DType,
        outs: &mut [&mut [u8]],
        check_finite: bool,
    ) -> Result<(), NonFinite>;
}

/// The backend for `device`. `Auto` falls back to the CPU when no GPU can be used.
pub fn backend_for(device: Device) -> crate::Result<Box<dyn Backend>> {
    match device {
        Device::Cpu => Ok(Box::new(super::cpu::Cpu)),
        Device::Cuda(n) => super::cuda::open(n),
        Device::Auto => Ok(super::cuda::open(0).unwrap_or_else(|_| Box::new(super::cpu::Cpu))),
    }
}
