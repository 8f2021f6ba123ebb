//! PEFT LoRA adapters as checkpoint inputs (issue 25): an adapter is its base plus s·B·A per
//! module and its full tensors. Adapters written here byte by byte (PEFT's key names and
//! config), checked against an independent float64 reference (tests/ref/lora_ref.py builds
//! base + s·B·A with numpy; tests/ref/merge_ref.py merges those). Adapters made by PEFT itself:
//! tests/it/lora_peft.rs.

use crate::common;
use crate::merge_reference::{compare, compare_reports_tol, make, reference, s, Case};
use common::*;

use std::path::{Path, PathBuf};
use warp::io::{Checkpoint, DType};

/// An adapter tensor: PEFT key, shape, f32 values.
pub(crate) type Tensor = (String, Vec<usize>, Vec<f32>);

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

pub(crate) fn p(x: &Path) -> String {
    x.to_string_lossy().into_owned()
}

/// xorshift64*, N(0,1)-ish by summing uniforms: deterministic factors.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64 * 2.0
            - 1.0) as f32
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.unit() * scale).collect()
    }
}

/// A PEFT adapter folder: adapter_config.json (`cfg`) and adapter_model.safetensors holding
/// `tensors` (full keys, shapes, f32 values, stored as `dtype`).
pub(crate) fn write_adapter(dir: &Path, cfg: serde_json::Value, tensors: &[Tensor], dtype: DType) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("adapter_config.json"), cfg.to_string()).unwrap();
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (k, shape, v) in tensors {
        let begin = data.len();
        for x in v {
            match dtype {
                DType::F32 => data.extend_from_slice(&x.to_le_bytes()),
                DType::BF16 => data.extend_from_slice(&half::bf16::from_f32(*x).to_le_bytes()),
                d => panic!("{d}"),
            }
        }
        header.insert(
            k.clone(),
            serde_json::json!({"dtype": dtype.name(), "shape": shape, "data_offsets": [begin, data.len()]}),
        );
    }
    raw_file(
        &dir.join("adapter_model.safetensors"),
        &serde_json::to_string(&header).unwrap(),
        &data,
    );
}

/// LoRA factors for `modules` of the base (A [r, in], B [out, r] from the base's weight shape)
/// and full tensors for `full`, PEFT's key names.
pub(crate) fn lora_tensors(
    base: &Checkpoint,
    modules: &[&str],
    full: &[&str],
    r: usize,
    seed: u64,
) -> Vec<Tensor> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut out = Vec::new();
    for m in modules {
        let shape = &base.get(&format!("{m}.weight")).unwrap().shape;
        let (o, i) = (shape[0], shape[1]);
        out.push((
            format!("base_model.model.{m}.lora_A.weight"),
            vec![r, i],
            rng.vec(r * i, 0.2),
        ));
        out.push((
            format!("base_model.model.{m}.lora_B.weight"),
            vec![o, r],
            rng.vec(o * r, 0.05),
        ));
    }
    for f in full {
        let t = base.get(f).unwrap();
        out.push((
            format!("base_model.model.{f}"),
            t.shape.clone(),
            rng.vec(t.numel() as usize, 0.03),
        ));
    }
    out
}

pub(crate) fn config(base: &str, r: usize, alpha: f64, rslora: bool) -> serde_json::Value {
    serde_json::json!({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha,
        "use_rslora": rslora, "use_dora": false, "fan_in_fan_out": false, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj", "down_proj"], "modules_to_save": ["lm_head"],
        "base_model_name_or_path": base, "bias": "none", "rank_pattern": {}, "alpha_pattern": {}
    })
}

pub(crate) const MODULES: [&str; 3] = [
    "model.layers.0.self_attn.q_proj",
    "model.layers.1.self_attn.v_proj",
    "model.layers.1.mlp.down_proj",
];

/// base + two adapters of it (ranks 4 and 2, one rsLoRA); returns (base, [a1, a2]).
pub(crate) fn setup(w: &Path, dtype: &'static str) -> (PathBuf, Vec<PathBuf>) {
    let dir = make(
        w,
        &Case {
            dtype,
            m: 1,
            shards: 2,
            kind: "random",
            seed: 41,
        },
    );
    let base = dir.join("init");
    let ck = Checkpoint::open(&base).unwrap();
    let mut ads = Vec::new();
    for (k, (r, alpha, rs)) in [(4usize, 8.0, false), (2, 4.0, true)]
        .into_iter()
        .enumerate()
    {
        let a = w.join(format!("adapter-{dtype}-{k}"));
        write_adapter(
            &a,
            config(&p(&base), r, alpha, rs),
            &lora_tensors(&ck, &MODULES, &["lm_head.weight"], r, 7 + k as u64),
            DType::F32,
        );
        ads.push(a);
    }
    (base, ads)
}

/// base + s·B·A by the numpy reference, as a float64 single file.
pub(crate) fn materialized(w: &Path, base: &Path, adapter: &Path) -> PathBuf {
    // Named after the whole path: outputs of several merges share their folder names.
    let rel = adapter.strip_prefix(w).unwrap_or(adapter);
    let out = w.join(format!(
        "{}.ref.safetensors",
        rel.to_string_lossy().replace('/', "_")
    ));
    if !out.exists() {
        let script = repo_root().join("tests/ref/lora_ref.py");
        py(
            &[
                &p(&script),
                "--base",
                &p(base),
                "--adapter",
                &p(adapter),
                "--out",
                &p(&out),
            ],
            w,
        );
    }
    out
}

/// An adapter read as a checkpoint is base + s·B·A with its full tensors: `warp convert`
/// (base from the adapter's config) and `warp liti --eta 1` (base from --init) equal the
/// float64 reference, in f32 within 1e-6 and, on a bf16 base, within 1 bf16 ulp in the base's
/// dtype; at the smallest memory budget (chunks cut across rows) the bytes are the same.
#[test]
fn adapters_read_as_base_plus_low_rank_deltas() {
    let w = tempfile::tempdir().unwrap();
    for dtype in ["f32", "bf16"] {
        let (base, ads) = setup(w.path(), dtype);
        for a in &ads {
            let want = materialized(w.path(), &base, a);
            let conv = w
                .path()
                .join(format!("conv-{}", a.file_name().unwrap().to_string_lossy()));
            ok("warp-convert", &[&p(a), "-o", &p(&conv), "-q"], w.path());
            let (rel, ulp) = compare(&conv, &want);
            assert!(rel <= 1e-6 && ulp <= 1, "{dtype}: rel {rel} ulp {ulp}");
            let (c, b) = (
                Checkpoint::open(&conv).unwrap(),
                Checkpoint::open(&base).unwrap(),
            );
            for t in c.tensors() {
                assert_eq!(t.dtype, b.get(&t.name).unwrap().dtype, "{}", t.name);
            }
            let small = w.path().join("small");
            let _ = std::fs::remove_dir_all(&small);
            ok(
                "warp-liti",
                &[
                    "--init",
                    &p(&base),
                    "--merged",
                    &p(a),
                    "--eta",
                    "1",
                    "--memory-budget",
                    "1",
                    "-o",
                    &p(&small),
                    "-q",
                ],
                w.path(),
            );
            assert_same_tensors(&small, &conv);
        }
    }
}

/// SLERP, LERP and EMA of adapters of one base, written as full checkpoints: equal to the
/// reference merges of the materialised adapters, norms and angles included.
#[test]
fn merges_of_adapters_match_the_reference() {
    let w = tempfile::tempdir().unwrap();
    let (base, ads) = setup(w.path(), "f32");
    let (a1, a2) = (p(&ads[0]), p(&ads[1]));
    let (m1, m2) = (
        p(&materialized(w.path(), &base, &ads[0])),
        p(&materialized(w.path(), &base, &ads[1])),
    );
    let b = p(&base);
    let mut a = s(&[&a1, &a2, "--init", &b, "--eta", "0.5", "--eta", "1"]);
    a.extend(s(&["-o", "slerp", "-q", "--report", "slerp.json"]));
    ok("warp-slerp", &args(&a), w.path());
    let r = reference(
        w.path(),
        &s(&[
            "slerp", "--init", &b, "--eta", "0.5", "--eta", "1", &m1, &m2,
        ]),
    );
    for n in ["eta-0.50", "eta-1.00"] {
        let (rel, _) = compare(
            &w.path().join("slerp").join(n),
            &r.join(format!("{n}.safetensors")),
        );
        assert!(rel <= 1e-6);
    }
    // The task vectors are read as f32 (base + s·B·A rounded once): norms and cosines agree to
    // that precision, not to the 1e-9 of exactly representable inputs.
    compare_reports_tol(&w.path().join("slerp.json"), &r.join("report.json"), 1e-6);

    // An adapter next to a full checkpoint (its own materialisation, written by the reference
    // as f64): LERP of the two is the materialisation again.
    ok(
        "warp-lerp",
        &[&a1, &m1, "--init", &b, "-o", "lerp", "-q"],
        w.path(),
    );
    let r = reference(w.path(), &s(&["lerp", "--init", &b, &m1, &m1]));
    let (rel, _) = compare(&w.path().join("lerp"), &r.join("merged.safetensors"));
    assert!(rel <= 1e-6);

    // EMA with an adapter first: its base comes from its config.
    ok(
        "warp-ema",
        &["--mu", "0.5", &a1, &a2, "-o", "ema", "-q"],
        w.path(),
    );
    let r = reference(w.path(), &s(&["ema", "--mu", "0.5", &m1, &m2]));
    let (rel, _) = compare(&w.path().join("ema"), &r.join("ema.safetensors"));
    assert!(rel <= 1e-6);
}

/// Adapters warp cannot read as base + s·B·A, or that do not fit their base, are refused with
/// one line naming the file and the setting or tensor; nothing is written.
#[test]
fn bad_adapters_are_refused() {
    let w = tempfile::tempdir().unwrap();
    let (base, _) = setup(w.path(), "f32");
    let ck = Checkpoint::open(&base).unwrap();
    let b = p(&base);
    let good = lora_tensors(&ck, &MODULES[..1], &[], 4, 3);
    for (name, cfg, tensors, want) in bad_cases(&ck, &b, &good) {
        let dir = w.path().join(format!("bad-{name}"));
        write_adapter(&dir, cfg, &tensors, DType::F32);
        let err = fails(
            "warp-slerp",
            &[&p(&dir), &p(&dir), "--init", &b, "-o", "out"],
            w.path(),
            &want,
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!w.path().join("out").exists());
    }
    // No base anywhere: a usage error (exit 2).
    let lone = w.path().join("lone");
    let mut c = config(&b, 4, 8.0, false);
    c["base_model_name_or_path"] = serde_json::Value::Null;
    write_adapter(&lone, c, &good, DType::F32);
    let r = run("warp-convert", &[&p(&lone), "-o", "out"], w.path());
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--init"), "{}", r.stderr);
    assert!(!w.path().join("out").exists());
}

/// Adapters warp refuses (name, config, tensors, what the error must say), on the base `b`.
fn bad_cases<'a>(
    ck: &Checkpoint,
    b: &str,
    good: &[Tensor],
) -> Vec<(&'a str, serde_json::Value, Vec<Tensor>, Vec<&'a str>)> {
    let good = good.to_vec();
    vec![
        (
            "dora",
            {
                let mut c = config(b, 4, 8.0, false);
                c["use_dora"] = true.into();
                c
            },
            good.clone(),
            vec!["adapter_config.json", "use_dora", "DoRA"],
        ),
        (
            "ia3",
            {
                let mut c = config(b, 4, 8.0, false);
                c["peft_type"] = "IA3".into();
                c
            },
            good.clone(),
            vec!["adapter_config.json", "peft_type", "IA3"],
        ),
        (
            "rank",
            config(b, 8, 8.0, false),
            good.clone(),
            vec!["adapter_model.safetensors", "q_proj.weight", "r = 8"],
        ),
        (
            "shape",
            config(b, 4, 8.0, false),
            vec![
                good[0].clone(),
                (good[1].0.clone(), vec![5, 4], vec![0.0; 20]),
            ],
            vec!["q_proj.weight", "LoRA delta is [5, 32]", "[32, 32]"],
        ),
        (
            // PEFT's copy of a targeted module's base weight must be a copy.
            "copy",
            config(b, 4, 8.0, false),
            good.iter()
                .cloned()
                .chain([(
                    "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight".into(),
                    vec![32, 32],
                    vec![0.5; 1024],
                )])
                .collect(),
            vec!["q_proj.base_layer.weight", "differs from the base"],
        ),
        (
            "half",
            config(b, 4, 8.0, false),
            good[..1].to_vec(),
            vec!["q_proj.weight", "one LoRA factor without the other"],
        ),
        (
            "missing",
            config(b, 4, 8.0, false),
            lora_tensors(ck, &[], &[], 4, 3)
                .into_iter()
                .chain([(
                    "base_model.model.model.layers.9.mlp.up_proj.lora_A.weight".into(),
                    vec![4, 32],
                    vec![0.0; 128],
                )])
                .chain([(
                    "base_model.model.model.layers.9.mlp.up_proj.lora_B.weight".into(),
                    vec![48, 4],
                    vec![0.0; 192],
                )])
                .collect(),
            vec!["layers.9.mlp.up_proj.weight", "not in its base"],
        ),
    ]
}

/// base + two adapters of it without full tensors (rank 4, and rank 2 with rsLoRA, on partly
/// different modules): mergeable in rank space.
pub(crate) fn setup_low_rank(w: &Path) -> (PathBuf, Vec<PathBuf>) {
    let (base, _) = setup(w, "f32");
    let ck = Checkpoint::open(&base).unwrap();
    let mods: [&[&str]; 2] = [&MODULES, &MODULES[1..]];
    let mut ads = Vec::new();
    for (k, (r, alpha, rs)) in [(4usize, 8.0, false), (2, 4.0, true)]
        .into_iter()
        .enumerate()
    {
        let a = w.join(format!("lowrank-{k}"));
        let mut cfg = config(&p(&base), r, alpha, rs);
        cfg["modules_to_save"] = serde_json::Value::Null;
        let t = lora_tensors(&ck, mods[k], &[], r, 20 + k as u64);
        write_adapter(&a, cfg, &t, DType::F32);
        ads.push(a);
    }
    (base, ads)
}

/// adapter_config.json of a written adapter.
pub(crate) fn adapter_config(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
        .unwrap()
}

/// Checks one rank-space output `ad` (a PEFT adapter of rank `rank`, no full weights) against
/// the `--as full` output `full` of the same merge and the float64 reference `want` of the
/// materialised inputs: materialised by warp (convert) and by numpy (tests/ref/lora_ref.py).
fn check_adapter_output(w: &Path, base: &Path, ad: &Path, full: &Path, want: &Path, rank: u64) {
    let cfg = adapter_config(ad);
    assert_eq!(
        (cfg["r"].as_u64(), cfg["lora_alpha"].as_u64()),
        (Some(rank), Some(rank))
    );
    assert_eq!(cfg["use_rslora"], false);
    assert!(!ad.join("model.safetensors").exists());
    assert!(ad.join("README.md").is_file());
    let tag = ad
        .strip_prefix(w)
        .unwrap_or(ad)
        .to_string_lossy()
        .replace('/', "_");
    let conv = w.join(format!("conv{tag}"));
    ok("warp-convert", &[&p(ad), "-o", &p(&conv), "-q"], w);
    let (rel, _) = compare(&conv, full);
    assert!(rel <= 1e-6, "{}: {rel}", ad.display());
    let (rel, _) = compare(&conv, want);
    assert!(rel <= 1e-6, "{}: {rel}", ad.display());
    let numpy = materialized(w, base, ad);
    let (rel, _) = compare(&numpy, want);
    assert!(rel <= 1e-6, "{}: {rel}", ad.display());
}

/// SLERP (per tensor, layer and global angles) of adapters of one base in rank space: every
/// output is a PEFT adapter of rank Σr whose materialisation (by warp and by
/// numpy) equals the same merge written as full checkpoints (`--as full`) and the float64
/// reference merge of the materialised adapters; the angles computed from the factors equal the
/// reference's angles of the materialised task vectors (to 1e-9: both are exact up to f64
/// rounding, where the full merge of f32-rounded task vectors agrees to 1e-6 only).
#[test]
fn rank_space_slerp_writes_exact_adapters_and_angles() {
    let w = tempfile::tempdir().unwrap();
    let (base, ads) = setup_low_rank(w.path());
    let (a1, a2, b) = (p(&ads[0]), p(&ads[1]), p(&base));
    let m1 = p(&materialized(w.path(), &base, &ads[0]));
    let m2 = p(&materialized(w.path(), &base, &ads[1]));
    for angle in ["tensor", "layer", "global"] {
        let run = |kind: &str| {
            let o = format!("{kind}-{angle}");
            let mut a = s(&[&a1, &a2, "--init", &b, "--angle", angle, "--eta", "0.5"]);
            a.extend(s(&["--eta", "1", "-q", "--as", kind, "-o", &o, "--report"]));
            a.push(format!("{o}.json"));
            let listed = ok("warp-slerp", &args(&a), w.path());
            assert_eq!(listed.lines().count(), 2, "{listed}");
            w.path().join(o)
        };
        let (ad, full) = (run("adapter"), run("full"));
        let r = reference(
            w.path(),
            &s(&[
                "slerp", "--init", &b, "--angle", angle, "--eta", "0.5", "--eta", "1", &m1, &m2,
            ]),
        );
        for n in ["eta-0.50", "eta-1.00"] {
            let want = r.join(format!("{n}.safetensors"));
            check_adapter_output(w.path(), &base, &ad.join(n), &full.join(n), &want, 6);
        }
        let ours = w.path().join(format!("adapter-{angle}.json"));
        compare_reports_tol(&ours, &r.join("report.json"), 1e-9);
        // The report has the engine's shape: the same sections and keys as `--as full`'s.
        let rep = |f: &Path| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap()
        };
        let (x, y) = (
            rep(&ours),
            rep(&w.path().join(format!("full-{angle}.json"))),
        );
        for k in ["tensors", "layers"] {
            let keys = |v: &serde_json::Value| {
                v[k].as_object()
                    .unwrap()
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
            };
            assert_eq!(keys(&x), keys(&y), "{k}");
        }
        assert_eq!((&x["angle"], &x["inputs"]), (&y["angle"], &y["inputs"]));
        assert!(x["global"]["angles_deg"][0][1].is_number());
    }
}

/// LERP (with weights; `auto` is `adapter` for adapters of one base), LITI of a merged adapter
/// (η > 1 included) and EMA of adapters (no --init) in rank space: every output a PEFT adapter
/// equal, materialised, to `--as full` and to the float64 reference; `--dry-run` writes nothing.
#[test]
fn rank_space_lerp_liti_ema_write_exact_adapters() {
    let w = tempfile::tempdir().unwrap();
    let (base, ads) = setup_low_rank(w.path());
    let (a1, a2, b) = (p(&ads[0]), p(&ads[1]), p(&base));
    let m1 = p(&materialized(w.path(), &base, &ads[0]));
    let m2 = p(&materialized(w.path(), &base, &ads[1]));
    let mut a = s(&[&a1, &a2, "--init", &b, "--weight", "0.3", "--weight", "0.9"]);
    a.extend(s(&["-o", "lerp", "-q"]));
    ok("warp-lerp", &args(&a), w.path());
    a.extend(s(&["--as", "full"]));
    *a.iter_mut().find(|x| *x == "lerp").unwrap() = "lerp-full".into();
    ok("warp-lerp", &args(&a), w.path());
    let r = reference(
        w.path(),
        &s(&["lerp", "--init", &b, &m1, &m2, "--weights", "0.3", "0.9"]),
    );
    let (lerp, lerp_full) = (w.path().join("lerp"), w.path().join("lerp-full"));
    check_adapter_output(
        w.path(),
        &base,
        &lerp,
        &lerp_full,
        &r.join("merged.safetensors"),
        6,
    );
    // LITI of a merged adapter (η > 1 included): the same adapter rank.
    let liti = |kind: &str| {
        let o = format!("liti-{kind}");
        let mut a = s(&["--init", &b, "--merged", &p(&lerp), "--eta", "0.3"]);
        a.extend(s(&["--eta", "1.5", "--as", kind, "-o", &o, "-q"]));
        ok("warp-liti", &args(&a), w.path());
        w.path().join(o)
    };
    let (ad, full) = (liti("adapter"), liti("full"));
    let merged = p(&r.join("merged.safetensors"));
    let r = reference(
        w.path(),
        &s(&[
            "liti", "--init", &b, "--merged", &merged, "--eta", "0.3", "--eta", "1.5",
        ]),
    );
    for n in ["eta-0.30", "eta-1.50"] {
        let want = r.join(format!("{n}.safetensors"));
        check_adapter_output(w.path(), &base, &ad.join(n), &full.join(n), &want, 6);
    }
    // EMA whose inputs are all adapters (no --init; the base from their configs).
    for kind in ["adapter", "full"] {
        let o = format!("ema-{kind}");
        ok(
            "warp-ema",
            &["--mu", "0.25", &a1, &a2, "--as", kind, "-o", &o, "-q"],
            w.path(),
        );
    }
    let r = reference(w.path(), &s(&["ema", "--mu", "0.25", &m1, &m2]));
    let (ema, ema_full) = (w.path().join("ema-adapter"), w.path().join("ema-full"));
    check_adapter_output(
        w.path(),
        &base,
        &ema,
        &ema_full,
        &r.join("ema.safetensors"),
        6,
    );
    // --dry-run writes nothing and says what it would.
    let plan = ok(
        "warp-slerp",
        &[&a1, &a2, "--init", &b, "--dry-run", "-o", "dry"],
        w.path(),
    );
    assert!(
        plan.contains("rank 6") && plan.contains("3 module(s)"),
        "{plan}"
    );
    assert!(!w.path().join("dry").exists());
}

/// `--as adapter` where the merge has no adapter form: an input that is not an adapter, an
/// adapter with full tensors (modules_to_save), adapters of different bases, no adapter at all:
/// exit 2, one line, nothing written. `auto` writes full checkpoints in these cases.
#[test]
fn rank_space_refusals() {
    let w = tempfile::tempdir().unwrap();
    let (base, low) = setup_low_rank(w.path());
    let (_, with_full) = setup(w.path(), "f32");
    let (b, a2) = (p(&base), p(&low[1]));
    let full_model = p(&materialized(w.path(), &base, &low[0]));
    // An adapter like low[1] but of another base (same shapes, other values).
    let other_base = base.parent().unwrap().join("p1");
    let other = w.path().join("other-base");
    let mut cfg = adapter_config(&low[1]);
    cfg["base_model_name_or_path"] = p(&other_base).into();
    let ck = Checkpoint::open(&other_base).unwrap();
    write_adapter(
        &other,
        cfg,
        &lora_tensors(&ck, &MODULES[1..], &[], 2, 5),
        DType::F32,
    );
    let cases: Vec<(&str, Vec<String>, Vec<&str>)> = vec![
        (
            "warp-slerp",
            s(&[&a2, &full_model, "--init", &b]),
            vec!["--as adapter", "is not a PEFT LoRA adapter", "--as full"],
        ),
        (
            "warp-slerp",
            s(&[&p(&with_full[0]), &a2, "--init", &b]),
            vec!["--as adapter", "modules_to_save"],
        ),
        (
            "warp-ema",
            s(&["--mu", "0.5", &a2, &p(&other)]),
            vec![
                "--as adapter",
                "other-base",
                "is not an adapter of the base",
            ],
        ),
        (
            "warp-liti",
            s(&["--init", &b, "--merged", &full_model, "--eta", "1"]),
            vec!["--as adapter", "is not a PEFT LoRA adapter"],
        ),
    ];
    for (tool, mut a, want) in cases {
        a.extend(s(&["--as", "adapter", "-o", "out", "--report", "rep.json"]));
        if tool != "warp-slerp" {
            a.truncate(a.len() - 2);
        }
        let r = run(tool, &args(&a), w.path());
        assert_eq!(r.code, 2, "{tool} {a:?}: {}", r.stderr);
        for x in &want {
            assert!(r.stderr.contains(x), "{tool}: lacks '{x}': {}", r.stderr);
        }
        assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
        assert!(!w.path().join("out").exists() && !w.path().join("rep.json").exists());
        // The default writes full checkpoints instead (a note says why, where there is one).
        let a: Vec<String> = a
            .into_iter()
            .filter(|x| x != "--as" && x != "adapter")
            .collect();
        ok(tool, &args(&a), w.path());
        assert!(!w.path().join("out").join("adapter_config.json").exists());
        assert!(w.path().join("out/model.safetensors").is_file(), "{tool}");
        std::fs::remove_dir_all(w.path().join("out")).unwrap();
        let _ = std::fs::remove_file(w.path().join("rep.json"));
    }
}

/// A fine-tune of `base` whose task vector has rank `r` on `modules` (all block weights when
/// empty), made by tests/ref/lowrank_ref.py (numpy): its folder (model/, want.safetensors,
/// svd.json).
fn lowrank_model(w: &Path, base: &Path, r: usize, extra: &[&str]) -> PathBuf {
    let out = w.join(format!("ft-r{r}-{}", extra.len()));
    let script = repo_root().join("tests/ref/lowrank_ref.py");
    let mut a = s(&[&p(&script), "--base", &p(base), "--out", &p(&out)]);
    a.extend(s(&["--rank", &r.to_string(), "--seed", "5"]));
    a.extend(s(extra));
    py(&args(&a), w);
    out
}

/// Checks an extract-lora report against numpy's SVD (svd.json) at rank `r`: per module ‖δ‖,
/// the top r singular values and the captured energy Σ_{i≤r} σi² / ‖δ‖², to 1e-6.
fn check_extract_report(report: &Path, svd: &Path, r: usize) -> f64 {
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
    let svd: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(svd).unwrap()).unwrap();
    let f = |v: &serde_json::Value| v.as_f64().unwrap();
    let mut worst = 1f64;
    for (name, want) in svd.as_object().unwrap() {
        let got = &rep["tensors"][name];
        let sv: Vec<f64> = want["singular_values"]
            .as_array()
            .unwrap()
            .iter()
            .map(f)
            .collect();
        let norm2 = f(&want["norm2"]);
        assert!(
            (f(&got["norm"]) - norm2.sqrt()).abs() <= 1e-6 * norm2.sqrt(),
            "{name}"
        );
        let got_sv = got["singular_values"].as_array().unwrap();
        assert_eq!(got_sv.len(), r, "{name}");
        for (a, b) in got_sv.iter().map(f).zip(&sv) {
            assert!((a - b).abs() <= 1e-6 * sv[0], "{name}: σ {a} vs {b}");
        }
        let captured = sv[..r].iter().map(|x| x * x).sum::<f64>() / norm2;
        assert!((f(&got["captured"]) - captured).abs() <= 1e-6, "{name}");
        worst = worst.min(f(&got["captured"]));
    }
    worst
}

/// `warp extract-lora` of fine-tunes whose task vectors have a known rank r = 3 (built with
/// numpy, tests/ref/lowrank_ref.py): at rank r the adapter reproduces the fine-tune to float
/// precision (materialised by warp and by numpy; captured energy 1 up to the f32 rounding of
/// the stored weights), at rank r − 1 its singular values and captured energy equal numpy's SVD;
/// a differing tensor that is no target is reported; Conv1D layout (`--fan-in-fan-out`) and
/// `--target-modules` too.
#[test]
fn extract_lora_reproduces_task_vectors_of_known_rank() {
    let w = tempfile::tempdir().unwrap();
    let (base, _) = setup(w.path(), "f32");
    let b = p(&base);
    let ft = lowrank_model(w.path(), &base, 3, &["--perturb", "model.norm.weight"]);
    let model = p(&ft.join("model"));
    for r in [3usize, 2] {
        let o = format!("ex-{r}");
        let rs = r.to_string();
        let a = [
            &model,
            "--init",
            &b,
            "--rank",
            &rs,
            "-o",
            &o,
            "--report",
            &format!("{o}.json"),
        ];
        let res = run("warp-extract-lora", &a, w.path());
        assert_eq!(res.code, 0, "{}", res.stderr);
        assert_eq!(res.stdout.trim(), o);
        assert!(
            res.stderr.contains("not LoRA targets") && res.stderr.contains("model.norm.weight")
        );
        let cfg = adapter_config(&w.path().join(&o));
        assert_eq!(
            (cfg["r"].as_u64(), cfg["lora_alpha"].as_u64()),
            (Some(r as u64), Some(r as u64))
        );
        assert_eq!(cfg["target_modules"].as_array().unwrap().len(), 14);
        let worst =
            check_extract_report(&w.path().join(format!("{o}.json")), &ft.join("svd.json"), r);
        if r == 3 {
            assert!(worst >= 1.0 - 1e-9, "{worst}");
            let conv = w.path().join("ex-conv");
            ok("warp-convert", &[&o, "-o", &p(&conv), "-q"], w.path());
            let (rel, _) = compare(&conv, &ft.join("want.safetensors"));
            assert!(rel <= 1e-6, "{rel}");
            let (rel, _) = compare(
                &materialized(w.path(), &base, &w.path().join(&o)),
                &ft.join("want.safetensors"),
            );
            assert!(rel <= 1e-6, "{rel}");
        } else {
            assert!(worst < 0.99, "{worst}");
        }
    }
}

/// `warp extract-lora` of Conv1D-stored deltas ([in, out], `--fan-in-fan-out`) of rank 3 on two
/// modules, targets named (`--target-modules`): reproduced to float precision, the SVD as
/// numpy's; bad settings refused (exit 2, one line, nothing written).
#[test]
fn extract_lora_conv1d_targets_and_bad_settings() {
    let w = tempfile::tempdir().unwrap();
    let (base, _) = setup(w.path(), "f32");
    let b = p(&base);
    let model = p(&lowrank_model(w.path(), &base, 2, &[]).join("model"));
    let mods = [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
    ];
    let ft = lowrank_model(
        w.path(),
        &base,
        3,
        &["--transposed", "--modules", mods[0], mods[1]],
    );
    let a = [
        &p(&ft.join("model")),
        "--init",
        &b,
        "--rank",
        "3",
        "--fan-in-fan-out",
    ];
    let mut a = a.to_vec();
    a.extend([
        "--target-modules",
        "q_proj,down_proj",
        "-o",
        "fifo",
        "-q",
        "--report",
        "fifo.json",
    ]);
    ok("warp-extract-lora", &a, w.path());
    let cfg = adapter_config(&w.path().join("fifo"));
    assert_eq!(cfg["fan_in_fan_out"], true);
    assert_eq!(cfg["target_modules"].as_array().unwrap().len(), 4);
    check_extract_report(&w.path().join("fifo.json"), &ft.join("svd.json"), 3);
    ok("warp-convert", &["fifo", "-o", "fifo-conv", "-q"], w.path());
    let (rel, _) = compare(&w.path().join("fifo-conv"), &ft.join("want.safetensors"));
    assert!(rel <= 1e-6, "{rel}");
    // Bad settings: exit 2, one line, nothing written.
    for (a, want) in [
        (
            vec![&model[..], "--init", &b, "--rank", "0", "-o", "bad"],
            "--rank",
        ),
        (
            vec![
                &model[..],
                "--init",
                &b,
                "--rank",
                "2",
                "--target-modules",
                "nope",
                "-o",
                "bad",
            ],
            "--target-modules",
        ),
        (
            vec![
                &model[..],
                "--init",
                &b,
                "--rank",
                "2",
                "--target-modules",
                "embed_tokens",
                "-o",
                "bad",
            ],
            "embedding",
        ),
    ] {
        let r = run("warp-extract-lora", &a, w.path());
        assert_eq!(r.code, 2, "{a:?}: {}", r.stderr);
        assert!(
            r.stderr.contains(want) && r.stderr.trim().lines().count() == 1,
            "{}",
            r.stderr
        );
        assert!(!w.path().join("bad").exists());
    }
}
