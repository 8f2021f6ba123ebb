//! `warp run` with `lora = R` (issue 25) end to end on the built-in task, tiny settings: the RL
//! runs write PEFT adapters, the SLERP/LITI/LERP of an iteration are adapters computed in rank
//! space, the next iteration's init is the LITI point folded into its base (a full checkpoint)
//! and equals base + η·SLERP(task vectors) computed by the float64 numpy references from the
//! runs' own factors (tests/ref/lora_ref.py materialises each adapter, tests/ref/merge_ref.py
//! merges), the front of iteration 2 is the reference's LITI toward the SFT model, and
//! `warp eval` measures an adapter as its materialisation.
#![cfg(feature = "rl")]

use std::path::{Path, PathBuf};

use crate::common::{self, ok, py, repo_root, run};
use crate::merge_reference::{compare, values};
use warp::io::Checkpoint;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn json(p: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

fn is_adapter(dir: &Path) -> bool {
    dir.join("adapter_config.json").is_file() && dir.join("adapter_model.safetensors").is_file()
}

fn canonical(p: &Path) -> String {
    std::fs::canonicalize(p).unwrap().display().to_string()
}

/// base + s·B·A of `adapter` in float64 by the numpy reference.
fn materialised(w: &Path, base: &Path, adapter: &Path, name: &str) -> PathBuf {
    let out = w.join(format!("{name}.ref.safetensors"));
    let script = repo_root().join("tests/ref/lora_ref.py");
    py(
        &[
            s(&script),
            "--base",
            s(base),
            "--adapter",
            s(adapter),
            "--out",
            s(&out),
        ],
        w,
    );
    out
}

/// tests/ref/merge_ref.py `args` writing into `out`.
fn merge_ref(w: &Path, args: &[&str], out: &Path) {
    let script = repo_root().join("tests/ref/merge_ref.py");
    let mut a = vec![s(&script)];
    a.extend_from_slice(args);
    a.extend(["--out", s(out)]);
    py(&a, w);
}

/// The largest |ours − reference| over the tensors the adapters change, and the largest
/// |reference − base| there (the size of the merged task vector).
fn delta_error(ours: &Path, reference: &Path, base: &Path) -> (f64, f64) {
    let (o, r, b) = (
        Checkpoint::open(ours).unwrap(),
        Checkpoint::open(reference).unwrap(),
        Checkpoint::open(base).unwrap(),
    );
    let (mut err, mut size) = (0f64, 0f64);
    for t in b.tensors().iter().filter(|t| t.name.contains(".layers.")) {
        let (_, bv) = values(&b, &t.name);
        let (_, ov) = values(&o, &t.name);
        let (_, rv) = values(&r, &t.name);
        for ((x, y), z) in ov.iter().zip(&rv).zip(&bv) {
            err = err.max((x - y).abs());
            size = size.max((y - z).abs());
        }
    }
    (err, size)
}

#[test]
// long fn: one pipeline run, then each of its outputs checked against the references in order.
fn warp_run_with_lora_merges_adapters_and_folds_the_next_init() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    let cfg = w.join("lora.toml");
    let rl_args =
        r#"["--batch", "4", "-n", "2", "--lora", "4", "--lora-alpha", "8", "--lr", "3e-3"]"#;
    std::fs::write(
        &cfg,
        common::tiny_pipeline(&[("init_anchor_runs", "false"), ("rl_args", rl_args)], ""),
    )
    .unwrap();
    let out = w.join("run");
    let table = ok("warp", &["run", s(&cfg), "-o", s(&out)], w);
    assert!(table.contains("liti it2"), "{table}");

    // The runs write PEFT adapters (r 4) on their iteration's init.
    let sft = {
        let c = json(&out.join("iter-1/run-1/final/policy/adapter_config.json"));
        PathBuf::from(c["base_model_name_or_path"].as_str().unwrap())
    };
    let init2 = out.join("iter-1/init");
    for (i, base) in [(1, &sft), (2, &init2)] {
        for m in 1..=2 {
            for which in ["policy", "ema"] {
                let d = out.join(format!("iter-{i}/run-{m}/final/{which}"));
                assert!(is_adapter(&d), "{} is not an adapter", d.display());
                let c = json(&d.join("adapter_config.json"));
                assert_eq!(c["r"], 4, "{}", d.display());
                assert_eq!(
                    c["base_model_name_or_path"],
                    canonical(base),
                    "{}",
                    d.display()
                );
            }
        }
        // The merges are adapters of rank Σr = 8 on the same base.
        for eta in ["0.00", "0.50", "1.00"] {
            let d = out.join(format!("iter-{i}/slerp/eta-{eta}"));
            assert!(is_adapter(&d), "{} is not an adapter", d.display());
            let c = json(&d.join("adapter_config.json"));
            assert_eq!(c["r"], 8, "{}", d.display());
            assert_eq!(c["base_model_name_or_path"], canonical(base));
        }
        assert!(is_adapter(&out.join(format!("iter-{i}/lerp"))));
    }
    // Iteration 2 trains on the full next init (no init after the last iteration).
    assert!(!is_adapter(&init2) && init2.join("config.json").is_file());
    assert!(init2.join("tokenizer.json").is_file());
    assert!(!out.join("iter-2/init").exists());
    let run2 = json(&out.join("iter-2/run-1/run.json"));
    let model2 = run2["config"]["model"]
        .as_str()
        .or(run2["model"].as_str())
        .unwrap_or_else(|| panic!("no model in {run2}"));
    assert_eq!(Path::new(model2), init2.as_path());

    // The next init against base + 0.5·SLERP(δ1, δ2), every δ from the runs' factors.
    let refs = w.join("refs");
    std::fs::create_dir_all(&refs).unwrap();
    let pols: Vec<PathBuf> = (1..=2)
        .map(|m| {
            let a = out.join(format!("iter-1/run-{m}/final/policy"));
            materialised(&refs, &sft, &a, &format!("it1-run{m}"))
        })
        .collect();
    let slerp1 = refs.join("slerp1");
    merge_ref(
        &refs,
        &[
            "slerp",
            "--init",
            s(&sft),
            s(&pols[0]),
            s(&pols[1]),
            "--eta",
            "0.5",
        ],
        &slerp1,
    );
    let ref_init = slerp1.join("eta-0.50.safetensors");
    let (rel, _) = compare(&init2, &ref_init);
    let (err, size) = delta_error(&init2, &ref_init, &sft);
    eprintln!(
        "next init vs reference: worst relative {rel:.2e}; max |Δ| {err:.2e} against a merged \
         task vector of max {size:.2e}"
    );
    // The LoRA runs moved the weights well beyond the f32 rounding of the stored init (about
    // 6e-8 of a weight), and the merged task vector is right to 0.1 % of its size (a wrong η,
    // or LERP for SLERP, is off by tens of percent).
    assert!(size > 1e-4, "the merged task vector is only {size:e}");
    assert!(err <= 1e-3 * size, "max |Δ| {err:e}, task vector {size:e}");

    // Iteration 2's front: SFT + η·(SLERP of iteration 2 − SFT), the SLERP on iteration 2's
    // init (its full form, iter-2/slerp-full, is what the front reads).
    let pols2: Vec<PathBuf> = (1..=2)
        .map(|m| {
            let a = out.join(format!("iter-2/run-{m}/final/policy"));
            materialised(&refs, &init2, &a, &format!("it2-run{m}"))
        })
        .collect();
    let slerp2 = refs.join("slerp2");
    merge_ref(
        &refs,
        &["slerp", "--init", s(&init2), s(&pols2[0]), s(&pols2[1])],
        &slerp2,
    );
    let (rel, _) = compare(
        &out.join("iter-2/slerp-full"),
        &slerp2.join("merged.safetensors"),
    );
    eprintln!("iteration 2's SLERP (full) vs reference: worst relative {rel:.2e}");
    let front = refs.join("front2");
    let merged2 = slerp2.join("merged.safetensors");
    merge_ref(
        &refs,
        &[
            "liti",
            "--init",
            s(&sft),
            "--merged",
            s(&merged2),
            "--eta",
            "0.0",
            "--eta",
            "0.5",
            "--eta",
            "1.0",
        ],
        &front,
    );
    for eta in ["0.00", "0.50", "1.00"] {
        let ours = out.join(format!("iter-2/front/eta-{eta}"));
        let (rel, _) = compare(&ours, &front.join(format!("eta-{eta}.safetensors")));
        eprintln!("front η {eta} vs reference: worst relative {rel:.2e}");
    }

    // The evaluation measured every point, adapters on their bases.
    let csv = std::fs::read_to_string(out.join("eval.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    let count = |kind: &str| rows.iter().filter(|r| r[1] == kind).count();
    assert_eq!(
        [
            count("sft"),
            count("policy"),
            count("ema"),
            count("slerp"),
            count("liti"),
            count("lerp"),
            count("front")
        ],
        [1, 4, 4, 2, 6, 2, 3],
        "{csv}"
    );
    // Iteration 1's η = 0 is an adapter with B = 0 on the SFT model: the SFT itself, KL 0.
    let eta0 = rows
        .iter()
        .find(|r| r[1] == "liti" && r[2] == "1" && r[5] == "0")
        .unwrap();
    assert_eq!(eta0[6].parse::<f64>().unwrap(), 0.0, "{eta0:?}");
    let svg = std::fs::read_to_string(out.join("front.svg")).unwrap();
    assert!(svg.contains("<svg"));

    // An adapter is evaluated as its full materialisation (its base is iteration 2's init, not
    // the SFT model): same samples, same reward, the same KL to float tolerance.
    let e = w.join("pair.csv");
    let slerp2_adapter = out.join("iter-2/slerp/eta-1.00");
    let full = out.join("iter-2/slerp-full");
    ok(
        "warp",
        &[
            "eval",
            s(&slerp2_adapter),
            s(&full),
            "--max-prompts",
            "16",
            "--samples",
            "2",
            "--threads",
            "1",
            "-o",
            s(&e),
            "-q",
        ],
        w,
    );
    let text = std::fs::read_to_string(&e).unwrap();
    let pair: Vec<Vec<&str>> = text
        .lines()
        .skip(2)
        .map(|l| l.split(',').collect())
        .collect();
    let (a, b) = (&pair[0], &pair[1]);
    let num = |r: &Vec<&str>, k: usize| r[k].parse::<f64>().unwrap();
    assert_eq!(num(a, 8), num(b, 8), "{text}");
    let (ka, kb) = (num(a, 6), num(b, 6));
    assert!(ka > 0.0 && (ka - kb).abs() <= 1e-4 * ka, "{text}");

    // An adapter whose config names no base cannot be evaluated: exit 2, one line naming it,
    // no CSV.
    let bad = w.join("no-base");
    std::fs::create_dir_all(&bad).unwrap();
    let policy = out.join("iter-1/run-1/final/policy");
    std::fs::copy(
        policy.join("adapter_model.safetensors"),
        bad.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut c = json(&policy.join("adapter_config.json"));
    c.as_object_mut().unwrap().remove("base_model_name_or_path");
    std::fs::write(bad.join("adapter_config.json"), c.to_string()).unwrap();
    let csv = w.join("bad.csv");
    let r = run("warp", &["eval", s(&bad), "-o", s(&csv), "-q"], w);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("no-base") && r.stderr.contains("names no base model"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    assert!(!csv.exists());
}

/// `warp run` with `trainer = "trl"` and `lora = R` (needs the venv of scripts/setup-trl.sh): the
/// TRL backend's runs write PEFT adapters (naming their init as given), the rest of the loop is
/// the same — rank-space merges, the next init folded in, the front and the evaluation.
#[test]
fn warp_run_with_lora_on_the_trl_backend() {
    assert!(
        std::env::var_os("WARP_TRL_PYTHON").is_some(),
        "source scripts/setup-trl.sh"
    );
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    let cfg = w.join("trl.toml");
    let rl_args =
        r#"["--batch", "4", "-n", "2", "--lora", "4", "--lora-alpha", "8", "--lr", "3e-3"]"#;
    std::fs::write(
        &cfg,
        common::tiny_pipeline(
            &[
                ("trainer", r#""trl""#),
                ("init_anchor_runs", "false"),
                ("devices", r#"["cpu"]"#),
                ("jobs", "2"),
                ("rl_args", rl_args),
            ],
            "",
        ),
    )
    .unwrap();
    // A relative run folder: the adapters must still name their base by an absolute path.
    let out = w.join("run");
    let table = ok("warp", &["run", s(&cfg), "-o", "run"], w);
    assert!(table.contains("liti it2"), "{table}");
    let init2 = out.join("iter-1/init");
    for i in 1..=2 {
        for m in 1..=2 {
            let run = out.join(format!("iter-{i}/run-{m}"));
            assert_eq!(json(&run.join("run.json"))["config"]["backend"], "trl");
            for which in ["policy", "ema"] {
                let d = run.join("final").join(which);
                assert!(is_adapter(&d), "{} is not an adapter", d.display());
                let c = json(&d.join("adapter_config.json"));
                assert_eq!(c["r"], 4);
                let base = std::path::PathBuf::from(c["base_model_name_or_path"].as_str().unwrap());
                assert!(base.is_absolute() && base.is_dir(), "{}", base.display());
            }
        }
        let slerp = out.join(format!("iter-{i}/slerp/eta-0.50"));
        assert!(is_adapter(&slerp));
        assert_eq!(json(&slerp.join("adapter_config.json"))["r"], 8);
    }
    assert!(!is_adapter(&init2) && init2.join("config.json").is_file());
    let model2 = json(&out.join("iter-2/run-1/run.json"))["config"]["model"].clone();
    assert_eq!(w.join(model2.as_str().unwrap()), init2);
    let csv = std::fs::read_to_string(out.join("eval.csv")).unwrap();
    let kinds: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap())
        .collect();
    let count = |k: &str| kinds.iter().filter(|&&x| x == k).count();
    assert_eq!(
        ["sft", "policy", "ema", "slerp", "liti", "lerp", "front"].map(count),
        [1, 4, 4, 2, 6, 2, 3],
        "{csv}"
    );
    assert!(std::fs::read_to_string(out.join("front.svg"))
        .unwrap()
        .contains("<svg"));
}
