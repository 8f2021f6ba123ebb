//! `warp merge RECIPE.yaml` against mergekit 0.1.5 (tests/ref/mergekit_ref.py, the venv of
//! scripts/setup-mergekit.sh) on checkpoints transformers makes (sharded bf16; llama with untied
//! and qwen2 with tied embeddings; gradients and filters in the recipes), the random methods'
//! statistics and reproducibility, and bad recipes.
//!
//! The tests that need mergekit say "skipped" when WARP_MERGEKIT_PYTHON is not set, unless
//! WARP_REQUIRE_MERGEKIT is (scripts/test sets both).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::{json, Value};
use warp::io::dtype::decode_f32;
use warp::io::Checkpoint;

use crate::common::{f32_file, fails, ok, run};

fn mergekit_python() -> Option<String> {
    match std::env::var("WARP_MERGEKIT_PYTHON") {
        Ok(p) => Some(p),
        Err(_) if std::env::var_os("WARP_REQUIRE_MERGEKIT").is_some() => {
            panic!("WARP_REQUIRE_MERGEKIT is set but WARP_MERGEKIT_PYTHON is not: source scripts/setup-mergekit.sh")
        }
        Err(_) => {
            eprintln!("merge_recipe: skipped (WARP_MERGEKIT_PYTHON not set: source scripts/setup-mergekit.sh)");
            None
        }
    }
}

fn mk_ref(py: &str, req: &Value) -> Value {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(py)
        .arg(crate::common::repo_root().join("tests/ref/mergekit_ref.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run $WARP_MERGEKIT_PYTHON");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(req.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "mergekit_ref.py {} failed:\n{}",
        req["op"],
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The test models, made once: llama-{base,ft1,ft2,ft3} (untied), qwen-{base,ft1,ft2} (tied).
fn models(py: &str) -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let fam = |name: &str, ty: &str, tied: bool, ft: u32, seed: u32| {
            json!({"name": name, "finetunes": ft, "seed": seed, "shard": "40KB", "sigma": 0.01,
                   "config": {"model_type": ty, "vocab_size": 96, "hidden_size": 32,
                              "intermediate_size": 64, "num_hidden_layers": 4,
                              "num_attention_heads": 4, "num_key_value_heads": 2,
                              "tie_word_embeddings": tied}})
        };
        mk_ref(
            py,
            &json!({"op": "models", "dir": dir, "families": [
                fam("llama", "llama", false, 3, 1), fam("qwen", "qwen2", true, 2, 2)]}),
        );
        dir
    })
}

struct Case {
    name: &'static str,
    recipe: String,
    /// Selection thresholds (TIES, breadcrumbs): base, models, densities, gammas.
    ties: Option<Value>,
}

fn recipe(m: &Path, body: &str) -> String {
    body.replace("{M}", &m.display().to_string())
}

fn cases(m: &Path) -> Vec<Case> {
    let c = |name, body: &str, ties: Option<Value>| Case {
        name,
        recipe: recipe(m, body),
        ties,
    };
    let sel = |fam: &str, models: &[&str], d: &[f64], g: Option<&[f64]>| {
        let dir = |n: &str| m.join(format!("{fam}-{n}"));
        Some(
            json!({"base": dir("base"), "models": models.iter().map(|n| dir(n)).collect::<Vec<_>>(),
                    "density": d, "gamma": g.map_or(vec![Value::Null; d.len()], |g| g.iter().map(|x| json!(x)).collect())}),
        )
    };
    vec![
        c("linear", "models:\n  - model: {M}/llama-ft1\n    parameters: {weight: [0.2, 1.0]}\n  - model: {M}/llama-ft2\n    parameters:\n      weight: [{filter: mlp, value: 0.7}, {value: 0.4}]\n  - model: {M}/llama-ft3\n    parameters: {weight: 0.3}\nmerge_method: linear\ndtype: float32\nout_dtype: bfloat16\n", None),
        c("task_arithmetic", "models:\n  - model: {M}/qwen-ft1\n    parameters: {weight: 0.6}\n  - model: {M}/qwen-ft2\n    parameters: {weight: [{filter: self_attn, value: [0.1, 0.9]}, {value: 0.5}]}\nbase_model: {M}/qwen-base\nmerge_method: task_arithmetic\nparameters: {lambda: 0.8}\ndtype: float32\nout_dtype: bfloat16\n", None),
        c("ties", "models:\n  - model: {M}/llama-ft1\n    parameters: {weight: [0.2, 0.8], density: 0.5}\n  - model: {M}/llama-ft2\n    parameters:\n      weight: [{filter: self_attn, value: 0.3}, {value: 0.6}]\n      density: 0.7\nbase_model: {M}/llama-base\nmerge_method: ties\ndtype: float32\nout_dtype: bfloat16\n", sel("llama", &["ft1", "ft2"], &[0.5, 0.7], None)),
        c("breadcrumbs", "models:\n  - model: {M}/qwen-ft1\n    parameters: {weight: 0.5, density: 0.6, gamma: 0.05}\n  - model: {M}/qwen-ft2\n    parameters: {weight: [0.3, 0.7], density: 0.8, gamma: 0.02}\nbase_model: {M}/qwen-base\nmerge_method: breadcrumbs\ndtype: float32\nout_dtype: bfloat16\n", sel("qwen", &["ft1", "ft2"], &[0.6, 0.8], Some(&[0.05, 0.02]))),
        c("breadcrumbs_ties", "models:\n  - model: {M}/llama-ft1\n    parameters: {weight: 0.4, density: 0.5}\n  - model: {M}/llama-ft2\n    parameters: {weight: 0.4, density: 0.5}\n  - model: {M}/llama-ft3\n    parameters: {weight: 0.4, density: 0.5}\nbase_model: {M}/llama-base\nmerge_method: breadcrumbs_ties\nparameters: {gamma: 0.1, normalize: true}\ndtype: float32\nout_dtype: bfloat16\n", sel("llama", &["ft1", "ft2", "ft3"], &[0.5, 0.5, 0.5], Some(&[0.1, 0.1, 0.1]))),
        c("dare_ties", "models:\n  - model: {M}/llama-ft1\n    parameters: {weight: 0.5}\n  - model: {M}/llama-ft2\n    parameters: {weight: [0.1, 0.9]}\nbase_model: {M}/llama-base\nmerge_method: dare_ties\nparameters: {density: 1.0}\ndtype: float32\nout_dtype: bfloat16\n", None),
        c("dare_linear", "models:\n  - model: {M}/qwen-ft1\n    parameters: {weight: 0.5, density: 1.0}\n  - model: {M}/qwen-ft2\n    parameters: {weight: 0.5, density: 1.0}\nbase_model: {M}/qwen-base\nmerge_method: dare_linear\nparameters: {normalize: true}\ndtype: float32\nout_dtype: bfloat16\n", None),
        c("della", "models:\n  - model: {M}/llama-ft1\n    parameters: {weight: 0.6}\n  - model: {M}/llama-ft2\n    parameters: {weight: [0.2, 0.8]}\nbase_model: {M}/llama-base\nmerge_method: della\nparameters: {density: 1.0, epsilon: 0.1}\ndtype: float32\nout_dtype: bfloat16\n", None),
        c("della_linear", "models:\n  - model: {M}/qwen-ft1\n    parameters: {weight: 0.5}\n  - model: {M}/qwen-ft2\n    parameters: {weight: 0.5}\nbase_model: {M}/qwen-base\nmerge_method: della_linear\nparameters: {density: 1.0, lambda: 1.5}\ndtype: float32\nout_dtype: bfloat16\n", None),
        c("slerp", "models:\n  - model: {M}/llama-base\n  - model: {M}/llama-ft1\nbase_model: {M}/llama-base\nmerge_method: slerp\nparameters:\n  t:\n    - filter: self_attn\n      value: [0, 0.5, 0.3, 0.7, 1]\n    - filter: mlp\n      value: [1, 0.5, 0.7, 0.3, 0]\n    - value: 0.5\ndtype: float32\nout_dtype: bfloat16\n", None),
        c("nuslerp", "models:\n  - model: {M}/qwen-ft1\n    parameters: {weight: 0.3}\n  - model: {M}/qwen-ft2\n    parameters: {weight: 0.7}\nbase_model: {M}/qwen-base\nmerge_method: nuslerp\ndtype: float32\nout_dtype: bfloat16\n", None),
        c("multislerp", "models:\n  - model: {M}/llama-ft1\n    parameters: {weight: 0.5}\n  - model: {M}/llama-ft2\n    parameters: {weight: 0.3}\n  - model: {M}/llama-ft3\n    parameters: {weight: 0.2}\nbase_model: {M}/llama-base\nmerge_method: multislerp\ndtype: float32\nout_dtype: bfloat16\n", None),
        c("karcher", "models:\n  - model: {M}/qwen-ft1\n  - model: {M}/qwen-ft2\n  - model: {M}/qwen-base\nmerge_method: karcher\nparameters: {max_iter: 20, tol: 1.0e-6}\ndtype: float32\nout_dtype: bfloat16\n", None),
        c("model_stock", "models:\n  - model: {M}/llama-ft1\n  - model: {M}/llama-ft2\n  - model: {M}/llama-ft3\nbase_model: {M}/llama-base\nmerge_method: model_stock\ndtype: float32\nout_dtype: bfloat16\n", None),
        c("sce", "models:\n  - model: {M}/llama-ft1\n  - model: {M}/llama-ft2\n  - model: {M}/llama-ft3\nbase_model: {M}/llama-base\nmerge_method: sce\nparameters: {select_topk: 1.0}\ndtype: float32\nout_dtype: bfloat16\n", None),
        c("sce_topk", "models:\n  - model: {M}/qwen-ft1\n  - model: {M}/qwen-ft2\nbase_model: {M}/qwen-base\nmerge_method: sce\nparameters: {select_topk: 0.4}\ndtype: float32\nout_dtype: bfloat16\n", Some(json!({"base": m.join("qwen-base"), "models": [m.join("qwen-ft1"), m.join("qwen-ft2")], "density": [], "gamma": [], "variance": 0.4}))),
        c("nearswap", "models:\n  - model: {M}/qwen-base\n  - model: {M}/qwen-ft1\nbase_model: {M}/qwen-base\nmerge_method: nearswap\nparameters: {t: 0.004}\ndtype: float32\nout_dtype: bfloat16\n", None),
        c("passthrough", "slices:\n  - sources:\n      - model: {M}/llama-ft1\n        layer_range: [0, 3]\n  - sources:\n      - model: {M}/llama-ft1\n        layer_range: [1, 4]\nmerge_method: passthrough\ndtype: bfloat16\n", None),
    ]
}

/// Every deterministic method equals mergekit's output within 1 bf16 ulp per element (the
/// selection methods: except elements of equal magnitude at a threshold, counted and bounded).
#[test]
fn methods_equal_mergekit() {
    let Some(py) = mergekit_python() else { return };
    let m = models(&py);
    let work = tempfile::tempdir().unwrap();
    let cases = cases(m);
    let mut jobs = Vec::new();
    let mut pairs = Vec::new();
    for c in &cases {
        let file = work.path().join(format!("{}.yaml", c.name));
        std::fs::write(&file, &c.recipe).unwrap();
        let out = work.path().join(format!("{}-warp", c.name));
        let reference = work.path().join(format!("{}-ref", c.name));
        ok(
            "warp",
            &[
                "merge",
                file.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "-q",
            ],
            work.path(),
        );
        jobs.push(json!({"recipe": c.recipe, "out": reference}));
        pairs.push(json!({"warp": out, "ref": reference, "ties": c.ties}));
    }
    mk_ref(&py, &json!({"op": "merge", "jobs": jobs}));
    let res = mk_ref(&py, &json!({"op": "compare", "pairs": pairs}));
    let mut report = String::new();
    for (c, r) in cases.iter().zip(res.as_array().unwrap()) {
        report += &format!("{:<18} {r}\n", c.name);
    }
    eprintln!("{report}");
    for (c, r) in cases.iter().zip(res.as_array().unwrap()) {
        assert!(
            r["mismatch"].as_array().unwrap().is_empty(),
            "{}: {r}",
            c.name
        );
        // Equal keys at a threshold are a small part of the tensor.
        let tied = r["tied"].as_u64().unwrap() as f64;
        assert!(
            tied <= 0.05 * r["elements"].as_u64().unwrap() as f64,
            "{}: {r}",
            c.name
        );
        if c.name == "sce_topk" {
            // Its per-model weights (mean squares after selection) are f64 sums here, f32 means
            // in mergekit, so results that cancel to nearly zero differ by f32 rounding: measured
            // in ulps of max(|value|, |base value|), ≤ 2.
            let u = r["max_ulps_of_base"].as_f64().unwrap();
            assert!(u <= 2.0, "{}: {r}\n{report}", c.name);
            continue;
        }
        // multislerp: its coefficients come from the Gram matrix in f64, mergekit's from
        // normalised f32 tensors (a few f32 roundings more on each element): ≤ 2 ulps.
        let tol = if c.name == "multislerp" { 2.0 } else { 1.0 };
        assert!(
            r["max_ulps"].as_f64().unwrap() <= tol,
            "{}: {r}\n{report}",
            c.name
        );
    }
    // Passthrough copies: the very bytes of mergekit's output, 6 layers, and the same logits.
    let (w, r) = (
        work.path().join("passthrough-warp"),
        work.path().join("passthrough-ref"),
    );
    crate::common::assert_same_tensors(&w, &r);
    let l = mk_ref(
        &py,
        &json!({"op": "logits", "dirs": [w, r], "ids": [[1, 5, 9, 17, 33, 65, 90, 3]]}),
    );
    assert_eq!(l["layers"], json!([6, 6]), "{l}");
    assert_eq!(l["max_abs_diff"].as_f64().unwrap(), 0.0, "{l}");
}

fn floats(ck: &Checkpoint, name: &str) -> Vec<f32> {
    let t = ck.get(name).unwrap();
    let mut out = vec![0f32; t.numel() as usize];
    decode_f32(t.dtype, ck.bytes(t, 0..t.nbytes), &mut out);
    out
}

/// DARE and DELLA: the kept fraction per tensor is within binomial bounds of the density
/// (DELLA: more kept among the larger magnitudes of each row), the rescaling is exact
/// (Σ|δ| / Σ|kept δ|), and the output is the same bytes for any threads or budget.
#[test]
fn random_methods_keep_their_density_rescale_and_reproduce() {
    let Some(py) = mergekit_python() else { return };
    let m = models(&py);
    for (method, extra) in [("dare_linear", ""), ("della_linear", ", epsilon: 0.2")] {
        let work = tempfile::tempdir().unwrap();
        let file = work.path().join("r.yaml");
        let body = format!("models:\n  - model: {{M}}/llama-ft1\n    parameters: {{weight: 1.0, density: 0.4{extra}}}\nbase_model: {{M}}/llama-base\nmerge_method: {method}\ndtype: float32\nout_dtype: float32\n");
        std::fs::write(&file, recipe(m, &body)).unwrap();
        let f = file.to_str().unwrap();
        let mut outs = Vec::new();
        for (i, extra) in [
            &["--threads", "1"][..],
            &["--threads", "2", "--memory-budget", "1"],
            &["--threads", "2"],
            &["--threads", "2", "--seed", "7"],
        ]
        .iter()
        .enumerate()
        {
            let out = work.path().join(format!("o{i}"));
            let mut args = vec!["merge", f, "-o", out.to_str().unwrap(), "-q"];
            args.extend_from_slice(extra);
            ok("warp", &args, work.path());
            outs.push(out);
        }
        crate::common::assert_same_tensors(&outs[0], &outs[1]);
        crate::common::assert_same_tensors(&outs[0], &outs[2]);
        let base = Checkpoint::open(m.join("llama-base")).unwrap();
        let ft = Checkpoint::open(m.join("llama-ft1")).unwrap();
        let out = Checkpoint::open(&outs[0]).unwrap();
        let other_seed = Checkpoint::open(&outs[3]).unwrap();
        let mut differs = false;
        let (mut kept_big, mut kept_small, mut big, mut small) = (0f64, 0f64, 0f64, 0f64);
        for t in base.tensors() {
            let (b, x, o) = (
                floats(&base, &t.name),
                floats(&ft, &t.name),
                floats(&out, &t.name),
            );
            differs |= floats(&other_seed, &t.name) != o;
            let d: Vec<f32> = x.iter().zip(&b).map(|(x, b)| x - b).collect();
            let live: Vec<usize> = (0..d.len()).filter(|&i| d[i] != 0.0).collect();
            let kept: Vec<bool> = (0..d.len()).map(|i| d[i] != 0.0 && o[i] != b[i]).collect();
            let n = live.len() as f64;
            let k = kept.iter().filter(|&&k| k).count() as f64;
            // Binomial(n, 0.4) (DELLA's per-element probabilities average 0.4 too and vary
            // less): 5σ.
            let sd = (n * 0.4 * 0.6).sqrt();
            assert!(
                (k - 0.4 * n).abs() <= 5.0 * sd + 1.0,
                "{method} {}: kept {k} of {n}",
                t.name
            );
            let before: f64 = live.iter().map(|&i| d[i].abs() as f64).sum();
            let after: f64 = live
                .iter()
                .filter(|&&i| kept[i])
                .map(|&i| d[i].abs() as f64)
                .sum();
            let s = before as f32 / after as f32;
            for i in 0..d.len() {
                let want = if kept[i] { b[i] + d[i] * s } else { b[i] };
                assert_eq!(o[i], want, "{method} {} element {i}", t.name);
            }
            // Per row: the larger half of the magnitudes against the smaller half.
            let cols = if t.shape.len() == 2 {
                t.shape[1]
            } else {
                d.len()
            };
            let h = halves(&d, &kept, cols);
            (kept_big, kept_small, big, small) =
                (kept_big + h.0, kept_small + h.1, big + h.2, small + h.3);
        }
        assert!(differs, "{method}: another seed gave the same masks");
        let (fb, fs) = (kept_big / big, kept_small / small);
        if method == "della_linear" {
            // Expected about 0.5 and 0.3 (ε = 0.2).
            assert!(
                fb > fs + 0.1,
                "{method}: kept {fb} of the large, {fs} of the small"
            );
        } else {
            assert!(
                (fb - fs).abs() < 0.05,
                "{method}: kept {fb} of the large, {fs} of the small"
            );
        }
    }
}

/// Over the rows of `d` (`cols` long): kept elements above and below their row's median
/// magnitude, and how many elements are above and below it.
fn halves(d: &[f32], kept: &[bool], cols: usize) -> (f64, f64, f64, f64) {
    let (mut kept_big, mut kept_small, mut big, mut small) = (0f64, 0f64, 0f64, 0f64);
    for (r, vals) in d.chunks(cols).enumerate() {
        let mut mags: Vec<f32> = vals.iter().map(|v| v.abs()).collect();
        mags.sort_by(f32::total_cmp);
        let median = mags[vals.len() / 2];
        for (j, v) in vals.iter().enumerate() {
            let k = f64::from(u8::from(kept[r * cols + j]));
            if v.abs() > median {
                big += 1.0;
                kept_big += k;
            } else if v.abs() < median {
                small += 1.0;
                kept_small += k;
            }
        }
    }
    (kept_big, kept_small, big, small)
}

/// A tiny llama-like checkpoint written byte by byte (no Python): `layers` blocks.
fn tiny(dir: &Path, layers: usize, width: usize, value: f32) {
    std::fs::create_dir_all(dir).unwrap();
    let mut ts: Vec<(String, Vec<f32>)> =
        vec![("model.embed_tokens.weight".into(), vec![value; 8])];
    for l in 0..layers {
        ts.push((
            format!("model.layers.{l}.mlp.up_proj.weight"),
            vec![value + l as f32; width],
        ));
        ts.push((
            format!("model.layers.{l}.self_attn.q_proj.weight"),
            vec![value; 4],
        ));
    }
    ts.push(("model.norm.weight".into(), vec![1.0; 4]));
    let refs: Vec<(&str, Vec<f32>)> = ts.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
    f32_file(&dir.join("model.safetensors"), &refs);
    std::fs::write(
        dir.join("config.json"),
        r#"{"model_type": "llama", "num_hidden_layers": 2}"#,
    )
    .unwrap();
}

/// Bad recipes: one line naming the key, exit 2, nothing written.
#[test]
fn bad_recipes_are_refused_naming_the_key() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    tiny(&p.join("a"), 2, 6, 1.0);
    tiny(&p.join("b"), 2, 6, 2.0);
    tiny(&p.join("wide"), 2, 9, 2.0);
    let cases: &[(&str, &str)] = &[
        ("models: [{model: a, parameters: {weight: 1}}]\nmerge_method: frankenmerge\n", "merge_method: unknown merge method 'frankenmerge'"),
        ("models: [{model: a, parameters: {weight: 1}}]\nmerge_method: linear\nnormalise: true\n", "normalise: unknown key"),
        ("models: [{model: a, parameters: {weight: 1, densty: 0.5}}]\nmerge_method: linear\n", "models[0].parameters.densty: unknown parameter"),
        ("models: [{model: a, parameters: {weight: 1}}, {model: b, parameters: {weight: 1}}]\nmerge_method: ties\n", "base_model: merge method 'ties' combines task vectors from a base model"),
        ("models: [{model: a, parameters: {weight: 1}}, {model: wide, parameters: {weight: 1}}]\nmerge_method: linear\n", "shape"),
        ("slices:\n  - sources:\n      - {model: a, layer_range: [0, 3]}\nmerge_method: passthrough\n", "slices[0].sources[0].layer_range: [0, 3] goes past the end"),
        ("models: [{model: a, parameters: {weight: 1}}, {model: b, parameters: {weight: -1}}]\nmerge_method: linear\n", "weight: the weights [1.0, -1.0] sum to 0"),
        ("models: [{model: a}]\nmerge_method: linear\n", "parameter 'weight' is required"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let file = p.join(format!("bad{i}.yaml"));
        std::fs::write(&file, text).unwrap();
        let out = p.join(format!("out{i}"));
        let r = run(
            "warp",
            &["merge", file.to_str().unwrap(), "-o", out.to_str().unwrap()],
            p,
        );
        assert_eq!(r.code, 2, "{text}: {}", r.stderr);
        assert!(
            r.stderr.contains(want),
            "{text}: stderr lacks '{want}':\n{}",
            r.stderr
        );
        assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
        assert!(!out.exists(), "{text}: wrote {}", out.display());
        assert!(
            crate::common::entries(p)
                .iter()
                .all(|e| !e.starts_with(".warp")),
            "{:?}",
            crate::common::entries(p)
        );
    }
    let _ = fails;
}

/// Passthrough slices renumber layers (depth up-scaling) and copy bytes; --dry-run writes nothing.
#[test]
fn passthrough_slices_renumber_layers() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    tiny(&p.join("a"), 2, 6, 1.0);
    let file = p.join("dus.yaml");
    std::fs::write(&file, "slices:\n  - sources: [{model: a, layer_range: [0, 2]}]\n  - sources: [{model: a, layer_range: [1, 2]}]\nmerge_method: passthrough\n").unwrap();
    let plan = ok("warp", &["merge", "dus.yaml", "-o", "out", "--dry-run"], p);
    assert!(plan.contains("model.layers.2.mlp.up_proj.weight"), "{plan}");
    assert!(!p.join("out").exists());
    ok("warp", &["merge", "dus.yaml", "-o", "out", "-q"], p);
    let out = Checkpoint::open(p.join("out")).unwrap();
    assert_eq!(out.tensors().len(), 1 + 3 * 2 + 1);
    assert_eq!(
        floats(&out, "model.layers.2.mlp.up_proj.weight"),
        vec![2.0; 6]
    );
    assert_eq!(
        floats(&out, "model.layers.1.mlp.up_proj.weight"),
        vec![2.0; 6]
    );
    assert_eq!(
        floats(&out, "model.layers.0.mlp.up_proj.weight"),
        vec![1.0; 6]
    );
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(p.join("out/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["num_hidden_layers"], 3);
    let card = std::fs::read_to_string(p.join("out/README.md")).unwrap();
    assert!(card.contains("merge_method: passthrough"), "{card}");
}

/// The selection methods (a top-k or quantile cut per tensor, ties at the cut kept in index
/// order) give the same bytes with one thread or two and with the budget at its floor (many
/// chunks: the tie counts carried from chunk to chunk) or the default, on bf16 checkpoints
/// (where 1–3 % of the keys tie at the cut).
#[test]
fn selection_methods_are_byte_identical_across_threads_and_budgets() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    for (name, extra) in [
        ("base", &["--seed", "1"][..]),
        ("ft1", &["--base-seed", "1", "--seed", "2"]),
        ("ft2", &["--base-seed", "1", "--seed", "3"]),
    ] {
        let mut args = vec!["fixture", "--size", "12MB", "-o", name];
        args.extend_from_slice(extra);
        ok("warp", &args, p);
    }
    for (method, params) in [
        ("ties", "{weight: 1.0, density: 0.3}"),
        ("breadcrumbs", "{weight: 1.0, density: 0.5, gamma: 0.01}"),
        ("sce", "{}"),
    ] {
        let body = format!(
            "models:\n  - model: ft1\n    parameters: {params}\n  - model: ft2\n    \
             parameters: {params}\nbase_model: base\nmerge_method: {method}\n\
             parameters: {{select_topk: 0.5}}\n"
        );
        let body = if method == "sce" {
            body
        } else {
            body.replace("parameters: {select_topk: 0.5}\n", "")
        };
        std::fs::write(p.join(format!("{method}.yaml")), body).unwrap();
        let f = format!("{method}.yaml");
        let mut outs = Vec::new();
        for (i, extra) in [
            &["--threads", "1"][..],
            &["--threads", "2", "--memory-budget", "1"],
            &["--threads", "2"],
        ]
        .iter()
        .enumerate()
        {
            let out = p.join(format!("{method}-{i}"));
            let mut args = vec!["merge", f.as_str(), "-o", out.to_str().unwrap(), "-q"];
            args.extend_from_slice(extra);
            ok("warp", &args, p);
            outs.push(out);
        }
        crate::common::assert_same_tensors(&outs[0], &outs[1]);
        crate::common::assert_same_tensors(&outs[0], &outs[2]);
    }
}
