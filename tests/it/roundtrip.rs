//! Round trips through warp-convert on the committed fixtures, checked with the official Python
//! `safetensors` package and the independent reader in tests/ref/st.py.

use crate::common;
use common::*;

/// Python check: every shard opens with the official package, the index maps each tensor to the
/// shard that holds it and its total_size is the data size, and the values (read with the
/// independent st.py reader) equal those of `orig`.
const CHECK: &str = r#"
import json, os, sys
sys.path.insert(0, os.path.join(sys.argv[3], "tests", "ref"))
import numpy as np, st
from safetensors import safe_open
out, orig = sys.argv[1], sys.argv[2]
idx = json.load(open(os.path.join(out, "model.safetensors.index.json")))
shards = sorted(set(idx["weight_map"].values()))
seen, total = 0, 0
for f in shards:
    with safe_open(os.path.join(out, f), framework="numpy") as h:
        assert h.metadata()["format"] == "pt", h.metadata()
        for k in h.keys():
            assert idx["weight_map"][k] == f, (k, f)
            sl = h.get_slice(k)
            seen += 1
a = st.load_checkpoint(out, raw=True)
b = st.load_checkpoint(orig, raw=True)
assert seen == len(idx["weight_map"]) == len(a) == len(b), (seen, len(a), len(b))
for k, (dt, arr) in a.items():
    total += arr.nbytes
    bdt, barr = b[k]
    assert dt == bdt and arr.shape == barr.shape, k
    assert arr.tobytes() == barr.tobytes(), k
assert idx["metadata"]["total_size"] == total, (idx["metadata"], total)
print(len(shards), seen, total)
"#;

#[test]
fn reshard_a_three_shard_bf16_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let w = d.path();
    let fixture = repo_root().join("fixtures/tiny-llama-bf16");
    let fx = fixture.to_str().unwrap();
    // Single file → 3 shards → another shard size.
    ok(
        "warp-convert",
        &[fx, "-o", "s3", "--max-shard-size", "16KB", "-q"],
        w,
    );
    ok(
        "warp-convert",
        &["s3", "-o", "s2", "--max-shard-size", "30KB", "-q"],
        w,
    );
    let n3 = entries(&w.join("s3"))
        .iter()
        .filter(|e| e.ends_with(".safetensors"))
        .count();
    let n2 = entries(&w.join("s2"))
        .iter()
        .filter(|e| e.ends_with(".safetensors"))
        .count();
    assert_eq!(
        (n3, n2),
        (3, 2),
        "{:?} {:?}",
        entries(&w.join("s3")),
        entries(&w.join("s2"))
    );
    assert_same_tensors(&w.join("s3"), &fixture);
    assert_same_tensors(&w.join("s2"), &fixture);
    for out in ["s3", "s2"] {
        let o = w.join(out);
        let printed = py(
            &[
                "-c",
                CHECK,
                o.to_str().unwrap(),
                fx,
                repo_root().to_str().unwrap(),
            ],
            w,
        );
        eprintln!("{out}: shards, tensors, bytes = {}", printed.trim());
    }
    // Companion files travel with the weights; the card says how the output was made.
    for f in [
        "config.json",
        "tokenizer.json",
        "generation_config.json",
        "README.md",
    ] {
        assert!(w.join("s2").join(f).is_file(), "{f} missing");
    }
    assert_eq!(
        std::fs::read(w.join("s2/tokenizer.json")).unwrap(),
        std::fs::read(fixture.join("tokenizer.json")).unwrap()
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&ok("warp-inspect", &["s2", "--json"], w)).unwrap();
    assert_eq!(inspect["shards"], 2);
    assert_eq!(inspect["layout"], "sharded");
}

#[test]
fn bf16_to_f32_and_back_is_exact_and_matches_the_f32_fixture() {
    let d = tempfile::tempdir().unwrap();
    let w = d.path();
    let bf16 = repo_root().join("fixtures/tiny-llama-bf16");
    let f32_fixture = repo_root().join("fixtures/tiny-llama-f32-3shard");
    ok(
        "warp-convert",
        &[
            bf16.to_str().unwrap(),
            "-o",
            "f32",
            "--dtype",
            "f32",
            "--max-shard-size",
            "40KB",
            "-q",
        ],
        w,
    );
    // Widening bf16 → f32 is exact: equal to the independently written f32 fixture.
    assert_same_tensors(&w.join("f32"), &f32_fixture);
    ok(
        "warp-convert",
        &["f32", "-o", "back", "--dtype", "bf16", "-q"],
        w,
    );
    assert_same_tensors(&w.join("back"), &bf16);
    // f16 narrowing is rounding: check it against the official reader on the f32 file.
    ok(
        "warp-convert",
        &["f32", "-o", "f16", "--dtype", "f16", "-q"],
        w,
    );
    let code = r#"
import sys, numpy as np
from safetensors.numpy import load_file
import os, json
a = {}
for f in sorted(os.listdir(sys.argv[1])):
    if f.endswith(".safetensors"): a.update(load_file(os.path.join(sys.argv[1], f)))
b = load_file(os.path.join(sys.argv[2], "model.safetensors"))
for k, v in a.items():
    assert b[k].dtype == np.float16, b[k].dtype
    assert np.array_equal(v.astype(np.float16), b[k]), k  # numpy rounds to nearest even too
print(len(a))
"#;
    py(
        &[
            "-c",
            code,
            w.join("f32").to_str().unwrap(),
            w.join("f16").to_str().unwrap(),
        ],
        w,
    );
}
