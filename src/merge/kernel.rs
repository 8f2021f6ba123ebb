//! The per-chunk combine seam of recipe merges (`warp merge`), beside [`Method`](super::Method)'s
//! linear coefficients. A merge of one tensor is at most three kinds of pass over its N inputs,
//! each streamed chunk by chunk within the memory budget, never holding a whole tensor:
//!
//! 1. **selection** (optional): for each [`Kernel::selections`] key (e.g. |δ_m| = |x_m − x_base|
//!    for TIES, the variance across task vectors for SCE) the executor finds the element at a
//!    given rank by two histogram passes over the f32 bit patterns of the key (top 16 bits, then
//!    the low 16 bits inside the one top bin that holds the rank). A rank window `[lo, hi)` of
//!    the ascending order (ties broken by element index) then marks every element kept or not;
//! 2. **sums** (optional): per-tensor f64 sums the kernel accumulates block by block (norms,
//!    Gram entries, L1 norms of masked task vectors), folded in block order so that they are the
//!    same bits for any chunking, thread count or budget; [`Kernel::prepare`] turns them into the
//!    tensor's parameters (coefficients, rescaling factors);
//! 3. **combine**: the element-wise kernel over each block of the N inputs' f32 values.
//!
//! Blocks are [`Kernel::block_len`] elements ([`BLOCK`], or whole rows for row-wise kernels
//! such as DELLA's ranks) at fixed positions of the tensor, so every pass sees the same blocks
//! whatever the chunk size. Random decisions (DARE, DELLA) are pure functions of
//! (seed, tensor, input, element index) through [`keep_random`], so they do not depend on
//! chunking, threads, budget or device either.

// Index loops follow the formulas (several arrays indexed by the same model/element).
#![allow(clippy::needless_range_loop)]

use crate::error::Result;

/// Elements per block: the unit of the kernels' calls and of the sums' fixed fold order (the
/// same size as the engine's Gram blocks).
pub const BLOCK: usize = 8192;

/// The kept ranks `[lo, hi)` of a selection, in ascending order of the key (ties by index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankWindow {
    pub lo: u64,
    pub hi: u64,
}

impl RankWindow {
    pub fn all(n: u64) -> RankWindow {
        RankWindow { lo: 0, hi: n }
    }
    /// The `k` largest of `n`.
    pub fn top(n: u64, k: u64) -> RankWindow {
        RankWindow {
            lo: n - k.min(n),
            hi: n,
        }
    }
}

/// One block of one tensor, as the kernels see it.
pub struct Block<'a> {
    /// Index in the tensor of the block's first element.
    pub start: u64,
    /// The N inputs' values, decoded to f32 (each `len` long).
    pub xs: &'a [&'a [f32]],
    /// Per selection: whether each element is inside its rank window.
    pub selected: &'a [&'a [bool]],
    /// What [`Kernel::prepare`] made of the sums (empty without sums).
    pub params: &'a [f64],
}

impl Block<'_> {
    pub fn len(&self) -> usize {
        self.xs.first().map_or(0, |x| x.len())
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a tensor's kernel knows before any pass: its name (for random streams), shape, seed.
#[derive(Debug, Clone)]
pub struct TensorCx {
    pub name: String,
    pub numel: u64,
    pub shape: Vec<usize>,
    pub seed: u64,
}

impl TensorCx {
    /// The random stream of input `input` of this tensor.
    pub fn stream(&self, input: usize) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64 ^ self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for b in self.name.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3);
        }
        mix(h ^ (input as u64).wrapping_mul(0xD134_2543_DE82_EF95))
    }
}

/// SplitMix64's finaliser: a bijective mix of 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Counter-based Bernoulli draw: true with probability `p` for element `index` of the stream
/// (a pure function of its arguments: the same answer on any thread, chunk or device).
#[inline]
pub fn keep_random(stream: u64, index: u64, p: f64) -> bool {
    keep_below(stream, index, keep_threshold(p))
}

/// The integer form of [`keep_random`]'s test: with x = u >> 11 < 2^53, x · 2^-53 < p exactly
/// when x < ⌈p · 2^53⌉ (both products are exact), so the same decisions without a float
/// conversion per element.
#[inline]
pub fn keep_threshold(p: f64) -> u64 {
    // `as` saturates: p ≤ 0 (or NaN) → 0 (never), p ≥ 1 → ≥ 2^53 (always).
    (p * (1u64 << 53) as f64).ceil() as u64
}

/// [`keep_random`] with the threshold of [`keep_threshold`].
#[inline]
pub fn keep_below(stream: u64, index: u64, threshold: u64) -> bool {
    let u = mix(stream.wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    (u >> 11) < threshold
}

/// [`keep_below`] for elements `start..start + out.len()` of a stream, written into `out`. The
/// same decisions; with AVX2 (detected at run time) the 64-bit hash runs four lanes at a time
/// (integer arithmetic: bit-identical).
pub fn keep_mask(stream: u64, start: u64, threshold: u64, out: &mut [bool]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked above).
        unsafe { keep_mask_avx2(stream, start, threshold, out) };
        return;
    }
    keep_mask_scalar(stream, start, threshold, out);
}

#[inline(always)]
fn keep_mask_scalar(stream: u64, start: u64, threshold: u64, out: &mut [bool]) {
    for (j, o) in out.iter_mut().enumerate() {
        *o = keep_below(stream, start + j as u64, threshold);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn keep_mask_avx2(stream: u64, start: u64, threshold: u64, out: &mut [bool]) {
    keep_mask_scalar(stream, start, threshold, out);
}

/// The draws `u >> 11` behind [`keep_below`] for elements `start..start + out.len()` of a
/// stream: element j is kept at threshold t when `out[j] < t` (vectorised where the CPU has
/// AVX2; integer arithmetic, so the same values).
pub fn draws(stream: u64, start: u64, out: &mut [u64]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked above).
        unsafe { draws_avx2(stream, start, out) };
        return;
    }
    draws_scalar(stream, start, out);
}

#[inline(always)]
fn draws_scalar(stream: u64, start: u64, out: &mut [u64]) {
    for (j, o) in out.iter_mut().enumerate() {
        let index = start + j as u64;
        *o = mix(stream.wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15))) >> 11;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn draws_avx2(stream: u64, start: u64, out: &mut [u64]) {
    draws_scalar(stream, start, out);
}

/// Reusable buffers of [`rank_order`].
#[derive(Default)]
pub struct RadixScratch {
    keys: Vec<u32>,
    keys_next: Vec<u32>,
    order_next: Vec<u32>,
}

/// The indices of `keys` in ascending order of the key, equal keys in index order — the order
/// of sorting `(key << 32) | index` — into `order`. A stable least-significant-digit radix
/// sort (four 8-bit digits; a digit that every key shares is skipped): linear in the length,
/// where a comparison sort of DELLA's rows cost it most of its time.
pub fn rank_order(keys: &[u32], order: &mut Vec<u32>, s: &mut RadixScratch) {
    let n = keys.len();
    debug_assert!(n <= u32::MAX as usize);
    let mut hist = [[0u32; 256]; 4];
    for &k in keys {
        for (d, h) in hist.iter_mut().enumerate() {
            h[((k >> (8 * d)) & 0xff) as usize] += 1;
        }
    }
    order.clear();
    order.extend(0..n as u32);
    s.keys.clear();
    s.keys.extend_from_slice(keys);
    s.keys_next.resize(n, 0);
    s.order_next.resize(n, 0);
    for (d, h) in hist.iter().enumerate() {
        if h.iter().any(|&c| c as usize == n) {
            continue;
        }
        let mut at = [0u32; 256];
        let mut sum = 0;
        for (a, &c) in at.iter_mut().zip(h) {
            *a = sum;
            sum += c;
        }
        for (&k, &i) in s.keys.iter().zip(order.iter()) {
            let b = ((k >> (8 * d)) & 0xff) as usize;
            let p = at[b] as usize;
            at[b] += 1;
            s.keys_next[p] = k;
            s.order_next[p] = i;
        }
        std::mem::swap(&mut s.keys, &mut s.keys_next);
        std::mem::swap(order, &mut s.order_next);
    }
}

/// The element-wise part of a recipe method for one tensor (its parameters already resolved).
pub trait Kernel: Send + Sync {
    /// Elements per block: [`BLOCK`], or a whole number of rows for kernels that work row by
    /// row (the executor makes every chunk a whole number of blocks).
    fn block_len(&self) -> usize {
        BLOCK
    }
    /// Number of selections (rank windows over a per-element key).
    fn selections(&self) -> usize {
        0
    }
    /// The key of selection `sel` for each element of the block (finite, ≥ 0; −0 is not used).
    fn key(&self, _sel: usize, _b: &Block, _out: &mut [f32]) {}
    /// The kept window of selection `sel` for a tensor of `numel` elements of which `zeros` have
    /// a zero key.
    fn window(&self, _sel: usize, numel: u64, _zeros: u64) -> RankWindow {
        RankWindow::all(numel)
    }
    /// Number of per-tensor f64 sums.
    fn sums_len(&self) -> usize {
        0
    }
    /// Adds the block's contribution to the sums (`acc` starts at zero for each block).
    fn sums(&self, _b: &Block, _acc: &mut [f64]) {}
    /// The tensor's parameters from its sums; an error names what cannot be merged.
    fn prepare(&self, _sums: &[f64]) -> Result<Vec<f64>> {
        Ok(Vec::new())
    }
    /// The merged values of the block.
    fn combine(&self, b: &Block, out: &mut [f32]);
    /// The c_n when the output is exactly Σ c_n·x_n over the inputs for every element, whatever
    /// they hold (no selection, sign election or statistics of the data): such a merge of
    /// adapters of one base is itself a low-rank delta, written as an adapter in rank space
    /// (`warp merge --as adapter`, [`crate::engine::recipe_lora`]). One c_n per kernel input
    /// (a shorter row: the rest are 0); None: not affine.
    fn affine(&self) -> Option<Vec<f64>> {
        None
    }
}

/// A kernel whose output is Σ c_n · x_n with per-tensor coefficients made from sums
/// (`prepare` returns the c_n): SLERP, NuSLERP, multi-SLERP, Karcher, model stock, linear.
pub fn combine_linear(b: &Block, coeffs: &[f64], out: &mut [f32]) {
    let mut first = true;
    for (x, &c) in b.xs.iter().zip(coeffs) {
        let c = c as f32;
        if first {
            for (o, v) in out.iter_mut().zip(x.iter()) {
                *o = c * v;
            }
            first = false;
        } else {
            for (o, v) in out.iter_mut().zip(x.iter()) {
                *o += c * v;
            }
        }
    }
    if first {
        out.fill(0.0);
    }
}

/// Gram entries ⟨u_i, u_j⟩ (i ≤ j, row-major upper triangle) of vectors given per element by
/// `f`, added to `acc` (f64).
pub fn gram_sums(n: usize, len: usize, f: impl Fn(usize, usize) -> f32, acc: &mut [f64]) {
    let mut k = 0;
    for i in 0..n {
        for j in i..n {
            let mut s = 0f64;
            for e in 0..len {
                s += f(i, e) as f64 * f(j, e) as f64;
            }
            acc[k] += s;
            k += 1;
        }
    }
}

/// Entry (i, j) of an upper-triangle Gram of `n` vectors.
pub fn gram_at(g: &[f64], n: usize, i: usize, j: usize) -> f64 {
    let (i, j) = if i <= j { (i, j) } else { (j, i) };
    // Row i starts after the rows before it: Σ_{r<i} (n − r) = i·n − i(i−1)/2.
    g[i * n - i * i.saturating_sub(1) / 2 + (j - i)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_keeps_are_pure_and_near_p() {
        let cx = TensorCx {
            name: "w".into(),
            numel: 0,
            shape: vec![],
            seed: 7,
        };
        let s = cx.stream(1);
        let n = 200_000u64;
        let kept = (0..n).filter(|&i| keep_random(s, i, 0.3)).count() as f64;
        // Binomial(n, 0.3): σ ≈ 205; 6σ bounds.
        assert!(
            (kept - 0.3 * n as f64).abs() < 6.0 * (n as f64 * 0.21).sqrt(),
            "{kept}"
        );
        assert_eq!(
            (0..100).map(|i| keep_random(s, i, 0.5)).collect::<Vec<_>>(),
            (0..100).map(|i| keep_random(s, i, 0.5)).collect::<Vec<_>>()
        );
        assert_ne!(cx.stream(1), cx.stream(2));
        assert!((0..1000).all(|i| keep_random(s, i, 1.0)));
        assert!((0..1000).all(|i| !keep_random(s, i, 0.0)));
        // The integer test makes the float test's decisions (checked against it directly).
        for p in [0.0, 1e-9, 0.1, 0.3, 0.5, 0.7, 0.999_999, 1.0, 1.5, -0.2] {
            let float = |i: u64| {
                let u = mix(s.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
                ((u >> 11) as f64) * (1.0 / (1u64 << 53) as f64) < p
            };
            assert!((0..20_000).all(|i| float(i) == keep_random(s, i, p)), "{p}");
            // The batched form (vectorised where the CPU allows) makes the same decisions.
            let mut m = vec![false; 1003];
            keep_mask(s, 12_345, keep_threshold(p), &mut m);
            assert!(m
                .iter()
                .enumerate()
                .all(|(j, &k)| k == keep_random(s, 12_345 + j as u64, p)));
        }
        // At the boundary: x · 2^-53 < p with p exactly x · 2^-53 is false, just above true.
        let x = 123_456_789u64;
        let p = x as f64 / (1u64 << 53) as f64;
        assert_eq!(keep_threshold(p), x);
        assert_eq!(keep_threshold(f64::from_bits(p.to_bits() + 1)), x + 1);
    }

    #[test]
    fn rank_order_is_the_sort_of_key_and_index() {
        let mut rng = 0x1234_5678u64;
        let mut next = || {
            rng = mix(rng.wrapping_add(1));
            rng
        };
        let mut s = RadixScratch::default();
        let mut order = Vec::new();
        for n in [0usize, 1, 2, 3, 255, 256, 1000, 4096, 5003] {
            for case in 0..4 {
                let keys: Vec<u32> = (0..n)
                    .map(|_| {
                        let r = next();
                        match case {
                            // Magnitudes' bit patterns: any float ≥ 0 (∞ and NaN included).
                            0 => (r as u32) & 0x7fff_ffff,
                            // Few distinct values: many ties.
                            1 => (r % 7) as u32 * 0x0101_0101,
                            // One shared top digit (skipped passes).
                            2 => 0x3c00_0000 | (r as u32 & 0x00ff_ffff),
                            // Equal keys only.
                            _ => 0x3f80_0000,
                        }
                    })
                    .collect();
                rank_order(&keys, &mut order, &mut s);
                let mut want: Vec<u64> = keys
                    .iter()
                    .enumerate()
                    .map(|(j, &k)| (u64::from(k) << 32) | j as u64)
                    .collect();
                want.sort_unstable();
                let want: Vec<u32> = want.iter().map(|&k| k as u32).collect();
                assert_eq!(order, want, "n {n} case {case}");
            }
        }
    }

    #[test]
    fn draws_are_keep_belows_values() {
        let s = 0xdead_beef_u64;
        let mut u = vec![0u64; 777];
        draws(s, 99, &mut u);
        for t in [0u64, 1 << 40, 1 << 52, 1 << 53] {
            assert!(u
                .iter()
                .enumerate()
                .all(|(j, &x)| (x < t) == keep_below(s, 99 + j as u64, t)));
        }
        assert!(u.iter().all(|&x| x < 1 << 53));
    }

    #[test]
    fn gram_index() {
        // n = 3: (0,0)=0 (0,1)=1 (0,2)=2 (1,1)=3 (1,2)=4 (2,2)=5
        let g = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
        let want = [[0, 1, 2], [1, 3, 4], [2, 4, 5]];
        for i in 0..3 {
            for j in 0..3 {
                assert_eq!(gram_at(&g, 3, i, j), want[i][j] as f64, "{i},{j}");
            }
        }
    }
}
