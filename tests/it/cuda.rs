//! The CUDA backend against the CPU backend: identical Gram partials (bit for bit) and identical
//! output bytes, for every float dtype, M = 2 and 3 task vectors and LITI-style coefficient rows.
//!
//! Without a GPU (or driver, or NVRTC) every device test prints "skipped: no CUDA device (…)"
//! and returns (with `WARP_REQUIRE_CUDA=1` it fails instead). `nvrtc_compiles_kernels` needs
//! NVRTC only: it runs wherever libnvrtc loads.
//! `bench_h2d_and_combine` (ignored) prints bandwidths for scripts/gpu-check.sh.
#![cfg(feature = "cuda")]

use std::time::Instant;

use warp::engine::backend::{upper_len, Backend, NonFinite, GRAM_BLOCK};
use warp::engine::cpu::Cpu;
use warp::engine::cuda::{self, CudaBackend, Options};
use warp::io::dtype::encode_f32;
use warp::io::DType;

const DTYPES: [DType; 4] = [DType::BF16, DType::F16, DType::F32, DType::F64];

/// The backend under test: small sub-chunks so every call crosses several pipeline slots, and
/// strict so a device error fails the test instead of quietly running on the CPU.
fn gpu() -> Option<CudaBackend> {
    let opts = Options {
        sub_chunk_elems: 2 * GRAM_BLOCK,
        strict: true,
    };
    match CudaBackend::open(0, opts) {
        Ok(b) => {
            eprintln!("using {}", b.name());
            Some(b)
        }
        Err(e) => {
            skip(&format!("no CUDA device ({e})"));
            None
        }
    }
}

/// Says that a test did not run, past libtest's output capture (which only takes print!-style
/// macros), so a skip is never silent; with `WARP_REQUIRE_CUDA=1` (a machine that has a GPU:
/// scripts/test sets it where nvidia-smi sees one) a skip is a failure instead.
fn skip(why: &str) {
    use std::io::Write;
    if std::env::var("WARP_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
        panic!("WARP_REQUIRE_CUDA=1 but {why}");
    }
    let _ = writeln!(std::io::stderr(), "skipped: {why}");
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

/// Edge values every input gets somewhere: signed zeros, subnormals of f32 and f16, values at
/// the f16 and bf16 rounding boundaries and overflow thresholds, ties.
const SPECIAL: [f64; 16] = [
    0.0,
    -0.0,
    1.0e-40,
    -3.0e-39,
    5.960464477539063e-8,
    6.1e-5,
    65504.0,
    65519.99,
    65520.0,
    -70000.0,
    1.00390625,
    1.01171875,
    3.0e38,
    -1.0e-30,
    1.0 + 1.0 / 1024.0 + 1.0 / 2048.0,
    0.333333333333333,
];

fn encode(dtype: DType, xs: &[f64]) -> Vec<u8> {
    match dtype {
        DType::F64 => xs.iter().flat_map(|v| v.to_le_bytes()).collect(),
        _ => {
            let f: Vec<f32> = xs.iter().map(|&v| v as f32).collect();
            let mut out = vec![0u8; xs.len() * dtype.size()];
            encode_f32(dtype, &f, &mut out);
            out
        }
    }
}

/// N inputs of `elems` values: a base model and N−1 small perturbations of it (realistic task
/// vectors), with edge values sprinkled in, some elements equal across inputs.
fn inputs(dtype: DType, n: usize, elems: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let base: Vec<f64> = (0..elems).map(|_| rng.unit() * 0.05).collect();
    (0..n)
        .map(|m| {
            let xs: Vec<f64> = base
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    let r = rng.next();
                    let special = SPECIAL[(r / 97) as usize % SPECIAL.len()];
                    // No infinities (f16 overflows past 65519.99): a non-finite input makes the
                    // Gram fail, and which block the CPU reports first is then up to rayon.
                    if r % 97 == 0 && (dtype != DType::F16 || special.abs() < 65520.0) {
                        special
                    } else if m == 0 || r % 13 == 0 {
                        b
                    } else {
                        b + rng.unit() * 1e-3 * (1 + i % 3) as f64
                    }
                })
                .collect();
            encode(dtype, &xs)
        })
        .collect()
}

/// Lengths around block and sub-chunk boundaries (sub-chunks are 2 blocks here).
fn lengths() -> Vec<usize> {
    let b = GRAM_BLOCK;
    vec![
        1,
        7,
        8,
        9,
        100,
        b - 1,
        b,
        b + 1,
        2 * b + 3,
        5 * b + 13,
        9 * b,
    ]
}

fn slices(v: &[Vec<u8>]) -> Vec<&[u8]> {
    v.iter().map(|x| x.as_slice()).collect()
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn open_error_names_the_device() {
    match cuda::open(99) {
        Ok(b) => panic!("cuda:99 opened: {}", b.name()),
        Err(e) => {
            let msg = e.to_string();
            // A device failure, not a usage error: it names the device (the CLI adds the flag).
            assert!(matches!(e, warp::Error::Compute { .. }), "{msg}");
            assert!(msg.starts_with("cuda:99: "), "{msg}");
            println!("open(99): {msg}");
        }
    }
}

#[test]
fn nvrtc_compiles_kernels() {
    let Some((major, minor)) = cuda::nvrtc_version() else {
        skip("NVRTC not found (set LD_LIBRARY_PATH to a folder with libnvrtc.so.*, or CUDA_HOME)");
        return;
    };
    println!("NVRTC {major}.{minor}");
    // PTX: check that no fused multiply-add and no flush-to-zero made it into the code: the
    // contract is separate, correctly rounded multiplies and adds, with subnormals kept.
    let ptx = cuda::compile_kernels("compute_90").expect("PTX for compute_90");
    let ptx = String::from_utf8_lossy(&ptx);
    for f in ["warp_gram", "warp_combine"] {
        assert!(ptx.contains(f), "{f} missing from the PTX");
    }
    for bad in ["fma.", ".ftz", "approx"] {
        let hits: Vec<&str> = ptx.lines().filter(|l| l.contains(bad)).take(5).collect();
        assert!(hits.is_empty(), "PTX contains '{bad}': {hits:?}");
    }
    for want in [
        "mul.rn.f32",
        "add.rn.f32",
        "mul.rn.f64",
        "add.rn.f64",
        "sub.rn.f64",
    ] {
        assert!(ptx.contains(want), "PTX lacks {want}");
    }
    // CUBINs for the architectures a CUDA 13 NVRTC targets (Turing .. Blackwell).
    for arch in [
        "sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120",
    ] {
        match cuda::compile_kernels(arch) {
            Ok(img) => {
                assert!(img.starts_with(b"\x7fELF"), "{arch}: not an ELF cubin");
                println!("{arch}: cubin {} bytes", img.len());
            }
            // Older NVRTCs do not know the newest architectures: only those may fail.
            Err(e) if matches!(arch, "sm_100" | "sm_120") && e.contains("INVALID_OPTION") => {
                println!("{arch}: not supported by this NVRTC");
            }
            Err(e) => panic!("{arch}: {e}"),
        }
    }
}

#[test]
fn gram_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut cases = 0;
    for dtype in DTYPES {
        for n in [3, 4] {
            for (t, elems) in lengths().into_iter().enumerate() {
                let data = inputs(dtype, n, elems, (t * 31 + n) as u64);
                let xs = slices(&data);
                let (mut a, mut b) = (vec![1.5], vec![1.5]);
                let ra = Cpu.gram(&[dtype], &xs, &mut a);
                let rb = gpu.gram(&[dtype], &xs, &mut b);
                assert_eq!(ra, rb, "{dtype} n={n} elems={elems}");
                assert_eq!(a.len(), 1 + elems.div_ceil(GRAM_BLOCK) * upper_len(n - 1));
                assert_eq!(bits(&a), bits(&b), "{dtype} n={n} elems={elems}");
                cases += 1;
            }
        }
    }
    assert!(!gpu.fell_back());
    println!("{cases} Gram cases identical");
}

/// Inputs of different dtypes in one call (an f32 policy next to a bf16 init): the GPU stages
/// them as f32 and gives the CPU's bytes, and both equal the same call on the inputs converted
/// to f32 beforehand (bf16, f16 → f32 is exact).
#[test]
fn mixed_input_dtypes_match_cpu() {
    let Some(gpu) = gpu() else { return };
    let mixes: [&[DType]; 3] = [
        &[DType::BF16, DType::F32, DType::F32],
        &[DType::F32, DType::BF16, DType::F16],
        &[DType::F16, DType::F32, DType::BF16, DType::F32],
    ];
    for dtypes in mixes {
        let n = dtypes.len();
        for elems in [1, 9, GRAM_BLOCK + 1, 5 * GRAM_BLOCK + 13] {
            // Values every dtype of the mix holds: f16 ones rounded to bf16 as well.
            let f16 = inputs(DType::F16, n, elems, (elems + n) as u64);
            let vals: Vec<Vec<f32>> = f16
                .iter()
                .map(|x| {
                    let mut v = vec![0f32; elems];
                    warp::io::dtype::decode_f32(DType::F16, x, &mut v);
                    v
                })
                .collect();
            let data: Vec<Vec<u8>> = vals
                .iter()
                .zip(dtypes)
                .map(|(v, &d)| encode(d, &v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>()))
                .collect();
            let as_f32: Vec<Vec<u8>> = data
                .iter()
                .zip(dtypes)
                .map(|(x, &d)| {
                    let mut v = vec![0f32; elems];
                    warp::io::dtype::decode_f32(d, x, &mut v);
                    encode(
                        DType::F32,
                        &v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(),
                    )
                })
                .collect();
            let (xs, xf) = (slices(&data), slices(&as_f32));
            let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
            assert_eq!(Cpu.gram(dtypes, &xs, &mut a), Ok(()));
            assert_eq!(gpu.gram(dtypes, &xs, &mut b), Ok(()));
            assert_eq!(Cpu.gram(&[DType::F32], &xf, &mut c), Ok(()));
            assert_eq!(bits(&a), bits(&b), "{dtypes:?} {elems}");
            assert_eq!(bits(&a), bits(&c), "{dtypes:?} {elems}");
            let mut rows = vec![vec![0.25f32; n], vec![0f32; n]];
            rows[1][n - 1] = 1.0;
            for out_dtype in [DType::BF16, DType::F32] {
                let oes = out_dtype.size();
                let mut o = vec![vec![0u8; elems * oes]; 6];
                let [o1, o2, o3, o4, o5, o6] = &mut o[..] else {
                    unreachable!()
                };
                let mut oa: [&mut [u8]; 2] = [o1, o2];
                let mut ob: [&mut [u8]; 2] = [o3, o4];
                let mut oc: [&mut [u8]; 2] = [o5, o6];
                Cpu.combine(dtypes, &xs, &rows, out_dtype, &mut oa, true)
                    .unwrap();
                gpu.combine(dtypes, &xs, &rows, out_dtype, &mut ob, true)
                    .unwrap();
                Cpu.combine(&[DType::F32], &xf, &rows, out_dtype, &mut oc, true)
                    .unwrap();
                assert!(
                    o[0] == o[2] && o[1] == o[3],
                    "{dtypes:?}→{out_dtype} {elems}"
                );
                assert!(
                    o[0] == o[4] && o[1] == o[5],
                    "{dtypes:?}→{out_dtype} {elems}"
                );
            }
        }
    }
    assert!(!gpu.fell_back());
}

/// Inputs at odd host addresses (a slice starting one byte into a buffer): the staging copy
/// aligns them for the device.
#[test]
fn unaligned_host_inputs() {
    let Some(gpu) = gpu() else { return };
    let elems = 3 * GRAM_BLOCK + 5;
    for dtype in DTYPES {
        let data = inputs(dtype, 3, elems, 7);
        let shifted: Vec<Vec<u8>> = data
            .iter()
            .map(|d| {
                let mut v = vec![0u8];
                v.extend_from_slice(d);
                v
            })
            .collect();
        let xs: Vec<&[u8]> = shifted.iter().map(|v| &v[1..]).collect();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        assert_eq!(
            Cpu.gram(&[dtype], &xs, &mut a),
            gpu.gram(&[dtype], &xs, &mut b)
        );
        assert_eq!(bits(&a), bits(&b), "{dtype}");
        let rows = vec![vec![0.25f32, 0.5, 0.25]];
        let oes = DType::BF16.size();
        let (mut oa, mut ob) = (vec![0u8; elems * oes + 1], vec![0u8; elems * oes + 1]);
        Cpu.combine(
            &[dtype],
            &xs,
            &rows,
            DType::BF16,
            &mut [&mut oa[1..]],
            false,
        )
        .unwrap();
        gpu.combine(
            &[dtype],
            &xs,
            &rows,
            DType::BF16,
            &mut [&mut ob[1..]],
            false,
        )
        .unwrap();
        assert!(oa == ob, "{dtype}: outputs differ");
    }
}

/// Coefficient sets as the merge methods make them: LITI at η = 0, 1, 0.3 over a SLERP, EMA,
/// a zero column, an all-zero row, negative and −0 coefficients, η > 1.
fn coefficient_sets(n: usize) -> Vec<Vec<Vec<f32>>> {
    let alpha: Vec<f64> = (1..n).map(|m| 0.61 / m as f64 + 0.013 * m as f64).collect();
    let liti = |eta: f64| -> Vec<f32> {
        let mut r = vec![(1.0 - eta * alpha.iter().sum::<f64>()) as f32];
        r.extend(alpha.iter().map(|a| (eta * a) as f32));
        r
    };
    let mut zero_col = vec![0.7f32; n];
    zero_col[1] = 0.0;
    let mut neg = vec![-0.0f32; n];
    neg[0] = 1.25;
    neg[n - 1] = -0.25;
    let mut ema = vec![0.0f32; n];
    ema[0] = 0.99;
    ema[n - 1] = 0.01;
    vec![
        vec![liti(0.0), liti(1.0), liti(0.3)],
        vec![liti(0.3)],
        vec![ema],
        vec![zero_col.clone(), vec![0.0; n]],
        vec![neg, liti(1.7)],
    ]
}

#[test]
fn combine_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut cases = 0;
    for in_dtype in DTYPES {
        for n in [3, 4] {
            for (t, elems) in [1, 9, GRAM_BLOCK + 1, 5 * GRAM_BLOCK + 13]
                .into_iter()
                .enumerate()
            {
                let data = inputs(in_dtype, n, elems, (t * 7 + n) as u64);
                let xs = slices(&data);
                for rows in coefficient_sets(n) {
                    for out_dtype in DTYPES {
                        for check_finite in [false, true] {
                            let oes = out_dtype.size();
                            let mut a = vec![vec![0xAAu8; elems * oes]; rows.len()];
                            let mut b = vec![vec![0x55u8; elems * oes]; rows.len()];
                            let mut oa: Vec<&mut [u8]> =
                                a.iter_mut().map(|v| v.as_mut_slice()).collect();
                            let mut ob: Vec<&mut [u8]> =
                                b.iter_mut().map(|v| v.as_mut_slice()).collect();
                            let ra = Cpu.combine(
                                &[in_dtype],
                                &xs,
                                &rows,
                                out_dtype,
                                &mut oa,
                                check_finite,
                            );
                            let rb = gpu.combine(
                                &[in_dtype],
                                &xs,
                                &rows,
                                out_dtype,
                                &mut ob,
                                check_finite,
                            );
                            let what = format!(
                                "{in_dtype}→{out_dtype} n={n} elems={elems} rows={rows:?} check={check_finite}"
                            );
                            assert_eq!(ra, rb, "{what}");
                            for (k, (x, y)) in a.iter().zip(&b).enumerate() {
                                if x != y {
                                    let i = x
                                        .chunks(oes)
                                        .zip(y.chunks(oes))
                                        .position(|(p, q)| p != q)
                                        .unwrap();
                                    panic!(
                                        "{what}: output {k} differs first at element {i}: cpu {:?} gpu {:?}",
                                        &x[i * oes..(i + 1) * oes],
                                        &y[i * oes..(i + 1) * oes]
                                    );
                                }
                            }
                            cases += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(!gpu.fell_back());
    println!("{cases} combine cases identical");
}

/// Non-finite inputs: the same (input, element) reported as the CPU's, for the Gram and for a
/// checked combine; infinities in one input combine to identical bytes when not checked.
#[test]
fn nonfinite_like_cpu() {
    let Some(gpu) = gpu() else { return };
    let elems = 6 * GRAM_BLOCK + 77;
    for dtype in DTYPES {
        let n = 4;
        let mut data: Vec<Vec<f64>> = (0..n)
            .map(|m| {
                (0..elems)
                    .map(|i| ((i * 7 + m * 3) % 101) as f64 * 1e-3)
                    .collect()
            })
            .collect();
        let bad_block = 3 * GRAM_BLOCK;
        // Several in one block: the CPU reports the lowest input, then the lowest element.
        data[2][bad_block + 17] = f64::NAN;
        data[1][bad_block + 900] = f64::INFINITY;
        data[3][bad_block + 5] = f64::NEG_INFINITY;
        // A later block, which must not win.
        data[0][5 * GRAM_BLOCK + 1] = f64::NAN;
        if dtype == DType::F64 {
            // Finite in f64, infinite once decoded to f32: found all the same.
            data[1][bad_block + 3] = 1e300;
        }
        let enc: Vec<Vec<u8>> = data.iter().map(|x| encode(dtype, x)).collect();
        let xs = slices(&enc);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let (ra, rb) = (
            Cpu.gram(&[dtype], &xs, &mut a),
            gpu.gram(&[dtype], &xs, &mut b),
        );
        let want_index = if dtype == DType::F64 { 3 } else { 900 };
        assert_eq!(
            ra,
            Err(NonFinite {
                input: 1,
                index: (bad_block + want_index) as u64
            }),
            "{dtype}"
        );
        assert_eq!(ra, rb, "{dtype} gram");
        let rows = vec![vec![0.5f32, 0.25, 0.125, 0.125]];
        let mut oa = vec![0u8; elems * 2];
        let mut ob = vec![0u8; elems * 2];
        let ra = Cpu.combine(&[dtype], &xs, &rows, DType::BF16, &mut [&mut oa[..]], true);
        let rb = gpu.combine(&[dtype], &xs, &rows, DType::BF16, &mut [&mut ob[..]], true);
        assert_eq!(ra, rb, "{dtype} combine");
        assert!(ra.is_err());

        // Infinities (no NaN) in input 1 only, unchecked: identical bytes.
        let mut clean = data.clone();
        for x in clean.iter_mut() {
            for v in x.iter_mut() {
                if !v.is_finite() || v.abs() > 1e10 {
                    *v = 0.5;
                }
            }
        }
        clean[1][10] = f64::INFINITY;
        clean[1][GRAM_BLOCK + 10] = f64::NEG_INFINITY;
        let enc: Vec<Vec<u8>> = clean.iter().map(|x| encode(dtype, x)).collect();
        let xs = slices(&enc);
        for out_dtype in DTYPES {
            let oes = out_dtype.size();
            let mut oa = vec![0u8; elems * oes];
            let mut ob = vec![0u8; elems * oes];
            Cpu.combine(&[dtype], &xs, &rows, out_dtype, &mut [&mut oa[..]], false)
                .unwrap();
            gpu.combine(&[dtype], &xs, &rows, out_dtype, &mut [&mut ob[..]], false)
                .unwrap();
            assert!(
                oa == ob,
                "{dtype}→{out_dtype}: outputs with infinities differ"
            );
        }
    }
    assert!(!gpu.fell_back());
}

/// The default backend (`open`, default sub-chunk size, non-strict) on engine-sized chunks.
#[test]
fn default_backend_large_chunk() {
    let b = match cuda::open(0) {
        Ok(b) => b,
        Err(e) => {
            skip(&format!("no CUDA device ({e})"));
            return;
        }
    };
    let elems = (4 << 20) + 3;
    let data = inputs(DType::BF16, 3, elems, 99);
    let xs = slices(&data);
    let (mut a, mut g) = (Vec::new(), Vec::new());
    assert_eq!(Cpu.gram(&[DType::BF16], &xs, &mut a), Ok(()));
    assert_eq!(b.gram(&[DType::BF16], &xs, &mut g), Ok(()));
    assert_eq!(bits(&a), bits(&g));
    let rows = coefficient_sets(3).remove(0);
    let mut oa = vec![vec![0u8; elems * 2]; rows.len()];
    let mut ob = vec![vec![0u8; elems * 2]; rows.len()];
    let mut sa: Vec<&mut [u8]> = oa.iter_mut().map(|v| v.as_mut_slice()).collect();
    let mut sb: Vec<&mut [u8]> = ob.iter_mut().map(|v| v.as_mut_slice()).collect();
    Cpu.combine(&[DType::BF16], &xs, &rows, DType::BF16, &mut sa, false)
        .unwrap();
    b.combine(&[DType::BF16], &xs, &rows, DType::BF16, &mut sb, false)
        .unwrap();
    assert!(oa == ob, "outputs differ");
    assert!(!b.name().contains("failed"), "{}", b.name());
}

/// Bandwidths for scripts/gpu-check.sh (run with --ignored --nocapture): pinned H2D alone, and
/// the backends' combine (M = 2, bf16, three LITI outputs) on in-memory inputs. Size:
/// WARP_BENCH_MB (default 512) megabytes per input.
#[test]
#[ignore]
fn bench_h2d_and_combine() {
    let Some(gpu) = gpu() else { return };
    let mb: usize = std::env::var("WARP_BENCH_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
    let bytes = mb << 20;
    let h2d = gpu.h2d_bandwidth(256 << 20, 8).expect("H2D bench");
    println!("BENCH h2d_pinned_GBps {h2d:.2}");
    let elems = bytes / 2;
    let chunk = 4 << 20;
    let data = inputs(DType::BF16, 3, elems, 5);
    let xs = slices(&data);
    let rows = coefficient_sets(3).remove(0);
    let default = cuda::open(0).expect("open");
    for (name, be) in [("cpu", &Cpu as &dyn Backend), ("cuda", default.as_ref())] {
        let mut outs = vec![vec![0u8; chunk * 2]; rows.len()];
        let t = Instant::now();
        let mut lo = 0;
        while lo < elems {
            let len = chunk.min(elems - lo);
            let part: Vec<&[u8]> = xs.iter().map(|x| &x[lo * 2..(lo + len) * 2]).collect();
            let mut o: Vec<&mut [u8]> = outs.iter_mut().map(|v| &mut v[..len * 2]).collect();
            be.combine(&[DType::BF16], &part, &rows, DType::BF16, &mut o, false)
                .unwrap();
            lo += len;
        }
        let secs = t.elapsed().as_secs_f64();
        let read = (elems * 2 * xs.len()) as f64;
        println!(
            "BENCH combine_{name}_GBps {:.2} ({} read in {secs:.3} s; {})",
            read / secs / 1e9,
            read as u64,
            be.name()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The kernels on the CPU: kernels.cu compiled as C++ with shims for the CUDA built-ins (each
// correctly rounded operation is the plain IEEE operation; warps are 32 std::threads meeting at
// a barrier in __shfl_sync), launched exactly as cuda_real.rs launches them, sub-chunk by
// sub-chunk. Needs only a C++20 compiler, so the device code's arithmetic, decoding, encoding,
// lane order and non-finite keys are checked against the CPU backend on any machine.

const HARNESS: &str = r#"
#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
struct dim3 { unsigned x, y, z; };
static thread_local dim3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;
template <class T, class F> static inline T bitcast(F f) { T t; memcpy(&t, &f, sizeof t); return t; }
static inline unsigned __float_as_uint(float f) { return bitcast<unsigned>(f); }
static inline float __uint_as_float(unsigned u) { return bitcast<float>(u); }
static inline long long __double_as_longlong(double d) { return bitcast<long long>(d); }
static inline double __longlong_as_double(long long l) { return bitcast<double>(l); }
static inline int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dsub_rn(double a, double b) { return a - b; }
static inline float __double2float_rn(double d) { return (float)d; }
static std::mutex atomic_mu;
static inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
    std::lock_guard<std::mutex> g(atomic_mu);
    unsigned long long old = *p;
    if (v < old) *p = v;
    return old;
}
static inline unsigned short warp_host_f32_to_f16_rn(float v) {
    return bitcast<unsigned short>((_Float16)v);
}
static thread_local double* shfl_buf;
static thread_local std::barrier<>* shfl_bar;
static inline double __shfl_sync(unsigned, double v, int src) {
    shfl_buf[threadIdx.x % 32] = v;
    shfl_bar->arrive_and_wait();
    double r = shfl_buf[src];
    shfl_bar->arrive_and_wait();
    return r;
}
#define WARP_HOST_EMULATION 1
#include "kernels.cu"

template <class F> static void launch(unsigned grid, unsigned block, bool warps, F body) {
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    for (unsigned b = 0; b < grid; b++)
        for (unsigned w = 0; w < block / 32; w++) {
            if (!warps) {
                for (unsigned t = w * 32; t < w * 32 + 32; t++) {
                    blockIdx = {b, 0, 0};
                    threadIdx = {t, 0, 0};
                    body();
                }
                continue;
            }
            std::barrier<> bar(32);
            double buf[32];
            std::vector<std::thread> ts;
            for (unsigned t = w * 32; t < w * 32 + 32; t++)
                ts.emplace_back([&, b, t] {
                    blockIdx = {b, 0, 0};
                    threadIdx = {t, 0, 0};
                    shfl_buf = buf;
                    shfl_bar = &bar;
                    body();
                });
            for (auto& t : ts) t.join();
        }
}

static size_t dsize(int dt) { return dt == 0 ? 4 : dt == 3 ? 8 : 2; }
static size_t up(size_t x, size_t a) { return (x + a - 1) / a * a; }

// job: u64 mode, in_dt, n, elems, sub, out_dt, check, k; f32 coeffs[k*n]; inputs n*elems*ies
// result: gram: f64 partials (all blocks); combine: k outputs; then u64 smallest key.
int main(int argc, char** argv) {
    FILE* f = fopen(argv[1], "rb");
    uint64_t h[8];
    if (fread(h, 8, 8, f) != 8) return 2;
    int mode = (int)h[0], in_dt = (int)h[1], n = (int)h[2], out_dt = (int)h[5];
    size_t elems = h[3], sub = h[4], k = h[7];
    int check = (int)h[6];
    std::vector<float> coeffs(k * n);
    if (fread(coeffs.data(), 4, k * n, f) != k * n) return 2;
    size_t ies = dsize(in_dt), oes = dsize(out_dt);
    std::vector<unsigned char> all(n * elems * ies);
    if (fread(all.data(), 1, all.size(), f) != all.size()) return 2;
    fclose(f);
    const size_t GBk = WARP_GRAM_BLOCK;
    size_t span = sub < up(elems, GBk) ? sub : up(elems, GBk);
    size_t in_stride = up(span * ies, 256), out_stride = up(span * oes, 256);
    size_t pairs = (size_t)(n - 1) * n / 2;
    std::vector<unsigned char> res;
    unsigned long long bad = ~0ull;
    std::vector<unsigned char> in(in_stride * n + 256), out(out_stride * (k + 1) + span / GBk * pairs * 8 + 256);
    std::vector<std::vector<unsigned char>> outs(k, std::vector<unsigned char>(elems * oes));
    std::vector<double> partials(up(elems, GBk) / GBk * pairs);
    for (size_t lo = 0; lo < elems; lo += sub) {
        size_t len = sub < elems - lo ? sub : elems - lo;
        for (int j = 0; j < n; j++)
            memcpy(&in[j * in_stride], &all[(j * elems + lo) * ies], len * ies);
        unsigned long long flag = ~0ull;
        if (mode == 0) {
            size_t threads = (len + GBk - 1) / GBk * pairs * 8;
            launch((unsigned)((threads + 255) / 256), 256, true, [&] {
                warp_gram(in.data(), in_stride, n, in_dt, len, lo, (double*)out.data(), &flag);
            });
            memcpy(&partials[lo / GBk * pairs], out.data(), (len + GBk - 1) / GBk * pairs * 8);
        } else {
            launch((unsigned)((len + 255) / 256), 256, false, [&] {
                warp_combine(in.data(), in_stride, n, in_dt, coeffs.data(), (int)k, out.data(),
                             out_stride, out_dt, len, lo, check, &flag);
            });
            for (size_t q = 0; q < k; q++)
                memcpy(&outs[q][lo * oes], &out[q * out_stride], len * oes);
        }
        if (flag < bad) bad = flag;
    }
    FILE* o = fopen(argv[2], "wb");
    if (mode == 0) fwrite(partials.data(), 8, partials.size(), o);
    else for (auto& v : outs) fwrite(v.data(), 1, v.size(), o);
    fwrite(&bad, 8, 1, o);
    fclose(o);
    return 0;
}
"#;

struct Harness {
    dir: tempfile::TempDir,
    exe: std::path::PathBuf,
}

impl Harness {
    fn build() -> Option<Harness> {
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("harness.cpp"), HARNESS).unwrap();
        std::fs::write(
            dir.path().join("kernels.cu"),
            format!("#define WARP_GRAM_BLOCK {GRAM_BLOCK}\n{}", cuda::KERNELS_CU),
        )
        .unwrap();
        let exe = dir.path().join("harness");
        let out = std::process::Command::new(&cxx)
            .current_dir(dir.path())
            .args([
                "-std=c++20",
                "-O2",
                "-ffp-contract=off",
                "-fno-fast-math",
                "-pthread",
                "-Wno-unknown-pragmas",
                "-x",
                "c++",
                "harness.cpp",
                "-o",
            ])
            .arg(&exe)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Harness { dir, exe }),
            Ok(o) => panic!(
                "{cxx} failed on the kernel harness:\n{}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => {
                skip(&format!(
                    "no C++ compiler ({cxx}: {e}) for the host-emulated kernels"
                ));
                None
            }
        }
    }

    /// Runs one job; returns the result bytes and the smallest non-finite key.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        gram: bool,
        in_dtype: DType,
        inputs: &[&[u8]],
        sub: usize,
        out_dtype: DType,
        check: bool,
        coeffs: &[Vec<f32>],
    ) -> (Vec<u8>, Option<u64>) {
        let code = |d: DType| match d {
            DType::F32 => 0u64,
            DType::BF16 => 1,
            DType::F16 => 2,
            _ => 3,
        };
        let elems = inputs[0].len() / in_dtype.size();
        let mut job = Vec::new();
        for v in [
            !gram as u64,
            code(in_dtype),
            inputs.len() as u64,
            elems as u64,
            sub as u64,
            code(out_dtype),
            check as u64,
            coeffs.len() as u64,
        ] {
            job.extend(v.to_le_bytes());
        }
        for r in coeffs {
            for c in r {
                job.extend(c.to_le_bytes());
            }
        }
        for x in inputs {
            job.extend_from_slice(x);
        }
        let (jp, rp) = (self.dir.path().join("job"), self.dir.path().join("res"));
        std::fs::write(&jp, job).unwrap();
        let st = std::process::Command::new(&self.exe)
            .arg(&jp)
            .arg(&rp)
            .status()
            .unwrap();
        assert!(st.success(), "harness failed");
        let mut res = std::fs::read(&rp).unwrap();
        let key = u64::from_le_bytes(res.split_off(res.len() - 8).try_into().unwrap());
        (res, (key != u64::MAX).then_some(key))
    }
}

#[test]
fn host_emulated_kernels_match_cpu() {
    let Some(h) = Harness::build() else { return };
    let sub = 2 * GRAM_BLOCK;
    let cases = emulated_gram(&h, sub) + emulated_combine(&h, sub) + emulated_nonfinite(&h, sub);
    println!("{cases} host-emulated kernel cases identical to the CPU backend");
}

fn emulated_gram(h: &Harness, sub: usize) -> usize {
    let mut cases = 0;
    // Gram, every dtype, M = 2 and 3, lengths around block and sub-chunk boundaries.
    for dtype in DTYPES {
        for n in [3, 4] {
            for (t, elems) in [
                1,
                9,
                GRAM_BLOCK - 1,
                2 * GRAM_BLOCK + 3,
                5 * GRAM_BLOCK + 13,
            ]
            .into_iter()
            .enumerate()
            {
                let data = inputs(dtype, n, elems, (t * 31 + n) as u64);
                let xs = slices(&data);
                let mut a = Vec::new();
                assert_eq!(Cpu.gram(&[dtype], &xs, &mut a), Ok(()));
                let (res, key) = h.run(true, dtype, &xs, sub, dtype, false, &[]);
                assert_eq!(key, None, "{dtype} n={n} elems={elems}");
                let b: Vec<f64> = res
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                assert_eq!(bits(&a), bits(&b), "gram {dtype} n={n} elems={elems}");
                cases += 1;
            }
        }
    }
    cases
}

fn emulated_combine(h: &Harness, sub: usize) -> usize {
    let mut cases = 0;
    // Combine: every input × output dtype, the coefficient sets, with the zero columns left on
    // the host as cuda_real.rs does.
    for in_dtype in DTYPES {
        for n in [3, 4] {
            for (t, elems) in [9, 2 * GRAM_BLOCK + 3].into_iter().enumerate() {
                let data = inputs(in_dtype, n, elems, (t * 7 + n) as u64);
                let xs = slices(&data);
                for rows in coefficient_sets(n) {
                    for out_dtype in DTYPES {
                        for check in [false, true] {
                            let oes = out_dtype.size();
                            let mut a = vec![vec![0u8; elems * oes]; rows.len()];
                            let mut oa: Vec<&mut [u8]> =
                                a.iter_mut().map(|v| v.as_mut_slice()).collect();
                            Cpu.combine(&[in_dtype], &xs, &rows, out_dtype, &mut oa, check)
                                .unwrap();
                            let used: Vec<usize> = (0..n)
                                .filter(|&i| check || rows.iter().any(|r| r[i] != 0.0))
                                .collect();
                            let dev: Vec<&[u8]> = used.iter().map(|&i| xs[i]).collect();
                            let dev_rows: Vec<Vec<f32>> = rows
                                .iter()
                                .map(|r| used.iter().map(|&i| r[i]).collect())
                                .collect();
                            let (res, key) =
                                h.run(false, in_dtype, &dev, sub, out_dtype, check, &dev_rows);
                            assert_eq!(key, None);
                            assert!(
                                res == a.concat(),
                                "combine {in_dtype}→{out_dtype} n={n} elems={elems} rows={rows:?}"
                            );
                            cases += 1;
                        }
                    }
                }
            }
        }
    }
    cases
}

fn emulated_nonfinite(h: &Harness, sub: usize) -> usize {
    let mut cases = 0;
    // Non-finite values: the same (input, element) as the CPU reports.
    let elems = 6 * GRAM_BLOCK + 77;
    for dtype in DTYPES {
        let n = 4;
        let mut data: Vec<Vec<f64>> = (0..n)
            .map(|m| {
                (0..elems)
                    .map(|i| ((i * 7 + m * 3) % 101) as f64 * 1e-3)
                    .collect()
            })
            .collect();
        let bb = 3 * GRAM_BLOCK;
        data[2][bb + 17] = f64::NAN;
        data[1][bb + 900] = f64::INFINITY;
        data[3][bb + 5] = f64::NEG_INFINITY;
        data[0][5 * GRAM_BLOCK + 1] = f64::NAN;
        if dtype == DType::F64 {
            data[1][bb + 3] = 1e300;
        }
        let enc: Vec<Vec<u8>> = data.iter().map(|x| encode(dtype, x)).collect();
        let xs = slices(&enc);
        let mut a = Vec::new();
        let want = Cpu.gram(&[dtype], &xs, &mut a).unwrap_err();
        let (_, key) = h.run(true, dtype, &xs, sub, dtype, false, &[]);
        assert_eq!(
            key.map(|k| cuda::decode_key(k, n)),
            Some(want),
            "gram {dtype}"
        );
        let rows = vec![vec![0.5f32, 0.25, 0.125, 0.125]];
        let mut o = vec![0u8; elems * 2];
        let want = Cpu
            .combine(&[dtype], &xs, &rows, DType::BF16, &mut [&mut o[..]], true)
            .unwrap_err();
        let (_, key) = h.run(false, dtype, &xs, sub, DType::BF16, true, &rows);
        assert_eq!(
            key.map(|k| cuda::decode_key(k, n)),
            Some(want),
            "combine {dtype}"
        );
        cases += 2;
    }
    cases
}
