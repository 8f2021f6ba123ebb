//! Safetensors dtypes and the float conversions the engine computes with.
//!
//! Compute is f32. bf16/f16 are rounded to nearest, ties to even (the `half` crate's `from_f32`
//! does this for f16; bf16 is done here with the classic bit trick so the loop vectorizes).

use std::fmt;
use std::str::FromStr;

/// Names follow the safetensors header spelling.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DType {
    BOOL,
    U8,
    I8,
    F8_E5M2,
    F8_E4M3,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

impl DType {
    pub const ALL: [DType; 15] = [
        DType::BOOL,
        DType::U8,
        DType::I8,
        DType::F8_E5M2,
        DType::F8_E4M3,
        DType::I16,
        DType::U16,
        DType::F16,
        DType::BF16,
        DType::I32,
        DType::U32,
        DType::F32,
        DType::F64,
        DType::I64,
        DType::U64,
    ];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::BOOL | DType::U8 | DType::I8 | DType::F8_E5M2 | DType::F8_E4M3 => 1,
            DType::I16 | DType::U16 | DType::F16 | DType::BF16 => 2,
            DType::I32 | DType::U32 | DType::F32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
        }
    }

    /// Whether the merge engine computes on this dtype (others are passed through unchanged).
    /// fp8 is excluded on purpose: its scaling conventions are not in the file.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::BOOL => "BOOL",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::F8_E5M2 => "F8_E5M2",
            DType::F8_E4M3 => "F8_E4M3",
            DType::I16 => "I16",
            DType::U16 => "U16",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I32 => "I32",
            DType::U32 => "U32",
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::I64 => "I64",
            DType::U64 => "U64",
        }
    }

    /// Parse the dtype string of a safetensors header (exact, upper case).
    pub fn from_header(s: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == s)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The `--dtype` option of the binaries: a float dtype or "same" (keep each tensor's dtype).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutDType {
    #[default]
    Same,
    To(DType),
}

impl OutDType {
    /// The dtype a tensor stored as `input` is written as. Non-float tensors never change.
    pub fn resolve(self, input: DType) -> DType {
        match self {
            OutDType::To(d) if input.is_float() => d,
            _ => input,
        }
    }
}

impl FromStr for OutDType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "same" => Ok(OutDType::Same),
            "bf16" | "bfloat16" => Ok(OutDType::To(DType::BF16)),
            "f16" | "fp16" | "float16" => Ok(OutDType::To(DType::F16)),
            "f32" | "fp32" | "float32" => Ok(OutDType::To(DType::F32)),
            "f64" | "fp64" | "float64" => Ok(OutDType::To(DType::F64)),
            _ => Err(format!(
                "unknown dtype '{s}' (expected bf16, f16, f32, f64 or same)"
            )),
        }
    }
}

impl fmt::Display for OutDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutDType::Same => f.write_str("same"),
            OutDType::To(d) => write!(f, "{}", d.name().to_ascii_lowercase()),
        }
    }
}

#[inline]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// f32 → bf16 bits, round to nearest, ties to even; NaN stays a (quiet) NaN.
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16) as u16;
    let quiet_nan = ((bits >> 16) as u16) | 0x0040;
    // A select rather than an early return, so loops over this vectorize.
    if x.is_nan() {
        quiet_nan
    } else {
        rounded
    }
}

/// Reinterprets little-endian bytes as 16-bit words when they are aligned (the usual case: the
/// safetensors data section starts 8-aligned). None means: take the byte-wise path.
#[inline]
fn words16(bytes: &[u8]) -> Option<&[u16]> {
    // SAFETY: every bit pattern is a valid u16; align_to only yields the aligned middle part.
    let (pre, mid, post) = unsafe { bytes.align_to::<u16>() };
    (cfg!(target_endian = "little") && pre.is_empty() && post.is_empty()).then_some(mid)
}

#[inline]
fn words16_mut(bytes: &mut [u8]) -> Option<&mut [u16]> {
    // SAFETY: as in `words16`; writes of any u16 are valid bytes.
    let (pre, mid, post) = unsafe { bytes.align_to_mut::<u16>() };
    (cfg!(target_endian = "little") && pre.is_empty() && post.is_empty()).then_some(mid)
}

/// Decode `bytes` (little-endian, `dtype`) into `out` as f32. `out.len()` elements are read.
/// Aligned input takes word-wise loops that the compiler vectorizes (the hot path of every merge).
pub fn decode_f32(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    let n = out.len();
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes[..n * 4].chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::BF16 => match words16(&bytes[..n * 2]) {
            Some(w) => {
                for (o, &b) in out.iter_mut().zip(w) {
                    *o = bf16_to_f32(b);
                }
            }
            None => {
                for (o, c) in out.iter_mut().zip(bytes[..n * 2].chunks_exact(2)) {
                    *o = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
                }
            }
        },
        DType::F16 => match words16(&bytes[..n * 2]) {
            Some(w) => {
                use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
                w.reinterpret_cast::<half::f16>().convert_to_f32_slice(out);
            }
            None => {
                for (o, c) in out.iter_mut().zip(bytes[..n * 2].chunks_exact(2)) {
                    *o = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                }
            }
        },
        DType::F64 => {
            for (o, c) in out.iter_mut().zip(bytes[..n * 8].chunks_exact(8)) {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                *o = f64::from_le_bytes(a) as f32;
            }
        }
        other => unreachable!("decode_f32 on non-float dtype {other}"),
    }
}

/// Encode f32 values into `out` as `dtype` (round to nearest even). `out.len() == x.len() * size`.
pub fn encode_f32(dtype: DType, x: &[f32], out: &mut [u8]) {
    match dtype {
        DType::F32 => {
            for (v, c) in x.iter().zip(out.chunks_exact_mut(4)) {
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        DType::BF16 => match words16_mut(out) {
            Some(w) => {
                for (o, v) in w.iter_mut().zip(x) {
                    *o = f32_to_bf16(*v);
                }
            }
            None => {
                for (v, c) in x.iter().zip(out.chunks_exact_mut(2)) {
                    c.copy_from_slice(&f32_to_bf16(*v).to_le_bytes());
                }
            }
        },
        DType::F16 => match words16_mut(out) {
            Some(w) => {
                use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
                w.reinterpret_cast_mut::<half::f16>()
                    .convert_from_f32_slice(x);
            }
            None => {
                for (v, c) in x.iter().zip(out.chunks_exact_mut(2)) {
                    c.copy_from_slice(&half::f16::from_f32(*v).to_bits().to_le_bytes());
                }
            }
        },
        DType::F64 => {
            for (v, c) in x.iter().zip(out.chunks_exact_mut(8)) {
                c.copy_from_slice(&(*v as f64).to_le_bytes());
            }
        }
        other => unreachable!("encode_f32 on non-float dtype {other}"),
    }
}

/// The first element of `bytes` (little-endian floats of `dtype`) that is NaN or infinite: the
/// exponent bits all set. A branch-free scan first (it vectorizes), then the search. Non-float
/// dtypes have no such values.
pub fn first_nonfinite(dtype: DType, bytes: &[u8]) -> Option<usize> {
    fn scan<const N: usize>(bytes: &[u8], exp: u64) -> Option<usize> {
        let word = |c: &[u8]| {
            let mut a = [0u8; 8];
            a[..N].copy_from_slice(c);
            u64::from_le_bytes(a)
        };
        let bad = |c: &[u8]| word(c) & exp == exp;
        if !bytes.chunks_exact(N).fold(false, |acc, c| acc | bad(c)) {
            return None;
        }
        bytes.chunks_exact(N).position(bad)
    }
    match dtype {
        DType::BF16 => match words16(bytes) {
            Some(w) => {
                if !w.iter().fold(false, |acc, &b| acc | (b & 0x7F80 == 0x7F80)) {
                    return None;
                }
                w.iter().position(|&b| b & 0x7F80 == 0x7F80)
            }
            None => scan::<2>(bytes, 0x7F80),
        },
        DType::F16 => match words16(bytes) {
            Some(w) => {
                if !w.iter().fold(false, |acc, &b| acc | (b & 0x7C00 == 0x7C00)) {
                    return None;
                }
                w.iter().position(|&b| b & 0x7C00 == 0x7C00)
            }
            None => scan::<2>(bytes, 0x7C00),
        },
        DType::F32 => scan::<4>(bytes, 0x7F80_0000),
        DType::F64 => scan::<8>(bytes, 0x7FF0_0000_0000_0000),
        _ => None,
    }
}

/// [`first_nonfinite`] over large buffers, on several threads (rayon).
pub fn first_nonfinite_par(dtype: DType, bytes: &[u8]) -> Option<usize> {
    use rayon::prelude::*;
    const PIECE: usize = 1 << 20;
    let es = dtype.size();
    let piece = PIECE / es * es;
    if bytes.len() <= piece {
        return first_nonfinite(dtype, bytes);
    }
    bytes
        .par_chunks(piece)
        .enumerate()
        .find_map_first(|(p, c)| first_nonfinite(dtype, c).map(|i| p * (piece / es) + i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonfinite_scan_finds_the_first_nan_or_inf() {
        for d in [DType::BF16, DType::F16, DType::F32, DType::F64] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut xs = vec![1.5f32; 300];
                xs[0] = f32::MAX.min(6e4);
                xs[7] = -0.0;
                xs[201] = bad;
                xs[250] = bad;
                let mut bytes = vec![0u8; xs.len() * d.size() + 1];
                // Aligned and one byte off (the byte-wise path).
                for off in [0, 1] {
                    encode_f32(d, &xs, &mut bytes[off..off + xs.len() * d.size()]);
                    let b = &bytes[off..off + xs.len() * d.size()];
                    assert_eq!(first_nonfinite(d, b), Some(201), "{d} {bad} {off}");
                }
            }
            let ok = vec![0u8; 64];
            assert_eq!(first_nonfinite(d, &ok), None);
        }
        // f16 overflow: 1e5 does not fit and becomes infinite.
        let mut b = [0u8; 2];
        encode_f32(DType::F16, &[1e5], &mut b);
        assert_eq!(first_nonfinite(DType::F16, &b), Some(0));
        assert_eq!(first_nonfinite(DType::I32, &[0xFF; 8]), None);
        // The parallel scan reports the same first element across pieces.
        let mut big = vec![0u8; 3 << 20];
        big[(2 << 20) + 6..(2 << 20) + 8].copy_from_slice(&0x7F80u16.to_le_bytes());
        big[(2 << 20) + 100..(2 << 20) + 102].copy_from_slice(&0xFFC0u16.to_le_bytes());
        assert_eq!(first_nonfinite_par(DType::BF16, &big), Some((1 << 20) + 3));
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // Exactly halfway between 0x3F80 and 0x3F81: ties to the even one (0x3F80).
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8000)), 0x3F80);
        // Halfway between 0x3F81 and 0x3F82: ties to 0x3F82.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F81_8000)), 0x3F82);
        // Just above halfway rounds up.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8001)), 0x3F81);
        // Just below halfway rounds down.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_7FFF)), 0x3F80);
        // Overflow to infinity, as IEEE rounding does.
        assert_eq!(f32_to_bf16(f32::MAX), 0x7F80);
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
        assert_eq!(f32_to_bf16(-0.0), 0x8000);
    }

    #[test]
    fn bf16_agrees_with_half_crate() {
        // Independent implementation: half::bf16::from_f32 (RNE). Sweep a spread of bit patterns.
        let mut s: u32 = 12345;
        for _ in 0..200_000 {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            let x = f32::from_bits(s);
            if x.is_nan() {
                continue;
            }
            assert_eq!(f32_to_bf16(x), half::bf16::from_f32(x).to_bits(), "{x:e}");
        }
    }

    #[test]
    fn aligned_and_unaligned_paths_agree() {
        let xs: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.0137).collect();
        for d in [DType::BF16, DType::F16] {
            // One byte of slack so the same data can sit at an odd (unaligned) offset.
            let mut a = vec![0u8; xs.len() * 2 + 2];
            let mut b = vec![0u8; xs.len() * 2 + 2];
            let off = if words16(&a[..2]).is_some() { 1 } else { 0 };
            encode_f32(d, &xs, &mut a[1 - off..1 - off + xs.len() * 2]);
            encode_f32(d, &xs, &mut b[off..off + xs.len() * 2]);
            assert_eq!(
                &a[1 - off..1 - off + xs.len() * 2],
                &b[off..off + xs.len() * 2]
            );
            let mut fa = vec![0f32; xs.len()];
            let mut fb = vec![0f32; xs.len()];
            decode_f32(d, &a[1 - off..1 - off + xs.len() * 2], &mut fa);
            decode_f32(d, &b[off..off + xs.len() * 2], &mut fb);
            assert_eq!(fa, fb);
        }
    }

    #[test]
    fn round_trips() {
        let xs = [0.0f32, 1.0, -2.5, 3.140625, 1e-3, -65504.0];
        for d in [DType::F32, DType::F64, DType::F16, DType::BF16] {
            let mut bytes = vec![0u8; xs.len() * d.size()];
            encode_f32(d, &xs, &mut bytes);
            let mut back = vec![0f32; xs.len()];
            decode_f32(d, &bytes, &mut back);
            for (a, b) in xs.iter().zip(&back) {
                let tol = match d {
                    DType::BF16 => a.abs() / 128.0,
                    DType::F16 => a.abs() / 1024.0 + 1e-7,
                    _ => 0.0,
                };
                assert!((a - b).abs() <= tol, "{d}: {a} -> {b}");
            }
        }
    }

    #[test]
    fn out_dtype_parsing() {
        assert_eq!("BF16".parse::<OutDType>(), Ok(OutDType::To(DType::BF16)));
        assert_eq!("same".parse::<OutDType>(), Ok(OutDType::Same));
        assert!("int4".parse::<OutDType>().is_err());
        assert_eq!(OutDType::To(DType::F32).resolve(DType::I64), DType::I64);
    }
}
