//! `warp merge RECIPE.yaml --as adapter|full|auto` (issue 25): recipes that are affine in the
//! models (linear, task_arithmetic) over PEFT LoRA adapters of one base, written as a PEFT
//! adapter of rank Σr computed in rank space. The adapter, materialised (by warp and by numpy:
//! tests/ref/lora_ref.py), equals the float64 numpy reference of the recipe applied to the
//! materialised adapters (tests/ref/recipe_affine_ref.py: its own gradients and filters) and
//! warp's `--as full` output of the same recipe. Recipes with no adapter form are refused with
//! the reason (`--as adapter`) or written full with a note (`auto`).

use std::path::{Path, PathBuf};

use crate::common::{ok, py, repo_root, run};
use crate::lora::{
    adapter_config, config, lora_tensors, materialized, p, setup, setup_low_rank, write_adapter,
};
use crate::merge_reference::{compare, values};
use serde_json::json;
use warp::io::{Checkpoint, DType};

/// base + three adapters of it without full tensors: setup_low_rank's two (rank 4 on three
/// modules; rank 2 with rsLoRA on two of them) and one of rank 3 on a module the others do
/// not train and one they do.
fn three_adapters(w: &Path) -> (PathBuf, Vec<PathBuf>) {
    let (base, mut ads) = setup_low_rank(w);
    let ck = Checkpoint::open(&base).unwrap();
    let a = w.join("lowrank-2");
    let mut cfg = config(&p(&base), 3, 6.0, false);
    cfg["modules_to_save"] = serde_json::Value::Null;
    cfg["target_modules"] = json!(["up_proj", "v_proj"]);
    let mods = [
        "model.layers.0.mlp.up_proj",
        "model.layers.1.self_attn.v_proj",
    ];
    write_adapter(&a, cfg, &lora_tensors(&ck, &mods, &[], 3, 33), DType::F32);
    ads.push(a);
    (base, ads)
}

/// `warp merge` of the recipe `text` (written to NAME.yaml) into NAME-KIND with `--as KIND`.
fn merge_as(w: &Path, name: &str, text: &str, kind: &str) -> PathBuf {
    let file = w.join(format!("{name}.yaml"));
    std::fs::write(&file, text).unwrap();
    let out = w.join(format!("{name}-{kind}"));
    ok(
        "warp",
        &["merge", &p(&file), "-o", &p(&out), "--as", kind, "-q"],
        w,
    );
    out
}

/// The numpy reference of `spec` (tests/ref/recipe_affine_ref.py) as a float64 file.
fn reference(w: &Path, name: &str, mut spec: serde_json::Value) -> PathBuf {
    let out = w.join(format!("{name}.want.safetensors"));
    spec["out"] = p(&out).into();
    spec["layers"] = 2.into();
    let file = w.join(format!("{name}.spec.json"));
    std::fs::write(&file, spec.to_string()).unwrap();
    let script = repo_root().join("tests/ref/recipe_affine_ref.py");
    py(&[&p(&script), &p(&file)], w);
    out
}

/// The worst error of the merged task vector, |δ_ours − δ_want| / rms(δ_want) per tensor with
/// δ = x − base (the deltas themselves, not drowned by the base's values), and how many tensors
/// the merge changes (those whose reference δ is above f64 rounding of the base).
fn delta_error(ours: &Path, want: &Path, base: &Path) -> (f64, usize) {
    let (o, r, b) = (
        Checkpoint::open(ours).unwrap(),
        Checkpoint::open(want).unwrap(),
        Checkpoint::open(base).unwrap(),
    );
    let (mut worst, mut changed) = (0f64, 0);
    for t in b.tensors().iter().filter(|t| t.dtype.is_float()) {
        let (_, bv) = values(&b, &t.name);
        let (_, ov) = values(&o, &t.name);
        let (_, rv) = values(&r, &t.name);
        let dr: Vec<f64> = rv.iter().zip(&bv).map(|(x, y)| x - y).collect();
        let rms = (dr.iter().map(|x| x * x).sum::<f64>() / dr.len() as f64).sqrt();
        let err = ov
            .iter()
            .zip(&bv)
            .zip(&dr)
            .map(|((x, y), d)| ((x - y) - d).abs())
            .fold(0f64, f64::max);
        let scale = (bv.iter().map(|x| x * x).sum::<f64>() / bv.len() as f64).sqrt();
        if rms <= 1e-12 * scale {
            // Unchanged by the recipe (the reference's f64 rounding aside): the output is the
            // base, to f32 rounding (the full merge rounds Σ w·base / Σ w to f32).
            assert!(
                err <= 1e-6 * scale,
                "{}: {} changed",
                ours.display(),
                t.name
            );
            continue;
        }
        changed += 1;
        worst = worst.max(err / rms);
    }
    (worst, changed)
}

/// Checks one adapter output `ad` of rank `rank` against the `--as full` output `full` of the
/// same recipe and the float64 reference `want`, which change `changes` tensors; returns the
/// worst delta error (figure).
fn check_adapter(
    w: &Path,
    base: &Path,
    [ad, full, want]: [&Path; 3],
    rank: u64,
    changes: usize,
) -> f64 {
    // PEFT's keys: a LoRA of rank Σr with scale 1 (α = r, no rsLoRA) on the base.
    let cfg = adapter_config(ad);
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(
        (cfg["r"].as_u64(), cfg["lora_alpha"].as_u64()),
        (Some(rank), Some(rank))
    );
    assert_eq!(cfg["use_rslora"], false);
    assert_eq!(cfg["fan_in_fan_out"], false);
    let base_name = std::fs::canonicalize(base).unwrap();
    assert_eq!(cfg["base_model_name_or_path"], p(&base_name));
    let targets: Vec<&str> = cfg["target_modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for m in ["q_proj", "v_proj", "down_proj", "up_proj"] {
        assert!(targets.iter().any(|t| t.ends_with(m)), "{targets:?}");
    }
    assert!(!ad.join("model.safetensors").exists());
    // The recipe in the model card and in the factors' metadata.
    let card = std::fs::read_to_string(ad.join("README.md")).unwrap();
    assert!(card.contains("merge_method:") && card.contains("library_name: peft"));
    let st = Checkpoint::open(ad.join("adapter_model.safetensors")).unwrap();
    let meta = serde_json::to_value(&st.shards[0].header.metadata).unwrap();
    let recipe: serde_json::Value =
        serde_json::from_str(meta["warp_recipe"].as_str().unwrap()).unwrap();
    assert_eq!(recipe["as"], "adapter");
    assert!(
        recipe["mergekit_recipe"]["merge_method"].is_string(),
        "{recipe}"
    );
    // Materialised by warp (convert) and by numpy: the reference and warp's full output.
    let tag = ad.file_name().unwrap().to_string_lossy().into_owned();
    let conv = w.join(format!("conv-{tag}"));
    ok("warp-convert", &[&p(ad), "-o", &p(&conv), "-q"], w);
    let (rel_full, _) = compare(&conv, full);
    let (rel_want, _) = compare(&conv, want);
    let numpy = materialized(w, base, ad);
    let (rel_numpy, _) = compare(&numpy, want);
    let (d_numpy, changed) = delta_error(&numpy, want, base);
    let (d_full, _) = delta_error(full, want, base);
    eprintln!(
        "{tag}: rank {rank}, {changed} tensors changed; relative error of the weights: \
         adapter→warp vs full {rel_full:.1e}, vs reference {rel_want:.1e}, adapter→numpy vs \
         reference {rel_numpy:.1e}; of the task vector: adapter {d_numpy:.1e}, --as full {d_full:.1e}"
    );
    // The modules the adapters train (with a nonzero weight); the other tensors are the base's.
    assert_eq!(changed, changes, "{tag}");
    assert!(d_numpy <= 1e-5, "{tag}: {d_numpy}");
    d_numpy
}

fn spec_model(path: &Path, weight: serde_json::Value) -> serde_json::Value {
    json!({"path": p(path), "weight": weight})
}

/// linear (normalize) with the base among the models, and task_arithmetic (without and with
/// normalize, λ) over three adapters (one as mergekit's BASE+ADAPTER), with a gradient over the
/// layers and `filter:` conditionals: each adapter is the reference merge, rank Σr = 9 (6 for
/// two adapters); linear without normalize whose weights sum to 1 too; the recipe's out_dtype
/// is the factors' dtype; `--dry-run` writes nothing; `auto` writes the adapter.
#[test]
// long fn: four recipes, each against its reference and its full output, then the dry run and
// the dtypes, in sequence.
fn affine_recipes_over_adapters_write_exact_adapters() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    let (base, ads) = three_adapters(w);
    let m: Vec<PathBuf> = ads.iter().map(|a| materialized(w, &base, a)).collect();
    let (b, a1, a2, a3) = (p(&base), p(&ads[0]), p(&ads[1]), p(&ads[2]));

    // linear, normalize (the default): the base 0.5, A1 a gradient over the layers, A2 by
    // filter, A3 as BASE+ADAPTER.
    let linear = format!(
        "models:\n  - model: {b}\n    parameters: {{weight: 0.5}}\n  - model: {a1}\n    \
         parameters:\n      weight: [0.2, 0.8]\n  - model: {a2}\n    parameters:\n      \
         weight:\n        - filter: self_attn\n          value: 0.6\n        - value: 0.1\n  \
         - model: {b}+{a3}\n    parameters: {{weight: 0.3}}\nmerge_method: linear\ndtype: \
         float32\n"
    );
    let filter = json!([{"filter": "self_attn", "value": 0.6}, {"value": 0.1}]);
    let want = reference(
        w,
        "linear",
        json!({"method": "linear", "normalize": true, "models": [
            spec_model(&base, json!(0.5)), spec_model(&m[0], json!([0.2, 0.8])),
            spec_model(&m[1], filter), spec_model(&m[2], json!(0.3))]}),
    );
    let (ad, full) = (
        merge_as(w, "linear", &linear, "adapter"),
        merge_as(w, "linear", &linear, "full"),
    );
    check_adapter(w, &base, [&ad, &full, &want], 9, 4);

    // task_arithmetic: base_model, A1 a gradient, A2 by filter (negative on the MLP), A3, λ.
    let ta = |normalize: bool| {
        format!(
            "models:\n  - model: {a1}\n    parameters:\n      weight: [1.0, 0.4]\n  - model: \
             {a2}\n    parameters:\n      weight:\n        - filter: mlp\n          value: \
             -0.5\n        - value: 0.7\n  - model: {b}+{a3}\n    parameters: {{weight: \
             0.5}}\nbase_model: {b}\nmerge_method: task_arithmetic\nparameters: {{lambda: \
             0.9, normalize: {normalize}}}\n"
        )
    };
    for normalize in [false, true] {
        let name = format!("ta-{normalize}");
        let want = reference(
            w,
            &name,
            json!({"method": "task_arithmetic", "base": b, "lambda": 0.9,
                "normalize": normalize, "models": [
                spec_model(&m[0], json!([1.0, 0.4])),
                spec_model(&m[1], json!([{"filter": "mlp", "value": -0.5}, {"value": 0.7}])),
                spec_model(&m[2], json!(0.5))]}),
        );
        let (ad, full) = (
            merge_as(w, &name, &ta(normalize), "adapter"),
            merge_as(w, &name, &ta(normalize), "full"),
        );
        check_adapter(w, &base, [&ad, &full, &want], 9, 4);
    }

    // linear without normalize, weights summing to 1 in every tensor (the default `auto`).
    let sum1 = format!(
        "models:\n  - model: {b}\n    parameters: {{weight: [0.5, 0.2]}}\n  - model: {a1}\n    \
         parameters: {{weight: [0.25, 0.5]}}\n  - model: {a2}\n    parameters: {{weight: \
         0.25}}\n  - model: {a3}\n    parameters: {{weight: [0.0, 0.05]}}\nmerge_method: \
         linear\nparameters: {{normalize: false}}\n"
    );
    let want = reference(
        w,
        "sum1",
        json!({"method": "linear", "normalize": false, "models": [
            spec_model(&base, json!([0.5, 0.2])), spec_model(&m[0], json!([0.25, 0.5])),
            spec_model(&m[1], json!(0.25)), spec_model(&m[2], json!([0.0, 0.05]))]}),
    );
    let (ad, full) = (
        merge_as(w, "sum1", &sum1, "auto"),
        merge_as(w, "sum1", &sum1, "full"),
    );
    assert!(ad.join("adapter_config.json").is_file());
    // A3's weight is 0 in layer 0: the one module only it trains (layer 0's up_proj) is the base's.
    check_adapter(w, &base, [&ad, &full, &want], 9, 3);

    // --dry-run: the adapter's plan, nothing written.
    let file = w.join("linear.yaml");
    let plan = ok(
        "warp",
        &["merge", &p(&file), "-o", &p(&w.join("dry")), "--dry-run"],
        w,
    );
    assert!(
        plan.contains("PEFT LoRA adapter") && plan.contains("rank 9") && plan.contains("4 module"),
        "{plan}"
    );
    assert!(!w.join("dry").exists());

    // The factors' dtype: the recipe's out_dtype (else dtype), unless --dtype says otherwise.
    let bf16 = linear.replace("dtype: float32", "out_dtype: bfloat16");
    let out = merge_as(w, "bf16", &bf16, "adapter");
    let dtypes = |d: &Path| -> Vec<DType> {
        let ck = Checkpoint::open(d.join("adapter_model.safetensors")).unwrap();
        ck.tensors().iter().map(|t| t.dtype).collect()
    };
    assert!(dtypes(&out).iter().all(|d| *d == DType::BF16));
    let file = w.join("bf16.yaml");
    let f32_out = w.join("bf16-as-f32");
    ok(
        "warp",
        &[
            "merge",
            &p(&file),
            "-o",
            &p(&f32_out),
            "--dtype",
            "float32",
            "-q",
        ],
        w,
    );
    assert!(dtypes(&f32_out).iter().all(|d| *d == DType::F32));
}

/// Recipes with no adapter form: `--as adapter` exits 2 with one line naming why and writes
/// nothing; the default `auto` writes a full checkpoint and says why on stderr.
#[test]
// long fn: the table of refused recipes with the words each message must hold, then the loop
// over it (adapter refused, auto falls back).
fn recipes_without_an_adapter_form_are_refused_or_written_full() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    let (base, ads) = setup_low_rank(w);
    let (_, with_full) = setup(w, "f32");
    let other = base.parent().unwrap().join("p1");
    let (b, a1, a2) = (p(&base), p(&ads[0]), p(&ads[1]));
    let gta = |method: &str, density: f64| {
        format!(
            "models:\n  - model: {a1}\n    parameters: {{weight: 0.5, density: {density}}}\n  \
             - model: {a2}\n    parameters: {{weight: 0.5, density: {density}}}\nbase_model: \
             {b}\nmerge_method: {method}\n"
        )
    };
    let two = |x: &str, wx: &str, y: &str, wy: &str, extra: &str| {
        format!(
            "models:\n  - model: {x}\n    parameters: {{weight: {wx}}}\n  - model: {y}\n    \
             parameters: {{weight: {wy}}}\nmerge_method: linear\n{extra}"
        )
    };
    let cases = [
        (
            gta("ties", 1.0),
            vec!["'ties' is not affine", "elects a sign"],
        ),
        (
            gta("dare_linear", 0.5),
            vec!["'dare_linear'", "drops elements"],
        ),
        (
            two(
                &a1,
                "[0.5, 1.0]",
                &a2,
                "0.5",
                "parameters: {normalize: false}\n",
            ),
            vec!["model.layers.1.", "sum to 1.5", "normalize: false"],
        ),
        (
            two(&a1, "0.5", &p(&other), "0.5", ""),
            vec!["p1", "is not an adapter of the base"],
        ),
        (
            two(&p(&with_full[0]), "0.5", &a2, "0.5", ""),
            vec!["modules_to_save"],
        ),
        (
            format!(
                "slices:\n  - sources:\n      - model: {a1}\n        layer_range: [0, 1]\n      \
                 - model: {a2}\n        layer_range: [0, 1]\nmerge_method: linear\nparameters: \
                 {{weight: 0.5}}\n"
            ),
            vec![
                "lack the base's tensor 'model.layers.1.",
                "leave out layers",
            ],
        ),
    ];
    for (i, (recipe, want)) in cases.iter().enumerate() {
        let file = w.join(format!("bad{i}.yaml"));
        std::fs::write(&file, recipe).unwrap();
        let out = w.join(format!("bad{i}"));
        let r = run(
            "warp",
            &["merge", &p(&file), "-o", &p(&out), "--as", "adapter"],
            w,
        );
        assert_eq!(r.code, 2, "{recipe}: {}", r.stderr);
        assert!(r.stderr.contains("--as adapter"), "{}", r.stderr);
        for x in want {
            assert!(r.stderr.contains(x), "lacks '{x}': {}", r.stderr);
        }
        assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
        assert!(!out.exists());
        // auto: a full checkpoint, and a note with the same reason.
        let r = run("warp", &["merge", &p(&file), "-o", &p(&out)], w);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(
            r.stderr.contains("note: writing a full checkpoint") && r.stderr.contains(want[0]),
            "{}",
            r.stderr
        );
        assert!(
            out.join("model.safetensors").is_file() && !out.join("adapter_config.json").exists()
        );
    }
    // No adapter at all: `auto` is silent, `adapter` refuses.
    let file = w.join("plain.yaml");
    std::fs::write(&file, two(&b, "0.5", &p(&other), "0.5", "")).unwrap();
    let r = run("warp", &["merge", &p(&file), "-o", &p(&w.join("plain"))], w);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("note:"), "{}", r.stderr);
    let r = run(
        "warp",
        &[
            "merge",
            &p(&file),
            "-o",
            &p(&w.join("plain2")),
            "--as",
            "adapter",
        ],
        w,
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("no input is a PEFT LoRA adapter"),
        "{}",
        r.stderr
    );
    assert!(!w.join("plain2").exists());
}

/// `merge_method: warp_slerp` over adapter folders merges in rank space like `warp slerp`: the
/// default `auto` writes, for every η, the factors `warp slerp --as adapter` writes.
#[test]
fn warp_slerp_recipes_over_adapters_write_the_adapters_of_warp_slerp() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    let (base, ads) = setup_low_rank(w);
    let (b, a1, a2) = (p(&base), p(&ads[0]), p(&ads[1]));
    let text = format!(
        "models:\n  - model: {a1}\n  - model: {a2}\nbase_model: {b}\nmerge_method: warp_slerp\n\
         parameters: {{etas: [0.5, 1.0], angle: layer}}\n"
    );
    let ours = merge_as(w, "wslerp", &text, "auto");
    let args = [
        a1.as_str(),
        &a2,
        "--init",
        &b,
        "--eta",
        "0.5",
        "--eta",
        "1",
        "--angle",
        "layer",
        "--as",
        "adapter",
        "-q",
        "-o",
        "slerp",
    ];
    ok("warp-slerp", &args, w);
    for eta in ["eta-0.50", "eta-1.00"] {
        let f = |d: &Path| Checkpoint::open(d.join(eta).join("adapter_model.safetensors")).unwrap();
        let (x, y) = (f(&ours), f(&w.join("slerp")));
        assert_eq!(x.tensors().len(), 6, "{eta}");
        for t in x.tensors() {
            assert_eq!(values(&x, &t.name), values(&y, &t.name), "{eta} {}", t.name);
        }
        assert_eq!(adapter_config(&ours.join(eta))["r"], 6);
    }
}
