// WARP merge kernels: compiled at run time with NVRTC by src/engine/cuda_real.rs (no headers,
// no toolkit needed at build time). The host prepends `#define WARP_GRAM_BLOCK <GRAM_BLOCK>`.
//
// The arithmetic contract is the CPU backend's (src/engine/cpu.rs), operation for operation, so
// that results are bit-identical:
//   * every f32/f64 operation is an explicit round-to-nearest intrinsic (__fmul_rn, __fadd_rn,
//     __dmul_rn, __dadd_rn, __dsub_rn): these are never contracted into FMAs, and the program is
//     also compiled with --fmad=false --ftz=false --prec-div=true --prec-sqrt=true;
//   * decoding and encoding follow src/io/dtype.rs bit for bit (bf16 round-to-nearest-even bit
//     trick with NaN -> quiet NaN; f16 like the `half` crate; f64 <-> f32 like x86's cvtsd2ss /
//     cvtss2sd, including what they do to NaN payloads).
// Inputs are little-endian and, on the device, aligned (the host stages them at 256-byte aligned
// offsets), so plain typed loads are used.

#ifndef WARP_GRAM_BLOCK
#error "WARP_GRAM_BLOCK must be defined by the host (backend::GRAM_BLOCK)"
#endif

typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;

#define GB ((u64)WARP_GRAM_BLOCK)
// Lanes of the in-block f64 accumulation (cpu.rs: LANES). Part of the summation order.
#define LANES 8

// dtype codes, as the host passes them (cuda_real.rs: dtype_code).
#define DT_F32 0
#define DT_BF16 1
#define DT_F16 2
#define DT_F64 3

__device__ __forceinline__ bool is_finite_f32(float x) {
    return (__float_as_uint(x) & 0x7F800000u) != 0x7F800000u;
}

// half::f16 -> f32, exactly as the `half` crate (and x86 F16C) do it, NaN payloads included.
__device__ __forceinline__ float f16_to_f32(u32 h) {
    u32 sign = (h & 0x8000u) << 16;
    u32 exp = (h >> 10) & 0x1Fu;
    u32 man = h & 0x3FFu;
    u32 bits;
    if (exp == 0x1Fu) {
        bits = man == 0 ? (sign | 0x7F800000u) : (sign | 0x7FC00000u | (man << 13));
    } else if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {
            // Subnormal half: normalise. e = leading zeros of the 10-bit mantissa field.
            u32 e = (u32)__clz(man) - 22u;
            bits = sign | ((127u - 15u - e) << 23) | ((man << (14u + e)) & 0x7FFFFFu);
        }
    } else {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    }
    return __uint_as_float(bits);
}

// f64 -> f32 as Rust's `as f32` on x86-64 (cvtsd2ss): round to nearest even, overflow to
// infinity, subnormals kept; a NaN keeps its sign and the top of its payload, made quiet.
__device__ __forceinline__ float f64_to_f32(double d) {
    u64 b = (u64)__double_as_longlong(d);
    if ((b & 0x7FF0000000000000ull) == 0x7FF0000000000000ull && (b & 0x000FFFFFFFFFFFFFull)) {
        u32 sign = (u32)(b >> 32) & 0x80000000u;
        return __uint_as_float(sign | 0x7FC00000u | (u32)((b & 0x000FFFFFFFFFFFFFull) >> 29));
    }
    return __double2float_rn(d);
}

// dtype.rs: decode_f32, one element.
__device__ __forceinline__ float load_f32(const unsigned char* base, int dt, u64 i) {
    switch (dt) {
    case DT_F32:
        return __uint_as_float(((const u32*)base)[i]);
    case DT_BF16:
        return __uint_as_float(((u32)((const u16*)base)[i]) << 16);
    case DT_F16:
        return f16_to_f32((u32)((const u16*)base)[i]);
    default:
        return f64_to_f32(__longlong_as_double(((const long long*)base)[i]));
    }
}

// f32 -> f16 bits, round to nearest even (IEEE; the `half` crate and F16C agree for non-NaN).
__device__ __forceinline__ u16 f32_to_f16_rn(float v) {
#ifdef WARP_HOST_EMULATION
    // tests/cuda.rs runs these kernels on the CPU, compiled as C++ with shims for the CUDA
    // built-ins; it provides the same IEEE conversion.
    return warp_host_f32_to_f16_rn(v);
#else
    u16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(v));
    return r;
#endif
}

// dtype.rs: encode_f32, one element.
__device__ __forceinline__ void store_f32(unsigned char* base, int dt, u64 i, float v) {
    u32 b = __float_as_uint(v);
    bool nan = (b & 0x7FFFFFFFu) > 0x7F800000u;
    switch (dt) {
    case DT_F32:
        ((u32*)base)[i] = b;
        break;
    case DT_BF16:
        // f32_to_bf16: the classic bit trick, ties to even; NaN -> quiet NaN.
        ((u16*)base)[i] =
            nan ? (u16)((b >> 16) | 0x0040u) : (u16)((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
        break;
    case DT_F16:
        // half::f16::from_f32 for NaN: sign | 0x7C00 | 0x0200 | top of the payload.
        ((u16*)base)[i] = nan ? (u16)(((b >> 16) & 0x8000u) | 0x7E00u | ((b & 0x7FFFFFu) >> 13))
                              : f32_to_f16_rn(v);
        break;
    default:
        // `v as f64` (cvtss2sd): exact; a NaN keeps sign and payload, made quiet.
        ((u64*)base)[i] =
            nan ? (((u64)(b & 0x80000000u) << 32) | 0x7FF8000000000000ull |
                   ((u64)(b & 0x7FFFFFu) << 29))
                : (u64)__double_as_longlong((double)v);
        break;
    }
}

// Ordering key of a non-finite value, matching the order in which the CPU backend meets them:
// block by block; inside a block input by input; inside an input element by element.
__device__ __forceinline__ u64 bad_key(u64 g, u64 input, u64 n_in) {
    return ((g / GB) * n_in + input) * GB + (g % GB);
}

// out_k = sum over non-zero c_kj of c_kj * x_j, in f32, in input order, the first non-zero term
// initialising the sum (cpu.rs: combine). One thread per element (grid-stride).
//   in:     n_in input arrays, input j at in + j * in_stride (bytes), elements [0, elems)
//   coeffs: k_out x n_in, row-major (0 = input not used by that row)
//   out:    k_out output arrays, output k at out + k * out_stride (bytes)
//   elem_base: offset of this sub-chunk in the chunk the caller passed (for the non-finite key)
//   first_bad: atomicMin of bad_key over the non-finite inputs, when check_finite
extern "C" __global__ void warp_combine(const unsigned char* __restrict__ in, u64 in_stride,
                                        int n_in, int in_dt, const float* __restrict__ coeffs,
                                        int k_out, unsigned char* __restrict__ out,
                                        u64 out_stride, int out_dt, u64 elems, u64 elem_base,
                                        int check_finite, u64* __restrict__ first_bad) {
    const u64 step = (u64)gridDim.x * blockDim.x;
    for (u64 e = (u64)blockIdx.x * blockDim.x + threadIdx.x; e < elems; e += step) {
        if (check_finite) {
            for (int j = 0; j < n_in; j++) {
                float x = load_f32(in + (u64)j * in_stride, in_dt, e);
                if (!is_finite_f32(x)) {
                    atomicMin(first_bad, bad_key(elem_base + e, (u64)j, (u64)n_in));
                    break;
                }
            }
        }
        for (int k = 0; k < k_out; k++) {
            float acc = 0.0f;
            bool first = true;
            for (int j = 0; j < n_in; j++) {
                float c = coeffs[k * n_in + j];
                if (c == 0.0f) {
                    continue;
                }
                float t = __fmul_rn(c, load_f32(in + (u64)j * in_stride, in_dt, e));
                if (first) {
                    acc = t;
                    first = false;
                } else {
                    acc = __fadd_rn(acc, t);
                }
            }
            store_f32(out + (u64)k * out_stride, out_dt, e, acc);
        }
    }
}

// Gram partials of the task vectors d_m = x_m - x_0 (m = 1..n_in-1), one value per block of
// GRAM_BLOCK elements and pair i <= j (row-major upper triangle), in f64, in exactly the CPU's
// order (cpu.rs: dot): lane l of 8 accumulates the products at block offsets l, l+8, l+16, ... of
// the first floor(len/8)*8 elements, in order, from 0.0; then s = 0.0 + lane 0 + ... + lane 7
// (in that order); then the tail (the last len % 8 elements) summed sequentially from 0.0 is
// added to s.
//
// One group of 8 consecutive threads per (block, pair): thread = lane. Each group lies inside a
// warp, and the lanes are combined with warp shuffles, so every thread of a launched warp must
// reach the shuffles (no early return).
//   partials: (blocks of this sub-chunk) x n_pairs values
//   elem_base: offset of this sub-chunk in the chunk (a multiple of GRAM_BLOCK)
extern "C" __global__ void warp_gram(const unsigned char* __restrict__ in, u64 in_stride,
                                     int n_in, int dt, u64 elems, u64 elem_base,
                                     double* __restrict__ partials,
                                     u64* __restrict__ first_bad) {
    const u64 m = (u64)(n_in - 1);
    const u64 n_pairs = m * (m + 1) / 2;
    const u64 nblocks = (elems + GB - 1) / GB;
    const u64 gid = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    const u32 lane = (u32)(gid % LANES);
    const u64 group = gid / LANES;
    const bool active = n_pairs > 0 && group < nblocks * n_pairs;

    u64 b = 0, pi = 0, pj = 0, lo = 0, len = 0, full = 0;
    double acc = 0.0;
    const unsigned char *x0 = in, *xi = in, *xj = in;
    if (active) {
        b = group / n_pairs;
        // Pair index -> (i, j), i <= j, in row-major upper-triangle order.
        u64 p = group % n_pairs;
        while (p >= m - pi) {
            p -= m - pi;
            pi++;
        }
        pj = pi + p;
        lo = b * GB;
        len = elems - lo < GB ? elems - lo : GB;
        full = len / LANES * LANES;
        xi = in + (pi + 1) * in_stride;
        xj = in + (pj + 1) * in_stride;
        // The diagonal pairs (i, i) check inputs 0 and i+1: together they see every input.
        const bool check = pi == pj;
#pragma unroll 4
        for (u64 e = lane; e < full; e += LANES) {
            const float a0 = load_f32(x0, dt, lo + e);
            const float ai = load_f32(xi, dt, lo + e);
            const float aj = load_f32(xj, dt, lo + e);
            if (check && !(is_finite_f32(a0) && is_finite_f32(ai))) {
                const u64 input = is_finite_f32(a0) ? pi + 1 : 0;
                atomicMin(first_bad, bad_key(elem_base + lo + e, input, (u64)n_in));
            }
            const double di = __dsub_rn((double)ai, (double)a0);
            const double dj = __dsub_rn((double)aj, (double)a0);
            acc = __dadd_rn(acc, __dmul_rn(di, dj));
        }
    }

    // Lanes 0..7 of this group, summed in order (every thread computes it; lane 0 writes).
    const u32 base = (threadIdx.x % 32u) & ~(u32)(LANES - 1);
    double s = 0.0;
#pragma unroll
    for (u32 l = 0; l < LANES; l++) {
        s = __dadd_rn(s, __shfl_sync(0xFFFFFFFFu, acc, (int)(base + l)));
    }

    if (active && lane == 0) {
        double tail = 0.0;
        const bool check = pi == pj;
        for (u64 e = full; e < len; e++) {
            const float a0 = load_f32(x0, dt, lo + e);
            const float ai = load_f32(xi, dt, lo + e);
            const float aj = load_f32(xj, dt, lo + e);
            if (check && !(is_finite_f32(a0) && is_finite_f32(ai))) {
                const u64 input = is_finite_f32(a0) ? pi + 1 : 0;
                atomicMin(first_bad, bad_key(elem_base + lo + e, input, (u64)n_in));
            }
            const double di = __dsub_rn((double)ai, (double)a0);
            const double dj = __dsub_rn((double)aj, (double)a0);
            tail = __dadd_rn(tail, __dmul_rn(di, dj));
        }
        partials[b * n_pairs + (group % n_pairs)] = __dadd_rn(s, tail);
    }
}
