//! PEFT LoRA adapters made by PEFT itself (tests/ref/peft_ref.py, in the venv of
//! scripts/setup-trl.sh, which installs PEFT): base + adapter run by PEFT against warp's
//! full-weight checkpoints of the same adapters. Compiled with the `rl` feature, whose test run
//! (scripts/test) sets that venv up.

use crate::common::*;
use crate::lora::p;

use std::path::PathBuf;

/// The venv of scripts/setup-trl.sh (torch, transformers, PEFT) for tests/ref/peft_ref.py.
fn peft_ref(req: &serde_json::Value) -> serde_json::Value {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let py = std::env::var("WARP_TRL_PYTHON").unwrap_or_else(|_| {
        panic!(
            "WARP_TRL_PYTHON is not set: run `source scripts/setup-trl.sh` (it installs torch, \
             transformers and PEFT into cached venvs and exports it), then rerun the tests"
        )
    });
    let mut child = Command::new(py)
        .arg(repo_root().join("tests/ref/peft_ref.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(req.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "peft_ref.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Logits given as pairs (warp's full checkpoint, PEFT's base + adapter): equal within 1e-5 of
/// the largest logit.
fn assert_logits_pairs(l: &[serde_json::Value], family: usize) {
    assert!(l.len() >= 2 && l.len() % 2 == 0);
    for pair in l.chunks(2) {
        let v = |x: &serde_json::Value| -> Vec<f64> {
            x.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        };
        let (a, b) = (v(&pair[0]), v(&pair[1]));
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f64, |m, x| m.max(x.abs()));
        let diff = a
            .iter()
            .zip(&b)
            .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            diff <= 1e-5 * scale,
            "family {family}: max |Δlogit| {diff} of {scale}"
        );
    }
}

/// Adapters made by PEFT on models transformers makes (Qwen2 with an untied lm_head saved in
/// full, GPT-2 whose Conv1D weights take the delta transposed): base + adapter run by PEFT gives
/// the logits of warp's full-weight checkpoint of the adapter (relative 1e-5, f32).
#[test]
fn peft_adapters_give_the_logits_of_warps_full_weights() {
    let w = tempfile::tempdir().unwrap();
    let families = [
        (
            serde_json::json!({"model_type": "qwen2", "vocab_size": 64, "hidden_size": 32,
                "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "max_position_embeddings": 64,
                "tie_word_embeddings": false}),
            serde_json::json!(["q_proj", "v_proj", "down_proj"]),
            serde_json::json!(["lm_head"]),
            false,
        ),
        (
            serde_json::json!({"model_type": "gpt2", "vocab_size": 64, "n_embd": 32,
                "n_layer": 2, "n_head": 4, "n_positions": 64}),
            serde_json::json!(["c_attn", "c_proj"]),
            serde_json::Value::Null,
            true,
        ),
    ];
    let ids = serde_json::json!([[1, 5, 9, 2, 33, 17, 8, 60], [3, 3, 40, 12, 7, 0, 21, 5]]);
    for (f, (cfg, targets, save, fifo)) in families.into_iter().enumerate() {
        let base = w.path().join(format!("base-{f}"));
        let ads: Vec<PathBuf> = (0..2)
            .map(|k| w.path().join(format!("ad-{f}-{k}")))
            .collect();
        peft_ref(&serde_json::json!({
            "op": "make", "base": p(&base), "config": cfg, "seed": f,
            "adapters": ads.iter().enumerate().map(|(k, a)| serde_json::json!({
                "out": p(a), "r": 4 - 2 * k, "lora_alpha": 8, "use_rslora": k == 1,
                "target_modules": targets, "modules_to_save": save,
                "fan_in_fan_out": fifo, "seed": 10 + k, "std": 0.1
            })).collect::<Vec<_>>()
        }));
        let mut models = Vec::new();
        for (k, a) in ads.iter().enumerate() {
            let full = w.path().join(format!("full-{f}-{k}"));
            ok(
                "warp-liti",
                &[
                    "--init",
                    &p(&base),
                    "--merged",
                    &p(a),
                    "--eta",
                    "1",
                    "-o",
                    &p(&full),
                    "-q",
                ],
                w.path(),
            );
            models.push(serde_json::json!({"dir": p(&full)}));
            models.push(serde_json::json!({"base": p(&base), "adapter": p(a)}));
        }
        let r = peft_ref(&serde_json::json!({"op": "logits", "models": models, "input_ids": ids}));
        let l = r["logits"].as_array().unwrap();
        assert_logits_pairs(l, f);
        // The adapter changes the logits (the comparison is not of the base with itself).
        let base_logits = peft_ref(&serde_json::json!({"op": "logits",
            "models": [{"dir": p(&base)}], "input_ids": ids}));
        assert_ne!(base_logits["logits"][0], l[0]);
    }
}
