//! `warp merge` recipes with PEFT LoRA adapters (issue 25): mergekit's `BASE+ADAPTER` reference
//! (the base with that adapter applied) and an adapter folder given as a model (read on the base
//! its config names), streamed as base + s·B·A chunk by chunk, against the float64 numpy
//! materialisation of the adapter (tests/ref/lora_ref.py: low-rank deltas, rsLoRA, and the
//! adapter's full tensors from modules_to_save).

use std::path::Path;

use crate::common::{ok, run};
use crate::lora::{materialized, setup};
use crate::merge_reference::{compare, values};
use warp::io::Checkpoint;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn merge(w: &Path, name: &str, recipe: &str) -> std::path::PathBuf {
    let file = w.join(format!("{name}.yaml"));
    std::fs::write(&file, recipe).unwrap();
    let out = w.join(name);
    ok("warp", &["merge", s(&file), "-o", s(&out), "-q"], w);
    out
}

#[test]
// long fn: two base dtypes through the same two recipes, then the refusals, in sequence.
fn recipes_read_base_plus_adapter_as_the_materialised_model() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    for dtype in ["f32", "bf16"] {
        // base = in-…/init, its fine-tune in-…/p1; adapters of rank 4 (α 8) and 2 (rsLoRA),
        // each with a full lm_head (modules_to_save).
        let (base, ads) = setup(w, dtype);
        let other = base.parent().unwrap().join("p1");

        // BASE+ADAPTER alone (linear, weight 1): the materialised adapter.
        let one = merge(
            w,
            &format!("one-{dtype}"),
            &format!(
                "models:\n  - model: {}+{}\n    parameters: {{weight: 1.0}}\nmerge_method: \
                 linear\ndtype: float32\n",
                s(&base),
                s(&ads[0])
            ),
        );
        let reference = materialized(w, &base, &ads[0]);
        let (rel, _) = compare(&one, &reference);
        eprintln!("{dtype}: base+adapter vs reference: worst relative {rel:.2e}");

        // A plain adapter folder (its config names the base) with weight 0.3 and a full model
        // with 0.7: 0.3·(base + s·B·A) + 0.7·p1, element by element.
        let two = merge(
            w,
            &format!("two-{dtype}"),
            &format!(
                "models:\n  - model: {}\n    parameters: {{weight: 0.3}}\n  - model: {}\n    \
                 parameters: {{weight: 0.7}}\nmerge_method: linear\ndtype: float32\n",
                s(&ads[1]),
                s(&other)
            ),
        );
        let (ours, r, o) = (
            Checkpoint::open(&two).unwrap(),
            Checkpoint::open(materialized(w, &base, &ads[1])).unwrap(),
            Checkpoint::open(&other).unwrap(),
        );
        let mut worst = 0f64;
        let mut changed = 0;
        for t in ours.tensors() {
            let (_, ov) = values(&ours, &t.name);
            let (_, rv) = values(&r, &t.name);
            let (_, pv) = values(&o, &t.name);
            let (_, bv) = values(&Checkpoint::open(&base).unwrap(), &t.name);
            changed += usize::from(rv != bv);
            let want: Vec<f64> = rv.iter().zip(&pv).map(|(a, b)| 0.3 * a + 0.7 * b).collect();
            let scale = want.iter().map(|x| x * x).sum::<f64>().sqrt() / (want.len() as f64).sqrt();
            for (x, y) in ov.iter().zip(&want) {
                let rel = (x - y).abs() / y.abs().max(scale).max(1e-30);
                worst = worst.max(rel);
                assert!(rel <= 2e-6, "{dtype} {}: ours {x:e}, want {y:e}", t.name);
            }
        }
        // The adapter changes its three modules and lm_head.
        assert_eq!(changed, 4, "{dtype}");
        eprintln!("{dtype}: 0.3·adapter + 0.7·model: worst relative {worst:.2e}");
    }

    // Refused, exit 2, one line naming the reference, nothing written.
    let (base, ads) = setup(w, "f32");
    let other = base.parent().unwrap().join("p1");
    for (i, (model, method, want)) in [
        (
            format!("{}+{}", s(&base), s(&other)),
            "linear",
            "is not a PEFT LoRA adapter",
        ),
        (
            format!("{}+{}", s(&ads[0]), s(&ads[1])),
            "linear",
            "is itself an adapter",
        ),
        (
            format!("{}+", s(&base)),
            "linear",
            "BASE+ADAPTER, both non-empty",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let file = w.join(format!("bad{i}.yaml"));
        std::fs::write(
            &file,
            format!("models:\n  - model: {model}\n    parameters: {{weight: 1.0}}\nmerge_method: {method}\n"),
        )
        .unwrap();
        let out = w.join(format!("bad{i}"));
        let r = run("warp", &["merge", s(&file), "-o", s(&out)], w);
        assert_eq!(r.code, 2, "{model}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{model}: {}", r.stderr);
        assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
        assert!(!out.exists());
    }
    let file = w.join("slerp.yaml");
    std::fs::write(
        &file,
        format!(
            "models:\n  - model: {b}+{a}\n  - model: {p}\nbase_model: {b}\nmerge_method: \
             warp_slerp\n",
            b = s(&base),
            a = s(&ads[0]),
            p = s(&other)
        ),
    )
    .unwrap();
    let r = run("warp", &["merge", s(&file), "-o", s(&w.join("slerp"))], w);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("warp_slerp takes no BASE+ADAPTER"),
        "{}",
        r.stderr
    );
}
