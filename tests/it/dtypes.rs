//! Inputs of mixed float dtypes (issue 23): f32 policies on a bf16 init, dtypes mixed tensor by
//! tensor inside one checkpoint, `--dtype` overriding the output dtype. Every merge tool (SLERP,
//! LERP, LITI, EMA) against the float64 numpy reference (tests/ref/merge_ref.py), which reads
//! each input in its own dtype; outputs are checked to keep the init's dtype tensor by tensor.

use crate::common;
use crate::merge_reference::{compare, compare_reports, make, models, reference, s, Case};
use common::*;

use std::path::Path;
use warp::io::{Checkpoint, DType};

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The values of a float tensor as f32, decoded here (not by warp) from its stored bytes.
fn decode(dtype: DType, b: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        DType::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        d => panic!("decode {d}"),
    }
}

/// Encodes f32 values as `dtype` with the `half` crate (round to nearest even).
fn encode(dtype: DType, v: &[f32]) -> Vec<u8> {
    match dtype {
        DType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::BF16 => v
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect(),
        DType::F16 => v
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect(),
        d => panic!("encode {d}"),
    }
}

/// A copy of checkpoint folder `src` as `dst` (companion files copied, one model.safetensors)
/// whose float tensors are stored in `pick(name)`'s dtype (None: as they are). Written here
/// byte by byte, independently of warp's writer.
pub(crate) fn recast(src: &Path, dst: &Path, pick: &dyn Fn(&str) -> Option<DType>) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_file() && !name.ends_with(".safetensors") && !name.ends_with(".index.json") {
            std::fs::copy(e.path(), dst.join(&name)).unwrap();
        }
    }
    let ck = Checkpoint::open(src).unwrap();
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for t in ck.tensors() {
        let bytes = ck.bytes(t, 0..t.nbytes);
        let (dtype, stored) = match pick(&t.name) {
            Some(d) if t.dtype.is_float() && d != t.dtype => {
                (d, encode(d, &decode(t.dtype, bytes)))
            }
            _ => (t.dtype, bytes.to_vec()),
        };
        let begin = data.len();
        data.extend_from_slice(&stored);
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": dtype.name(), "shape": t.shape, "data_offsets": [begin, data.len()]}),
        );
    }
    raw_file(
        &dst.join("model.safetensors"),
        &serde_json::to_string(&header).unwrap(),
        &data,
    );
}

/// Asserts that every tensor of `out` has the dtype `want(name, dtype in init)` gives.
fn assert_dtypes(out: &Path, init: &Path, want: &dyn Fn(&str, DType) -> DType) {
    let (o, i) = (
        Checkpoint::open(out).unwrap(),
        Checkpoint::open(init).unwrap(),
    );
    assert_eq!(o.tensors().len(), i.tensors().len());
    for t in o.tensors() {
        let it = i.get(&t.name).unwrap();
        assert_eq!(
            t.dtype,
            want(&t.name, it.dtype),
            "{}: {}",
            out.display(),
            t.name
        );
    }
}

fn f32_case(seed: u64) -> Case<'static> {
    Case {
        dtype: "f32",
        m: 2,
        shards: 1,
        kind: "random",
        seed,
    }
}

/// The README's example: f32 policies (as `warp rl` saves them) merged on a bf16 SFT model.
/// Outputs are bf16 like the init (float tensors; the I64 one is copied), within 1 bf16 ulp of
/// the float64 reference; the angles equal the reference's; `--dtype f32` writes f32 within
/// 1e-6 relative; the dry run names the inputs' dtypes.
#[test]
fn slerp_of_f32_policies_on_a_bf16_init_matches_the_reference() {
    let w = tempfile::tempdir().unwrap();
    let dir = w.path().join("in");
    let script = repo_root().join("tests/ref/make_ckpt.py");
    py(
        &[
            script.to_str().unwrap(),
            "--out",
            dir.to_str().unwrap(),
            "--m",
            "2",
            "--dtype",
            "f32",
            "--seed",
            "31",
            "--with-int",
        ],
        w.path(),
    );
    let ms = models(&dir, 2);
    let init = w.path().join("sft-bf16");
    recast(&dir.join("init"), &init, &|_| Some(DType::BF16));
    let init_s = init.to_string_lossy().into_owned();

    let mut ours = ms.clone();
    ours.extend(s(&[
        "--init",
        &init_s,
        "--eta",
        "0.3",
        "--eta",
        "1",
        "-o",
        "ours",
        "-q",
        "--report",
        "ours.json",
    ]));
    ok("warp-slerp", &args(&ours), w.path());
    let mut ra = s(&["slerp", "--init", &init_s, "--eta", "0.3", "--eta", "1"]);
    ra.extend(ms.clone());
    let r = reference(w.path(), &ra);
    for n in ["eta-0.30", "eta-1.00"] {
        let out = w.path().join("ours").join(n);
        let (_, ulp) = compare(&out, &r.join(format!("{n}.safetensors")));
        assert!(ulp <= 1, "{n}: {ulp}");
        assert_dtypes(&out, &init, &|_, d| d);
    }
    compare_reports(&w.path().join("ours.json"), &r.join("report.json"));
    // The bf16 init's config is copied as it is (its torch_dtype).
    assert_eq!(
        std::fs::read(w.path().join("ours/eta-0.30/config.json")).unwrap(),
        std::fs::read(init.join("config.json")).unwrap()
    );

    // --dtype f32: every float tensor f32, the integer one unchanged.
    let mut ours32 = ms.clone();
    ours32.extend(s(&[
        "--init", &init_s, "--eta", "0.3", "--dtype", "f32", "-o", "ours32", "-q",
    ]));
    ok("warp-slerp", &args(&ours32), w.path());
    let (rel, _) = compare(&w.path().join("ours32"), &r.join("eta-0.30.safetensors"));
    assert!(rel <= 1e-6, "{rel}");
    assert_dtypes(&w.path().join("ours32"), &init, &|_, d| {
        if d.is_float() {
            DType::F32
        } else {
            d
        }
    });

    // The plan shows where the inputs' dtypes differ.
    let mut dry = ms.clone();
    dry.extend(s(&["--init", &init_s, "-o", "x", "--dry-run"]));
    let table = ok("warp-slerp", &args(&dry), w.path());
    let line = table
        .lines()
        .find(|l| l.starts_with("model.embed_tokens.weight"))
        .unwrap();
    assert!(line.contains("mixed") && line.contains("BF16"), "{line}");
    let pos = table
        .lines()
        .find(|l| l.starts_with("model.position_ids"))
        .unwrap();
    assert!(pos.contains("I64") && !pos.contains("mixed"), "{pos}");
    dry.push("--json".into());
    let plan: serde_json::Value =
        serde_json::from_str(&ok("warp-slerp", &args(&dry), w.path())).unwrap();
    let embed = plan["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "model.embed_tokens.weight")
        .unwrap();
    assert_eq!(
        embed["in_dtypes"],
        serde_json::json!(["BF16", "F32", "F32"])
    );
    assert!(!w.path().join("x").exists());
}

/// Dtypes mixed tensor by tensor inside the inputs (bf16, f16 and f32 tensors in one
/// checkpoint, another mix in a policy): SLERP, LERP, LITI and EMA match the reference, and
/// every output tensor has the init's (first input's) dtype of that tensor.
#[test]
// long fn: one mixed-dtype fixture through each merge tool in turn, against the reference.
fn dtypes_mixed_tensor_by_tensor_in_every_merge_tool() {
    let w = tempfile::tempdir().unwrap();
    let dir = make(w.path(), &f32_case(32));
    let ms = models(&dir, 2);
    // The init: attention in bf16, the MLP in f16, the rest f32 (tied to a layer pattern, so
    // both kinds meet inside each transformer block and the per-block angle).
    let init = w.path().join("init-mixed");
    recast(&dir.join("init"), &init, &|n| {
        if n.contains("self_attn") {
            Some(DType::BF16)
        } else if n.contains("mlp") {
            Some(DType::F16)
        } else {
            None
        }
    });
    // A policy with another mix: bf16 embeddings and layer 1.
    let p1 = w.path().join("p1-mixed");
    recast(Path::new(&ms[0]), &p1, &|n| {
        (n.contains("embed") || n.contains("layers.1.")).then_some(DType::BF16)
    });
    let (init_s, p1_s) = (
        init.to_string_lossy().into_owned(),
        p1.to_string_lossy().into_owned(),
    );
    let pols = vec![p1_s.clone(), ms[1].clone()];
    let same = |_: &str, d: DType| d;

    for angle in ["tensor", "layer"] {
        let o = format!("slerp-{angle}");
        let mut a = pols.clone();
        a.extend(s(&[
            "--init", &init_s, "--angle", angle, "--eta", "0.5", "--eta", "1", "-q", "-o", &o,
            "--report",
        ]));
        a.push(format!("{o}.json"));
        ok("warp-slerp", &args(&a), w.path());
        let mut ra = s(&[
            "slerp", "--init", &init_s, "--angle", angle, "--eta", "0.5", "--eta", "1",
        ]);
        ra.extend(pols.clone());
        let r = reference(w.path(), &ra);
        for n in ["eta-0.50", "eta-1.00"] {
            let out = w.path().join(&o).join(n);
            compare(&out, &r.join(format!("{n}.safetensors")));
            assert_dtypes(&out, &init, &same);
        }
        compare_reports(&w.path().join(format!("{o}.json")), &r.join("report.json"));
    }

    let mut a = pols.clone();
    a.extend(s(&[
        "--init", &init_s, "--weight", "0.7", "--weight", "0.3", "-q", "-o", "lerp",
    ]));
    ok("warp-lerp", &args(&a), w.path());
    let mut ra = s(&["lerp", "--init", &init_s]);
    ra.extend(pols.clone());
    ra.extend(s(&["--weights", "0.7", "0.3"]));
    let r = reference(w.path(), &ra);
    compare(&w.path().join("lerp"), &r.join("merged.safetensors"));
    assert_dtypes(&w.path().join("lerp"), &init, &same);

    // LITI of the mixed init toward the f32 policy 2; η = 0 copies the init.
    ok(
        "warp-liti",
        &[
            "--init", &init_s, "--merged", &ms[1], "--eta", "0", "--eta", "0.4", "-q", "-o", "liti",
        ],
        w.path(),
    );
    let r = reference(
        w.path(),
        &s(&[
            "liti", "--init", &init_s, "--merged", &ms[1], "--eta", "0", "--eta", "0.4",
        ]),
    );
    for n in ["eta-0.00", "eta-0.40"] {
        let out = w.path().join("liti").join(n);
        compare(&out, &r.join(format!("{n}.safetensors")));
        assert_dtypes(&out, &init, &same);
    }
    assert_same_tensors(&w.path().join("liti/eta-0.00"), &init);

    // EMA: the first checkpoint (the mixed policy) gives the dtypes.
    ok(
        "warp-ema",
        &["--mu", "0.25", &p1_s, &init_s, &ms[1], "-q", "-o", "ema"],
        w.path(),
    );
    let r = reference(
        w.path(),
        &s(&["ema", "--mu", "0.25", &p1_s, &init_s, &ms[1]]),
    );
    compare(&w.path().join("ema"), &r.join("ema.safetensors"));
    assert_dtypes(&w.path().join("ema"), &p1, &same);

    // --dtype bf16 rounds every float tensor once, from the f32 result.
    let mut a = pols.clone();
    a.extend(s(&[
        "--init",
        &init_s,
        "--dtype",
        "bf16",
        "-q",
        "-o",
        "slerp-bf16",
    ]));
    ok("warp-slerp", &args(&a), w.path());
    let mut ra = s(&["slerp", "--init", &init_s]);
    ra.extend(pols.clone());
    let r = reference(w.path(), &ra);
    let (_, ulp) = compare(&w.path().join("slerp-bf16"), &r.join("merged.safetensors"));
    assert!(ulp <= 1, "{ulp}");
    assert_dtypes(&w.path().join("slerp-bf16"), &init, &|_, _| DType::BF16);
}

/// Non-float tensors are copied, so they must have one dtype (and one value) everywhere; a
/// tensor that is float in one input and integer in another is refused too. Nothing is written.
#[test]
fn non_float_tensors_of_another_dtype_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let file = |path: &str, ids: &str, ids_bytes: usize| {
        let h = format!(
            r#"{{"ids":{{"dtype":"{ids}","shape":[1],"data_offsets":[0,{ids_bytes}]}},"w":{{"dtype":"F32","shape":[1],"data_offsets":[{ids_bytes},{}]}}}}"#,
            ids_bytes + 4
        );
        let mut data = vec![0u8; ids_bytes];
        data[0] = 7;
        data.extend_from_slice(&1f32.to_le_bytes());
        raw_file(&p.join(path), &h, &data);
    };
    file("i64.safetensors", "I64", 8);
    file("i32.safetensors", "I32", 4);
    file("f32.safetensors", "F32", 4);
    for other in ["i32.safetensors", "f32.safetensors"] {
        let err = fails(
            "warp-slerp",
            &[
                "i64.safetensors",
                other,
                "--init",
                "i64.safetensors",
                "-o",
                "out",
            ],
            p,
            &[other, "tensor 'ids'", "but I64", "non-float"],
        );
        assert!(!err.contains("'w'"), "{err}");
        assert!(!p.join("out").exists());
    }
}
