//! CPU kernels: rayon across blocks, plain loops inside a block so LLVM vectorizes them.

use rayon::prelude::*;

use super::backend::{dtype_of, upper_len, Backend, NonFinite, GRAM_BLOCK};
use crate::io::dtype::{decode_f32, encode_f32};
use crate::io::DType;

pub struct Cpu;

/// Lanes of the in-block f64 accumulation: fixed, so the summation order is too.
const LANES: usize = 8;

fn first_nonfinite(x: &[f32]) -> Option<usize> {
    // Branch-free scan first (vectorizes); locate only on the rare failure.
    let bad = x.iter().fold(false, |b, v| b | !v.is_finite());
    if bad {
        x.iter().position(|v| !v.is_finite())
    } else {
        None
    }
}

/// Σ a·b over a block in f64 with LANES independent accumulators, reduced in a fixed order.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; LANES];
    let (ca, ra) = a.split_at(a.len() / LANES * LANES);
    let (cb, rb) = b.split_at(ca.len());
    for (x, y) in ca.chunks_exact(LANES).zip(cb.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0.0;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    let mut s = 0.0;
    for v in acc {
        s += v;
    }
    s + tail
}

impl Backend for Cpu {
    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn gram(
        &self,
        dtypes: &[DType],
        inputs: &[&[u8]],
        out: &mut Vec<f64>,
    ) -> Result<(), NonFinite> {
        let n = inputs.len();
        let m = n - 1;
        let p = upper_len(m);
        let dt = |i: usize| dtype_of(dtypes, i);
        let elems = inputs[0].len() / dt(0).size();
        let blocks = elems.div_ceil(GRAM_BLOCK);
        let start = out.len();
        out.resize(start + blocks * p, 0.0);
        out[start..]
            .par_chunks_mut(p.max(1))
            .enumerate()
            .try_for_each_init(
                || {
                    (
                        vec![0f32; GRAM_BLOCK],
                        vec![0f32; GRAM_BLOCK],
                        vec![vec![0f64; GRAM_BLOCK]; m],
                    )
                },
                |(x0, x, d), (b, acc)| {
                    let lo = b * GRAM_BLOCK;
                    let len = GRAM_BLOCK.min(elems - lo);
                    let bytes = |i: usize| {
                        let es = dt(i).size();
                        &inputs[i][lo * es..(lo + len) * es]
                    };
                    decode_f32(dt(0), bytes(0), &mut x0[..len]);
                    if let Some(i) = first_nonfinite(&x0[..len]) {
                        return Err(NonFinite {
                            input: 0,
                            index: (lo + i) as u64,
                        });
                    }
                    for (j, dj) in d.iter_mut().enumerate() {
                        decode_f32(dt(j + 1), bytes(j + 1), &mut x[..len]);
                        if let Some(i) = first_nonfinite(&x[..len]) {
                            return Err(NonFinite {
                                input: j + 1,
                                index: (lo + i) as u64,
                            });
                        }
                        for ((o, a), b0) in dj[..len].iter_mut().zip(&x[..len]).zip(&x0[..len]) {
                            *o = *a as f64 - *b0 as f64;
                        }
                    }
                    let mut k = 0;
                    for i in 0..m {
                        for j in i..m {
                            acc[k] = dot(&d[i][..len], &d[j][..len]);
                            k += 1;
                        }
                    }
                    Ok(())
                },
            )
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
        let n = inputs.len();
        let dt = |i: usize| dtype_of(in_dtypes, i);
        let oes = out_dtype.size();
        let elems = inputs[0].len() / dt(0).size();
        // Transpose the K output buffers into per-block groups of K slices for rayon.
        let mut per_block: Vec<Vec<&mut [u8]>> = Vec::new();
        for out in outs.iter_mut() {
            for (b, s) in out[..elems * oes].chunks_mut(GRAM_BLOCK * oes).enumerate() {
                if per_block.len() <= b {
                    per_block.push(Vec::with_capacity(coeffs.len()));
                }
                per_block[b].push(s);
            }
        }
        // Inputs that some output actually uses (a zero column is never read).
        let used: Vec<bool> = (0..n).map(|i| coeffs.iter().any(|r| r[i] != 0.0)).collect();
        per_block.into_par_iter().enumerate().try_for_each_init(
            || (vec![vec![0f32; GRAM_BLOCK]; n], vec![0f32; GRAM_BLOCK]),
            |(xs, acc), (b, mut outs_b)| {
                let lo = b * GRAM_BLOCK;
                let len = GRAM_BLOCK.min(elems - lo);
                for i in 0..n {
                    if used[i] || check_finite {
                        let ies = dt(i).size();
                        decode_f32(
                            dt(i),
                            &inputs[i][lo * ies..(lo + len) * ies],
                            &mut xs[i][..len],
                        );
                        if check_finite {
                            if let Some(j) = first_nonfinite(&xs[i][..len]) {
                                return Err(NonFinite {
                                    input: i,
                                    index: (lo + j) as u64,
                                });
                            }
                        }
                    }
                }
                for (row, out) in coeffs.iter().zip(outs_b.iter_mut()) {
                    let acc = &mut acc[..len];
                    let mut first = true;
                    for (i, &c) in row.iter().enumerate() {
                        if c == 0.0 {
                            continue;
                        }
                        let x = &xs[i][..len];
                        if first {
                            for (a, v) in acc.iter_mut().zip(x) {
                                *a = c * v;
                            }
                            first = false;
                        } else {
                            for (a, v) in acc.iter_mut().zip(x) {
                                *a += c * v;
                            }
                        }
                    }
                    if first {
                        acc.fill(0.0);
                    }
                    encode_f32(out_dtype, acc, out);
                }
                Ok(())
            },
        )
    }
}
