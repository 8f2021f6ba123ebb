//! `warp extract-lora` (issue 25): a PEFT LoRA adapter approximating the task vector of a full
//! fine-tune, δ = θmodel − θbase, by a truncated SVD of δ per target module.
//!
//! Each module's δ is never held whole: it is read in blocks of rows (model and base decoded to
//! f32, the difference taken in f32) within the memory budget, and only products with thin
//! matrices are formed, accumulated in f64. The SVD is randomised subspace iteration (Halko,
//! Martinsson & Tropp 2011, Alg. 4.4): with k = R + oversampling random directions,
//! Q = orth(δ·Ω), refined by `power_iters` rounds of Q ← orth(δ·orth(δᵀ·Q)), then the small
//! k×n matrix Qᵀ·δ is decomposed exactly (one-sided Jacobi) and its top R singular triplets kept.
//! A task vector of rank ≤ R is reproduced to float precision (its range is found by the first
//! product already); for a full-rank one the captured energy Σ_{i≤R} σi² / ‖δ‖² is reported per
//! tensor, so the user sees what the rank loses.
//!
//! The adapter's factors are B = U_R·Σ_R [out, R] and A = V_Rᵀ [R, in] with `lora_alpha = R`
//! (scale 1). A GPT-2 Conv1D weight (stored [in, out], `fan_in_fan_out`) is decomposed as stored
//! and its factors transposed into PEFT's layout.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::io::dtype::decode_f32;
use crate::io::guard::ReadGuard;
use crate::io::lora_writer::{AdapterLayout, AdapterWriter, ModuleShape};
use crate::io::writer::Staging;
use crate::io::{Checkpoint, DType, TensorInfo};
use crate::progress::Reporter;

/// What to extract.
pub struct ExtractJob<'a> {
    pub model: &'a Checkpoint,
    pub base: &'a Checkpoint,
    /// The base as the adapter's config names it (a hub id or a folder).
    pub base_name: String,
    pub rank: usize,
    /// PEFT-style target names: a module is targeted when its path equals one or ends with
    /// `.NAME`. Empty: every 2-D weight inside a numbered block (`….N.…`).
    pub target_modules: Vec<String>,
    /// Weights stored [in, out] (GPT-2's Conv1D).
    pub fan_in_fan_out: bool,
    pub power_iters: usize,
    pub oversample: usize,
    /// Bytes for the blocks of rows of δ.
    pub budget: u64,
    pub dest: PathBuf,
    pub force: bool,
    /// The dtype of the written factors.
    pub dtype: DType,
}

/// The SVD of one module's task vector, as the report gives it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TensorReport {
    /// ‖δ‖ (Frobenius).
    pub norm: f64,
    /// Σ_{i≤R} σi² / ‖δ‖² (1 for a zero δ).
    pub captured: f64,
    /// The R largest singular values.
    pub singular_values: Vec<f64>,
}

/// What an extraction wrote and found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Extracted {
    pub rank: usize,
    pub tensors: BTreeMap<String, TensorReport>,
    /// Float tensors that differ from the base but are not LoRA targets: not in the adapter.
    pub not_captured: Vec<String>,
}

/// Whether tensor `name` is a module the job targets.
fn targeted(name: &str, targets: &[String]) -> bool {
    let Some(module) = name.strip_suffix(".weight") else {
        return false;
    };
    if targets.is_empty() {
        // Inside a numbered block: a component made of digits before the last one.
        let parts: Vec<&str> = module.split('.').collect();
        return parts[..parts.len().saturating_sub(1)]
            .iter()
            .any(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    }
    targets
        .iter()
        .any(|t| module == t || module.ends_with(&format!(".{t}")))
}

/// The modules to extract: 2-D float weights of the base that the job targets, checked against
/// the model (same shape, float).
fn plan_modules<'a>(job: &ExtractJob<'a>) -> Result<Vec<(&'a TensorInfo, &'a TensorInfo)>> {
    let mut out = Vec::new();
    for t in job.base.tensors() {
        if !t.dtype.is_float() || t.shape.len() != 2 || !targeted(&t.name, &job.target_modules) {
            continue;
        }
        if ["embed", "wte", "wpe"].iter().any(|e| t.name.contains(e)) {
            if job.target_modules.is_empty() {
                continue;
            }
            return Err(Error::setting(
                "target_modules",
                format!(
                    "{} looks like an embedding, which extract-lora does not decompose (only \
                     Linear and Conv1D modules)",
                    t.name
                ),
            ));
        }
        let m = job.model.get(&t.name).ok_or_else(|| {
            Error::tensor(&job.model.path, &t.name, "is missing (present in the base)")
        })?;
        if m.shape != t.shape || !m.dtype.is_float() {
            return Err(Error::tensor(
                &job.model.path,
                &t.name,
                format!(
                    "{} {:?}, but the base holds {} {:?}",
                    m.dtype, m.shape, t.dtype, t.shape
                ),
            ));
        }
        out.push((m, t));
    }
    if out.is_empty() {
        return Err(Error::setting(
            "target_modules",
            format!(
                "no 2-D weight of {} matches the target modules {:?}",
                job.base.path.display(),
                job.target_modules
            ),
        ));
    }
    Ok(out)
}

/// One module's task vector δ [rows, cols] as stored, read in blocks of rows.
struct Delta<'a> {
    job: &'a ExtractJob<'a>,
    model: &'a TensorInfo,
    base: &'a TensorInfo,
    rows: usize,
    cols: usize,
    /// Rows per block (from the budget).
    block: usize,
    /// Reads of pages of a file truncated under its mapping become an error naming it.
    guard: &'a ReadGuard,
}

impl Delta<'_> {
    /// Rows `r` of δ as f32, row-major; NaN or Inf in either input is an error naming it.
    fn read(&self, r: &Range<usize>, buf: &mut Vec<f32>, tmp: &mut Vec<f32>) -> Result<()> {
        let n = (r.end - r.start) * self.cols;
        buf.resize(n, 0.0);
        tmp.resize(n, 0.0);
        let elems = (r.start * self.cols) as u64..(r.end * self.cols) as u64;
        for (ck, info, out) in [
            (self.job.model, self.model, &mut *buf),
            (self.job.base, self.base, &mut *tmp),
        ] {
            let es = info.dtype.size() as u64;
            let bytes = ck.bytes(info, elems.start * es..elems.end * es);
            out.par_chunks_mut(1 << 16)
                .zip(bytes.par_chunks((1 << 16) * es as usize))
                .for_each(|(o, b)| decode_f32(info.dtype, b, o));
            if let Some(i) = out.iter().position(|x| !x.is_finite()) {
                return Err(Error::tensor(
                    &ck.path,
                    &info.name,
                    format!(
                        "non-finite value (NaN or Inf) at element {}",
                        elems.start + i as u64
                    ),
                ));
            }
        }
        buf.par_iter_mut().zip(&*tmp).for_each(|(m, b)| *m -= b);
        Ok(())
    }

    /// Calls `f(rows, block)` for every block of rows of δ in order.
    fn for_blocks(&self, mut f: impl FnMut(Range<usize>, &[f32])) -> Result<()> {
        let (mut buf, mut tmp) = (Vec::new(), Vec::new());
        let mut start = 0;
        while start < self.rows {
            crate::interrupt::check()?;
            let r = start..(start + self.block).min(self.rows);
            self.read(&r, &mut buf, &mut tmp)?;
            self.guard.check()?;
            f(r.clone(), &buf);
            start = r.end;
        }
        Ok(())
    }

    /// δ·X for X [cols, k] row-major: [rows, k]; also ‖δ‖² when asked.
    fn times(&self, x: &[f64], k: usize, sq: Option<&mut f64>) -> Result<Vec<f64>> {
        let cols = self.cols;
        let mut y = vec![0f64; self.rows * k];
        let mut total = 0f64;
        self.for_blocks(|r, s| {
            y[r.start * k..r.end * k]
                .par_chunks_mut(k)
                .zip(s.par_chunks(cols))
                .for_each(|(yr, sr)| {
                    for (c, &v) in sr.iter().enumerate() {
                        let v = v as f64;
                        for (a, b) in yr.iter_mut().zip(&x[c * k..(c + 1) * k]) {
                            *a += v * b;
                        }
                    }
                });
            // In row order: the same sum whatever the threads.
            total += s.iter().map(|&v| v as f64 * v as f64).sum::<f64>();
        })?;
        if let Some(sq) = sq {
            *sq = total;
        }
        Ok(y)
    }

    /// δᵀ·Y for Y [rows, k] row-major: [cols, k]; columns of δ split over threads (each sum
    /// runs over the rows in order: deterministic).
    fn times_t(&self, y: &[f64], k: usize) -> Result<Vec<f64>> {
        let cols = self.cols;
        let mut z = vec![0f64; cols * k];
        let per = cols.div_ceil(rayon::current_num_threads().max(1)).max(1);
        self.for_blocks(|r, s| {
            z.par_chunks_mut(per * k).enumerate().for_each(|(ci, zc)| {
                let c0 = ci * per;
                for (i, row) in r.clone().enumerate() {
                    let yr = &y[row * k..(row + 1) * k];
                    let sr = &s[i * cols..(i + 1) * cols];
                    for (j, zr) in zc.chunks_mut(k).enumerate() {
                        let v = sr[c0 + j] as f64;
                        if v != 0.0 {
                            for (a, b) in zr.iter_mut().zip(yr) {
                                *a += v * b;
                            }
                        }
                    }
                }
            });
        })?;
        Ok(z)
    }
}

/// Orthonormalises the k columns of X [n, k] (row-major) in place: modified Gram–Schmidt, twice
/// (enough for orthogonality to working precision). A column left with nothing of its own (the
/// matrix has rank < k) becomes zero.
fn orthonormalize(x: &mut [f64], n: usize, k: usize) {
    let col = |x: &[f64], j: usize| (0..n).map(|i| x[i * k + j]).collect::<Vec<f64>>();
    let mut cols: Vec<Vec<f64>> = (0..k).map(|j| col(x, j)).collect();
    for j in 0..k {
        let before = cols[j].iter().map(|v| v * v).sum::<f64>().sqrt();
        for _ in 0..2 {
            for i in 0..j {
                let (done, rest) = cols.split_at_mut(j);
                let d: f64 = done[i].iter().zip(&rest[0]).map(|(a, b)| a * b).sum();
                for (a, b) in rest[0].iter_mut().zip(&done[i]) {
                    *a -= d * b;
                }
            }
        }
        let norm = cols[j].iter().map(|v| v * v).sum::<f64>().sqrt();
        let keep = norm > 1e-12 * before && norm > 0.0;
        for v in cols[j].iter_mut() {
            *v = if keep { *v / norm } else { 0.0 };
        }
    }
    for (j, c) in cols.iter().enumerate() {
        for (i, v) in c.iter().enumerate() {
            x[i * k + j] = *v;
        }
    }
}

/// One-sided Jacobi SVD of M [n, k] (row-major, k small): M = U·diag(σ)·Vᵀ. Returns
/// (U columns, σ, V columns), sorted by σ descending.
fn jacobi_svd(m: &[f64], n: usize, k: usize) -> (Vec<Vec<f64>>, Vec<f64>, Vec<Vec<f64>>) {
    let mut u: Vec<Vec<f64>> = (0..k)
        .map(|j| (0..n).map(|i| m[i * k + j]).collect())
        .collect();
    let mut v: Vec<Vec<f64>> = (0..k)
        .map(|j| (0..k).map(|i| f64::from(u8::from(i == j))).collect())
        .collect();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    for _sweep in 0..60 {
        let mut rotated = false;
        for p in 0..k {
            for q in p + 1..k {
                let (a, b, g) = (dot(&u[p], &u[p]), dot(&u[q], &u[q]), dot(&u[p], &u[q]));
                if g == 0.0 || g.abs() <= 1e-15 * (a * b).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (b - a) / (2.0 * g);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                for w in [&mut u, &mut v] {
                    let (lo, hi) = w.split_at_mut(q);
                    for (x, y) in lo[p].iter_mut().zip(hi[0].iter_mut()) {
                        let (xp, yq) = (*x, *y);
                        *x = c * xp - s * yq;
                        *y = s * xp + c * yq;
                    }
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let sigma: Vec<f64> = u.iter().map(|c| dot(c, c).sqrt()).collect();
    for (c, &s) in u.iter_mut().zip(&sigma) {
        for x in c.iter_mut() {
            *x = if s > 0.0 { *x / s } else { 0.0 };
        }
    }
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&i, &j| sigma[j].total_cmp(&sigma[i]));
    (
        order.iter().map(|&i| u[i].clone()).collect(),
        order.iter().map(|&i| sigma[i]).collect(),
        order.iter().map(|&i| v[i].clone()).collect(),
    )
}

/// A deterministic N(0, 1) matrix [n, k] (xorshift64* and Box–Muller), seeded by the tensor.
fn gaussian(n: usize, k: usize, seed: u64) -> Vec<f64> {
    let mut s = seed | 1;
    let mut unit = || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        ((s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n * k)
        .map(|_| (-2.0 * unit().ln()).sqrt() * (std::f64::consts::TAU * unit()).cos())
        .collect()
}

/// The rank-R factors of one module in PEFT's layout (A [R, in], B [out, R], f32) and its report.
fn decompose(
    d: &Delta,
    rank: usize,
    job: &ExtractJob,
) -> Result<(Vec<f32>, Vec<f32>, TensorReport)> {
    let (m, n) = (d.rows, d.cols);
    let k = (rank + job.oversample).min(m).min(n);
    let seed = d.model.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let mut sq = 0.0;
    let mut q = d.times(&gaussian(n, k, seed), k, Some(&mut sq))?;
    orthonormalize(&mut q, m, k);
    for _ in 0..job.power_iters {
        let mut z = d.times_t(&q, k)?;
        orthonormalize(&mut z, n, k);
        q = d.times(&z, k, None)?;
        orthonormalize(&mut q, m, k);
    }
    // M = δᵀ·Q [n, k] = U_M·Σ·V_Mᵀ, so δ ≈ Q·Qᵀ·δ = (Q·V_M)·Σ·U_Mᵀ.
    let (um, sigma, vm) = jacobi_svd(&d.times_t(&q, k)?, n, k);
    let keep = rank.min(k);
    // Left singular vectors of δ [m] and right ones [n], the top `keep`.
    let left: Vec<Vec<f64>> = vm[..keep]
        .iter()
        .map(|v| {
            (0..m)
                .map(|i| (0..k).map(|j| q[i * k + j] * v[j]).sum())
                .collect()
        })
        .collect();
    let right = &um[..keep];
    // PEFT's layout: Linear δ [out, in] = B·A; Conv1D δ [in, out] = (B·A)ᵀ.
    let (outs, ins) = if job.fan_in_fan_out {
        (right, &left[..])
    } else {
        (&left[..], right)
    };
    let (out_dim, in_dim) = if job.fan_in_fan_out { (n, m) } else { (m, n) };
    let mut b = vec![0f32; out_dim * rank];
    let mut a = vec![0f32; rank * in_dim];
    for j in 0..keep {
        for o in 0..out_dim {
            b[o * rank + j] = (outs[j][o] * sigma[j]) as f32;
        }
        for (i, x) in a[j * in_dim..(j + 1) * in_dim].iter_mut().enumerate() {
            *x = ins[j][i] as f32;
        }
    }
    let kept: f64 = sigma[..keep].iter().map(|s| s * s).sum();
    let report = TensorReport {
        norm: sq.sqrt(),
        captured: if sq > 0.0 { (kept / sq).min(1.0) } else { 1.0 },
        singular_values: sigma[..keep].to_vec(),
    };
    Ok((a, b, report))
}

/// Extracts the adapter of `job` into `job.dest` (atomically); the per-tensor report.
pub fn extract(job: &ExtractJob, reporter: &dyn Reporter) -> Result<Extracted> {
    if job.rank == 0 {
        return Err(Error::setting("rank", "must be at least 1"));
    }
    let modules = plan_modules(job)?;
    let shapes: Vec<ModuleShape> = modules
        .iter()
        .map(|(_, t)| {
            let (rows, cols) = (t.shape[0], t.shape[1]);
            let (out, inn) = if job.fan_in_fan_out {
                (cols, rows)
            } else {
                (rows, cols)
            };
            ModuleShape {
                weight: t.name.clone(),
                embedding: false,
                a_shape: [job.rank, inn],
                b_shape: [out, job.rank],
            }
        })
        .collect();
    let staging = Staging::new(&job.dest, job.force)?;
    let mut metadata = BTreeMap::new();
    metadata.insert("warp_version".into(), env!("CARGO_PKG_VERSION").into());
    let layout = AdapterLayout {
        r: job.rank,
        fan_in_fan_out: job.fan_in_fan_out,
        task_type: Some("CAUSAL_LM".into()),
        base_model: job.base_name.clone(),
        modules: shapes,
        dtype: job.dtype,
        metadata,
        scaling: None,
    };
    let mut w = AdapterWriter::create(staging.path(), &job.dest, &layout)?;
    let shards = || job.model.shards.iter().chain(&job.base.shards);
    let guard = ReadGuard::new(shards().map(|s| (s.mapped(), s.path.as_path())));
    let mut tensors = BTreeMap::new();
    reporter.start_steps("extract-lora", modules.len() as u64);
    for (model, base) in &modules {
        let (rows, cols) = (base.shape[0], base.shape[1]);
        // Two f32 buffers of a block of rows.
        let block = (job.budget / (8 * cols.max(1) as u64)).clamp(1, rows.max(1) as u64);
        let d = Delta {
            job,
            model,
            base,
            rows,
            cols,
            block: block as usize,
            guard: &guard,
        };
        let (a, b, rep) = decompose(&d, job.rank, job)?;
        w.write_module(&a, &b)?;
        reporter.advance(1);
        tensors.insert(base.name.clone(), rep);
    }
    reporter.finish();
    let not_captured = differing_others(job, &tensors)?;
    guard.check()?;
    // A file changed after it was opened would make the adapter describe neither version.
    for s in shards() {
        s.check_unchanged()?;
    }
    w.finish()?;
    let card = card_text(job, &layout);
    std::fs::write(staging.path().join("README.md"), card)
        .map_err(|e| Error::io(job.dest.join("README.md"), e))?;
    staging.commit()?;
    Ok(Extracted {
        rank: job.rank,
        tensors,
        not_captured,
    })
}

/// Float tensors of the model other than the extracted modules that differ from the base.
fn differing_others(
    job: &ExtractJob,
    done: &BTreeMap<String, TensorReport>,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for t in job.model.tensors() {
        if done.contains_key(&t.name) || !t.dtype.is_float() {
            continue;
        }
        let same = job.base.get(&t.name).is_some_and(|b| {
            b.dtype == t.dtype
                && b.shape == t.shape
                && job.base.bytes(b, 0..b.nbytes) == job.model.bytes(t, 0..t.nbytes)
        });
        if !same {
            out.push(t.name.clone());
        }
    }
    Ok(out)
}

/// The model card of an extracted adapter.
fn card_text(job: &ExtractJob, layout: &AdapterLayout) -> String {
    let recipe = serde_json::json!({
        "method": "extract-lora",
        "model": job.model.path.display().to_string(),
        "rank": job.rank,
        "power_iters": job.power_iters,
        "oversample": job.oversample,
        "fan_in_fan_out": job.fan_in_fan_out,
        "target_modules": layout.config()["target_modules"],
    });
    let card = crate::io::companion::ModelCard {
        title: &format!("LoRA of rank {} extracted by SVD", job.rank),
        base_model: &job.base_name,
        method: "extract-lora",
        recipe: &recipe,
        notes: vec![format!(
            "A PEFT LoRA adapter (`lora_alpha` = r: scale 1) approximating the task vector of \
             `{}` on its base by a truncated SVD per module (randomised subspace iteration). \
             Load it with `PeftModel.from_pretrained(base_model, path)`.",
            job.model.path.display()
        )],
    };
    card.render()
        .replacen("library_name: transformers", "library_name: peft", 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_svd_reconstructs_and_sorts() {
        let (n, k) = (7, 3);
        let m: Vec<f64> = (0..n * k)
            .map(|i| ((i * 7 % 11) as f64 - 5.0) * 0.3)
            .collect();
        let (u, s, v) = jacobi_svd(&m, n, k);
        assert!(s.windows(2).all(|w| w[0] >= w[1]));
        for i in 0..n {
            for j in 0..k {
                let x: f64 = (0..k).map(|l| u[l][i] * s[l] * v[l][j]).sum();
                assert!((x - m[i * k + j]).abs() < 1e-12, "{i} {j}");
            }
        }
        let mut q = m.clone();
        orthonormalize(&mut q, n, k);
        for a in 0..k {
            for b in 0..k {
                let d: f64 = (0..n).map(|i| q[i * k + a] * q[i * k + b]).sum();
                assert!((d - f64::from(u8::from(a == b))).abs() < 1e-14);
            }
        }
    }

    #[test]
    fn default_targets_are_weights_inside_numbered_blocks() {
        assert!(targeted("model.layers.3.mlp.up_proj.weight", &[]));
        assert!(targeted("transformer.h.0.attn.c_attn.weight", &[]));
        assert!(!targeted("lm_head.weight", &[]));
        assert!(!targeted("model.layers.3.mlp.up_proj.bias", &[]));
        let t = vec!["q_proj".to_string(), "lm_head".to_string()];
        assert!(targeted("model.layers.0.self_attn.q_proj.weight", &t));
        assert!(targeted("lm_head.weight", &t));
        assert!(!targeted("model.layers.0.self_attn.xq_proj.weight", &t));
    }
}
