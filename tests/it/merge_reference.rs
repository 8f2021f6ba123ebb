//! The merge tools against an independent float64 numpy reference (tests/ref/merge_ref.py, which
//! implements the formulas directly on the vectors), on random related checkpoints written by
//! tests/ref/make_ckpt.py (its own safetensors writer): bf16, f16 and f32, M = 2, 3, 5, single-file
//! and sharded. Criteria: f32 outputs within 1e-6 relative, bf16/f16 outputs within 1 ulp of the
//! correctly rounded reference. Plus closed-form cases and input errors.

use crate::common;
use common::*;

use std::path::{Path, PathBuf};
use warp::io::{Checkpoint, DType};

pub(crate) struct Case<'a> {
    pub(crate) dtype: &'a str,
    pub(crate) m: usize,
    pub(crate) shards: usize,
    pub(crate) kind: &'a str,
    pub(crate) seed: u64,
}

/// Writes init + p1..pM with the independent generator; returns the folder.
pub(crate) fn make(w: &Path, c: &Case) -> PathBuf {
    let dir = w.join(format!(
        "in-{}-{}-{}-{}-{}",
        c.dtype, c.m, c.shards, c.kind, c.seed
    ));
    if !dir.exists() {
        let script = repo_root().join("tests/ref/make_ckpt.py");
        py(
            &[
                script.to_str().unwrap(),
                "--out",
                dir.to_str().unwrap(),
                "--m",
                &c.m.to_string(),
                "--dtype",
                c.dtype,
                "--shards",
                &c.shards.to_string(),
                "--seed",
                &c.seed.to_string(),
                "--kind",
                c.kind,
            ],
            w,
        );
    }
    dir
}

pub(crate) fn models(dir: &Path, m: usize) -> Vec<String> {
    (1..=m)
        .map(|i| dir.join(format!("p{i}")).to_string_lossy().into_owned())
        .collect()
}

pub(crate) fn reference(w: &Path, args: &[String]) -> PathBuf {
    let out = w.join(format!("ref-{}", unique()));
    let script = repo_root().join("tests/ref/merge_ref.py");
    let mut a: Vec<String> = vec![script.to_string_lossy().into_owned()];
    a.extend_from_slice(args);
    a.push("--out".into());
    a.push(out.to_string_lossy().into_owned());
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    py(&a, w);
    out
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

pub(crate) fn values(ck: &Checkpoint, name: &str) -> (DType, Vec<f64>) {
    let t = ck
        .get(name)
        .unwrap_or_else(|| panic!("{} lacks {name}", ck.path.display()));
    let bytes = ck.bytes(t, 0..t.nbytes);
    let v = match t.dtype {
        DType::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        d => {
            let mut f = vec![0f32; t.numel() as usize];
            warp::io::dtype::decode_f32(d, bytes, &mut f);
            f.into_iter().map(f64::from).collect()
        }
    };
    (t.dtype, v)
}

/// Distance in units in the last place between a stored 16-bit value and the reference rounded
/// correctly (from f64, nearest even) to the same format.
fn ulps16(dtype: DType, ours: f64, reference: f64) -> u32 {
    let (a, r) = match dtype {
        DType::BF16 => (
            half::bf16::from_f64(ours).to_bits(),
            half::bf16::from_f64(reference).to_bits(),
        ),
        DType::F16 => (
            half::f16::from_f64(ours).to_bits(),
            half::f16::from_f64(reference).to_bits(),
        ),
        _ => unreachable!(),
    };
    // Map sign-magnitude bits onto a monotonic integer line.
    let ord = |b: u16| {
        if b & 0x8000 != 0 {
            -((b & 0x7FFF) as i32)
        } else {
            b as i32
        }
    };
    (ord(a) - ord(r)).unsigned_abs()
}

/// Compares every tensor of our output folder with the reference file. Returns the worst f32
/// relative error and the worst 16-bit ulp distance seen.
pub(crate) fn compare(ours: &Path, reference: &Path) -> (f64, u32) {
    let a = Checkpoint::open(ours).unwrap();
    let r = Checkpoint::open(reference).unwrap();
    assert_eq!(a.tensors().len(), r.tensors().len());
    let (mut worst_rel, mut worst_ulp) = (0f64, 0u32);
    let (mut cancelled, mut total16) = (0u64, 0u64);
    for t in a.tensors() {
        if !t.dtype.is_float() {
            let rt = r.get(&t.name).unwrap();
            assert!(
                a.bytes(t, 0..t.nbytes) == r.bytes(rt, 0..rt.nbytes),
                "{}",
                t.name
            );
            continue;
        }
        let (dt, ov) = values(&a, &t.name);
        let (_, rv) = values(&r, &t.name);
        // Relative error, floored at the tensor's scale so exact zeros do not divide by zero.
        let scale = (rv.iter().map(|x| x * x).sum::<f64>() / rv.len() as f64)
            .sqrt()
            .max(1e-30);
        for (i, (o, x)) in ov.iter().zip(&rv).enumerate() {
            match dt {
                DType::F32 | DType::F64 => {
                    let rel = (o - x).abs() / x.abs().max(scale);
                    worst_rel = worst_rel.max(rel);
                    assert!(
                        rel <= 1e-6,
                        "{}: {} [{i}] ours {o:e} ref {x:e} rel {rel:e}",
                        ours.display(),
                        t.name
                    );
                }
                _ => {
                    let u = ulps16(dt, *o, *x);
                    // Where terms of ~scale cancel to (nearly) zero, no f32 or f64 evaluation
                    // with inexact coefficients lands within an ulp of the tiny exact result:
                    // there the bound is 1e-6 of the tensor's scale. Counted, and kept rare.
                    if u > 1 {
                        assert!(
                            (o - x).abs() <= 1e-6 * scale,
                            "{}: {} [{i}] ours {o:e} ref {x:e}: {u} ulp",
                            ours.display(),
                            t.name
                        );
                        cancelled += 1;
                    } else {
                        worst_ulp = worst_ulp.max(u);
                    }
                    total16 += 1;
                }
            }
        }
    }
    assert!(
        cancelled * 1000 <= total16,
        "{}: {cancelled} of {total16} values needed the cancellation bound",
        ours.display()
    );
    (worst_rel, worst_ulp)
}

pub(crate) fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// Runs our SLERP and the reference on one case with the given η list and angle mode.
fn slerp_case(c: &Case, etas: &[&str], angle: &str) {
    let w = tempfile::tempdir().unwrap();
    let dir = make(w.path(), c);
    let ms = models(&dir, c.m);
    let init = dir.join("init").to_string_lossy().into_owned();
    let mut ours_args: Vec<String> = ms.clone();
    ours_args.extend(s(&[
        "--init",
        &init,
        "-o",
        "ours",
        "-q",
        "--angle",
        angle,
        "--report",
        "ours.json",
    ]));
    let mut ref_args = s(&["slerp", "--init", &init, "--angle", angle]);
    for e in etas {
        ours_args.extend(s(&["--eta", e]));
        ref_args.extend(s(&["--eta", e]));
    }
    ref_args.extend(ms);
    let a: Vec<&str> = ours_args.iter().map(String::as_str).collect();
    ok("warp-slerp", &a, w.path());
    let r = reference(w.path(), &ref_args);
    let names: Vec<String> = if etas.is_empty() {
        vec!["merged".into()]
    } else {
        etas.iter()
            .map(|e| warp::merge::eta_name(e.parse().unwrap()))
            .collect()
    };
    for name in &names {
        let ours = if names.len() == 1 {
            w.path().join("ours")
        } else {
            w.path().join("ours").join(name)
        };
        let (rel, ulp) = compare(&ours, &r.join(format!("{name}.safetensors")));
        eprintln!(
            "slerp {} M={} shards={} {} angle={angle} {name}: worst rel {rel:.2e}, worst ulp {ulp}",
            c.dtype, c.m, c.shards, c.kind
        );
    }
    compare_reports(&w.path().join("ours.json"), &r.join("report.json"));
}

/// Our --report norms and angles against the reference's, per tensor and per block.
pub(crate) fn compare_reports(ours: &Path, reference: &Path) {
    compare_reports_tol(ours, reference, 1e-9)
}

/// [`compare_reports`] with norms within `tol` relative and cosines within `tol` absolute.
pub(crate) fn compare_reports_tol(ours: &Path, reference: &Path, tol: f64) {
    let o: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ours).unwrap()).unwrap();
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(reference).unwrap()).unwrap();
    let mut checked = 0;
    for section in ["tensors", "layers"] {
        for (name, rv) in r[section].as_object().unwrap() {
            let ov = &o[section][name];
            assert!(!ov.is_null(), "our report lacks {section}/{name}");
            for (a, b) in ov["norms"]
                .as_array()
                .unwrap()
                .iter()
                .zip(rv["norms"].as_array().unwrap())
            {
                let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
                assert!(
                    (a - b).abs() <= tol * b.abs().max(1e-12),
                    "{name} norm {a} vs {b}"
                );
            }
            let (oa, ra) = (
                ov["angles_deg"].as_array().unwrap(),
                rv["angles_deg"].as_array().unwrap(),
            );
            for (orow, rrow) in oa.iter().zip(ra) {
                for (a, b) in orow
                    .as_array()
                    .unwrap()
                    .iter()
                    .zip(rrow.as_array().unwrap())
                {
                    match (a.as_f64(), b.as_f64()) {
                        // Compare cosines: acos is ill-conditioned near 0° and 180° (a 1e-16
                        // change of cos moves the angle by ~1e-6°).
                        (Some(a), Some(b)) => assert!(
                            (a.to_radians().cos() - b.to_radians().cos()).abs() < tol,
                            "{name} angle {a} vs {b}"
                        ),
                        (None, None) => {}
                        // The reference may write 90 or NaN for undefined angles; we write null.
                        (None, Some(b)) => {
                            assert!(b.is_nan(), "{name}: angle undefined here, {b} there")
                        }
                        (Some(a), None) => panic!("{name}: angle {a} here, undefined there"),
                    }
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 0, "no report entries compared");
}

#[test]
fn slerp_bf16_m2_single_file_with_fused_liti() {
    slerp_case(
        &Case {
            dtype: "bf16",
            m: 2,
            shards: 1,
            kind: "random",
            seed: 1,
        },
        &["0.0", "0.3", "1.0", "1.5"],
        "tensor",
    );
}

#[test]
fn slerp_f16_m3_sharded() {
    slerp_case(
        &Case {
            dtype: "f16",
            m: 3,
            shards: 3,
            kind: "random",
            seed: 2,
        },
        &["0.3", "1.0"],
        "tensor",
    );
}

#[test]
fn slerp_f32_m5_sharded() {
    slerp_case(
        &Case {
            dtype: "f32",
            m: 5,
            shards: 2,
            kind: "random",
            seed: 3,
        },
        &[],
        "tensor",
    );
}

#[test]
fn slerp_per_layer_and_global_angles() {
    slerp_case(
        &Case {
            dtype: "bf16",
            m: 3,
            shards: 2,
            kind: "random",
            seed: 4,
        },
        &["0.5"],
        "layer",
    );
    slerp_case(
        &Case {
            dtype: "f32",
            m: 3,
            shards: 1,
            kind: "random",
            seed: 5,
        },
        &["0.5", "1.0"],
        "global",
    );
}

#[test]
fn slerp_degenerate_inputs_match_the_reference() {
    for (dtype, m, kind) in [
        ("f32", 2, "antiparallel"),
        ("bf16", 2, "zero"),
        ("bf16", 3, "parallel"),
        ("f32", 3, "identical"),
    ] {
        slerp_case(
            &Case {
                dtype,
                m,
                shards: 1,
                kind,
                seed: 6,
            },
            &["0.3", "1.0"],
            "tensor",
        );
    }
}

#[test]
fn lerp_liti_and_ema_match_the_reference() {
    let w = tempfile::tempdir().unwrap();
    for (dtype, shards) in [("bf16", 2), ("f32", 1), ("f16", 1)] {
        let c = Case {
            dtype,
            m: 3,
            shards,
            kind: "random",
            seed: 7,
        };
        let dir = make(w.path(), &c);
        let ms = models(&dir, 3);
        let init = dir.join("init").to_string_lossy().into_owned();
        let tag = format!("{dtype}{shards}");

        // LERP with explicit weights and two η.
        let mut a = ms.clone();
        a.extend(s(&[
            "--init", &init, "--weight", "0.5", "--weight", "0.3", "--weight", "0.2", "--eta",
            "0.4", "--eta", "1.0", "-q", "-o",
        ]));
        a.push(format!("lerp-{tag}"));
        ok(
            "warp-lerp",
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
            w.path(),
        );
        let mut ra = s(&[
            "lerp",
            "--init",
            &init,
            "--weights",
            "0.5",
            "0.3",
            "0.2",
            "--eta",
            "0.4",
            "--eta",
            "1.0",
        ]);
        ra.extend(ms.clone());
        let r = reference(w.path(), &ra);
        for n in ["eta-0.40", "eta-1.00"] {
            compare(
                &w.path().join(format!("lerp-{tag}")).join(n),
                &r.join(format!("{n}.safetensors")),
            );
        }

        // LITI of p1 (standing in for a merge) at η = 0, 0.3, 1, 1.5 (extrapolation).
        let p1 = &ms[0];
        let mut a = s(&[
            "--init", &init, "--merged", p1, "--eta", "0", "--eta", "0.3", "--eta", "1", "--eta",
            "1.5", "-q", "-o",
        ]);
        a.push(format!("liti-{tag}"));
        ok(
            "warp-liti",
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
            w.path(),
        );
        let r = reference(
            w.path(),
            &s(&[
                "liti", "--init", &init, "--merged", p1, "--eta", "0", "--eta", "0.3", "--eta",
                "1", "--eta", "1.5",
            ]),
        );
        for n in ["eta-0.00", "eta-0.30", "eta-1.00", "eta-1.50"] {
            compare(
                &w.path().join(format!("liti-{tag}")).join(n),
                &r.join(format!("{n}.safetensors")),
            );
        }
        let card = std::fs::read_to_string(w.path().join(format!("liti-{tag}/eta-1.50/README.md")))
            .unwrap();
        assert!(card.contains("extrapolates"), "{card}");

        // EMA over init, p1, p2, p3.
        let mut a = s(&["--mu", "0.1", &init]);
        a.extend(ms.clone());
        a.extend(s(&["-q", "-o"]));
        a.push(format!("ema-{tag}"));
        ok(
            "warp-ema",
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
            w.path(),
        );
        let mut ra = s(&["ema", "--mu", "0.1", &init]);
        ra.extend(ms.clone());
        let r = reference(w.path(), &ra);
        compare(
            &w.path().join(format!("ema-{tag}")),
            &r.join("ema.safetensors"),
        );
    }
}

/// Runs warp-slerp with `args` in `w`.
fn slerp_ok(args: Vec<String>, w: &Path) -> String {
    ok(
        "warp-slerp",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        w,
    )
}

#[test]
fn fused_eta_0_and_1_are_the_init_and_the_merge_bit_for_bit() {
    let w = tempfile::tempdir().unwrap();
    let c = Case {
        dtype: "bf16",
        m: 2,
        shards: 2,
        kind: "random",
        seed: 8,
    };
    let dir = make(w.path(), &c);
    let ms = models(&dir, 2);
    let init = dir.join("init");
    let args = |extra: &[&str]| {
        let mut a = ms.clone();
        a.extend(s(&["--init", init.to_str().unwrap(), "-q"]));
        a.extend(s(extra));
        a
    };
    slerp_ok(args(&["--eta", "0", "--eta", "1", "-o", "fused"]), w.path());
    slerp_ok(args(&["-o", "merged"]), w.path());
    assert_same_tensors(&w.path().join("fused/eta-0.00"), &init);
    assert_same_tensors(&w.path().join("fused/eta-1.00"), &w.path().join("merged"));
}

#[test]
fn slerp_of_identical_policies_is_that_policy() {
    let w = tempfile::tempdir().unwrap();
    let c = Case {
        dtype: "bf16",
        m: 3,
        shards: 1,
        kind: "identical",
        seed: 9,
    };
    let dir = make(w.path(), &c);
    let ms = models(&dir, 3);
    let mut a = ms.clone();
    a.extend(s(&[
        "--init",
        dir.join("init").to_str().unwrap(),
        "-q",
        "-o",
        "same",
    ]));
    slerp_ok(a, w.path());
    assert_same_tensors(&w.path().join("same"), Path::new(&ms[0]));
}

/// Orthogonal task vectors of equal norm: α1 = α2 = 1/√2, and the merge keeps the norm
/// (Lemma 1), checked on the data: |θslerp − θinit| = |δ1|.
#[test]
fn orthogonal_task_vectors_of_equal_norm_keep_it() {
    let w = tempfile::tempdir().unwrap();
    let c = Case {
        dtype: "f32",
        m: 2,
        shards: 1,
        kind: "orthogonal",
        seed: 10,
    };
    let dir = make(w.path(), &c);
    let ms = models(&dir, 2);
    let mut a = ms.clone();
    a.extend(s(&[
        "--init",
        dir.join("init").to_str().unwrap(),
        "-q",
        "-o",
        "orth",
        "--report",
        "orth.json",
    ]));
    slerp_ok(a, w.path());
    let (ci, cp, co) = (
        Checkpoint::open(dir.join("init")).unwrap(),
        Checkpoint::open(&ms[0]).unwrap(),
        Checkpoint::open(w.path().join("orth")).unwrap(),
    );
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.path().join("orth.json")).unwrap())
            .unwrap();
    let norm = |a: &[f64], b: &[f64]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f64>()
            .sqrt()
    };
    for t in ci.tensors() {
        let (_, i) = values(&ci, &t.name);
        let (_, p) = values(&cp, &t.name);
        let (_, o) = values(&co, &t.name);
        let (d1, dm) = (norm(&p, &i), norm(&o, &i));
        assert!(
            (dm - d1).abs() <= 1e-5 * d1,
            "{}: |δ1| {d1} vs merged {dm}",
            t.name
        );
        let coef = &rep["tensors"][&t.name]["coefficients"];
        for k in 0..2 {
            assert!(
                (coef[k].as_f64().unwrap() - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12,
                "{}: {coef}",
                t.name
            );
        }
    }
}

#[test]
fn results_do_not_depend_on_threads_or_memory_budget() {
    let w = tempfile::tempdir().unwrap();
    let c = Case {
        dtype: "bf16",
        m: 3,
        shards: 2,
        kind: "random",
        seed: 11,
    };
    let dir = make(w.path(), &c);
    let base = {
        let mut a = models(&dir, 3);
        a.extend(s(&[
            "--init",
            dir.join("init").to_str().unwrap(),
            "-q",
            "--angle",
            "global",
            "--eta",
            "0.3",
            "--eta",
            "1",
        ]));
        a
    };
    let mut a1 = base.clone();
    a1.extend(s(&[
        "-o",
        "many-chunks",
        "--threads",
        "1",
        "--memory-budget",
        "64KiB",
        "--report",
        "r1.json",
    ]));
    let mut a2 = base.clone();
    a2.extend(s(&["-o", "default", "--report", "r2.json"]));
    ok(
        "warp-slerp",
        &a1.iter().map(String::as_str).collect::<Vec<_>>(),
        w.path(),
    );
    ok(
        "warp-slerp",
        &a2.iter().map(String::as_str).collect::<Vec<_>>(),
        w.path(),
    );
    for n in ["eta-0.30", "eta-1.00"] {
        assert_same_tensors(
            &w.path().join("many-chunks").join(n),
            &w.path().join("default").join(n),
        );
    }
    // The statistics themselves are bit-identical.
    let r1 = std::fs::read_to_string(w.path().join("r1.json")).unwrap();
    let r2 = std::fs::read_to_string(w.path().join("r2.json")).unwrap();
    assert_eq!(r1, r2);
}

#[test]
fn mismatched_inputs_are_listed_and_nothing_is_written() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    f32_file(
        &p.join("init.safetensors"),
        &[("a", vec![1.0, 2.0]), ("b", vec![3.0])],
    );
    f32_file(
        &p.join("x.safetensors"),
        &[("a", vec![1.0, 2.0, 3.0]), ("c", vec![3.0])],
    );
    f32_file(
        &p.join("y.safetensors"),
        &[("a", vec![1.0, 2.5]), ("b", vec![3.5])],
    );
    let err = fails(
        "warp-slerp",
        &[
            "x.safetensors",
            "y.safetensors",
            "--init",
            "init.safetensors",
            "-o",
            "out",
        ],
        p,
        &[
            "do not match",
            "x.safetensors: tensor 'a' has shape [3], but [2]",
            "x.safetensors: tensor 'b' is missing",
            "tensor 'c' is not in",
        ],
    );
    assert!(!err.contains("y.safetensors:"), "{err}");
    assert!(!p.join("out").exists());
}

/// init, a y.safetensors that matches it, for the tests below.
fn init_and_y(p: &Path) {
    f32_file(
        &p.join("init.safetensors"),
        &[("a", vec![1.0, 2.0]), ("b", vec![3.0])],
    );
    f32_file(
        &p.join("y.safetensors"),
        &[("a", vec![1.0, 2.5]), ("b", vec![3.5])],
    );
}

#[test]
fn nonfinite_inputs_are_refused_unless_allowed() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    init_and_y(p);

    // Refused naming file, tensor, element.
    f32_file(
        &p.join("nan.safetensors"),
        &[("a", vec![1.0, f32::NAN]), ("b", vec![3.0])],
    );
    for tool in [
        &["warp-slerp", "nan.safetensors", "y.safetensors"][..],
        &["warp-lerp", "nan.safetensors", "y.safetensors"][..],
    ] {
        let mut a = tool[1..].to_vec();
        a.extend([
            "--init",
            "init.safetensors",
            "-o",
            "out",
            "--eta",
            "0.5",
            "--eta",
            "1",
        ]);
        let err = fails(
            tool[0],
            &a,
            p,
            &["nan.safetensors", "tensor 'a'", "non-finite", "element 1"],
        );
        // The message says how to allow it (the library names the setting, the CLI its flag).
        assert!(
            err.contains("allow_nonfinite") || err.contains("--allow-nonfinite"),
            "{err}"
        );
        assert!(!p.join("out").exists());
        assert!(
            entries(p).iter().all(|e| !e.contains("warp-tmp")),
            "{:?}",
            entries(p)
        );
    }
    ok(
        "warp-lerp",
        &[
            "nan.safetensors",
            "y.safetensors",
            "--init",
            "init.safetensors",
            "-o",
            "out",
            "--allow-nonfinite",
            "-q",
        ],
        p,
    );
}

#[test]
fn non_float_tensors_must_be_equal_across_inputs() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    // Non-float tensors must be equal across inputs.
    let int_file = |path: &Path, v: i64| {
        let h = r#"{"ids":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},"w":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#;
        let mut data = v.to_le_bytes().to_vec();
        data.extend_from_slice(&1f32.to_le_bytes());
        raw_file(path, h, &data);
    };
    int_file(&p.join("i0.safetensors"), 7);
    int_file(&p.join("i1.safetensors"), 7);
    int_file(&p.join("i2.safetensors"), 8);
    fails(
        "warp-slerp",
        &[
            "i1.safetensors",
            "i2.safetensors",
            "--init",
            "i0.safetensors",
            "-o",
            "int-out",
        ],
        p,
        &["i2.safetensors", "'ids'", "I64", "must be equal"],
    );
    assert!(!p.join("int-out").exists());
    ok(
        "warp-slerp",
        &[
            "i1.safetensors",
            "i1.safetensors",
            "--init",
            "i0.safetensors",
            "-o",
            "int-out",
            "-q",
        ],
        p,
    );
    assert_same_tensors(&p.join("int-out"), &p.join("i1.safetensors"));
}
