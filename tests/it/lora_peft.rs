//! PEFT LoRA adapters made by PEFT itself (tests/ref/peft_ref.py, in the venv of
//! scripts/setup-trl.sh, which installs PEFT): base + adapter run by PEFT against warp's
//! full-weight checkpoints of the same adapters. Compiled with the `rl` feature, whose test run
//! (scripts/test) sets that venv up.

use crate::common::*;
use crate::lora::p;

use std::path::PathBuf;

/// The venv of scripts/setup-trl.sh (torch, transformers, PEFT) for tests/ref/peft_ref.py.
pub(crate) fn peft_ref(req: &serde_json::Value) -> serde_json::Value {
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
pub(crate) fn assert_logits_pairs(l: &[serde_json::Value], family: usize) {
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
        eprintln!("family {family}: max |Δlogit| {diff:.2e} of max |logit| {scale:.3}");
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

/// Rank-space SLERP (with fused LITI points, η > 1 included) of two PEFT-made adapters on
/// transformers-made models — Qwen2 with LoRA on attention, MLP and the token embedding
/// (`lora_embedding_A/B`), GPT-2 with Conv1D modules (`fan_in_fan_out`), ranks 4 and 2 (rsLoRA)
/// — LITI of the merged adapter, and a task_arithmetic recipe of the adapters (`warp merge --as
/// adapter`): PEFT loads every adapter warp writes, and base + warp's
/// adapter run by PEFT gives the logits of warp's full-weight output of the same merge
/// (`--as full`), within 1e-5 of the largest logit (f32).
#[test]
// long fn: two model families through the same merges (SLERP, LITI, a recipe), then one PEFT
// logits call per family.
fn peft_loads_rank_space_merges_with_the_logits_of_full_merges() {
    let w = tempfile::tempdir().unwrap();
    let ids = serde_json::json!([[1, 5, 9, 2, 33, 17, 8, 60], [3, 3, 40, 12, 7, 0, 21, 5]]);
    let families = [
        (
            serde_json::json!({"model_type": "qwen2", "vocab_size": 64, "hidden_size": 32,
                "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "max_position_embeddings": 64,
                "tie_word_embeddings": false}),
            serde_json::json!(["q_proj", "v_proj", "up_proj", "embed_tokens"]),
            false,
        ),
        (
            serde_json::json!({"model_type": "gpt2", "vocab_size": 64, "n_embd": 32,
                "n_layer": 2, "n_head": 4, "n_positions": 64}),
            serde_json::json!(["c_attn", "c_fc"]),
            true,
        ),
    ];
    for (f, (cfg, targets, fifo)) in families.into_iter().enumerate() {
        let base = w.path().join(format!("base-{f}"));
        let ads: Vec<PathBuf> = (0..2)
            .map(|k| w.path().join(format!("ad-{f}-{k}")))
            .collect();
        peft_ref(&serde_json::json!({
            "op": "make", "base": p(&base), "config": cfg, "seed": f,
            "adapters": ads.iter().enumerate().map(|(k, a)| serde_json::json!({
                "out": p(a), "r": 4 - 2 * k, "lora_alpha": 8, "use_rslora": k == 1,
                "target_modules": targets, "modules_to_save": null,
                "fan_in_fan_out": fifo, "seed": 30 + k, "std": 0.1
            })).collect::<Vec<_>>()
        }));
        let out = |kind: &str| w.path().join(format!("{kind}-{f}"));
        for kind in ["adapter", "full"] {
            let (a0, a1, b, o) = (p(&ads[0]), p(&ads[1]), p(&base), p(&out(kind)));
            let a = [
                &a0, &a1, "--init", &b, "--eta", "0.5", "--eta", "1.3", "--as", kind, "-o", &o,
                "-q",
            ];
            ok("warp-slerp", &a, w.path());
            // LITI of the merged model (η = 1.3) back towards the base.
            let merged = p(&out(kind).join("eta-1.30"));
            let lo = p(&w.path().join(format!("liti-{kind}-{f}")));
            let a = [
                "--init", &b, "--merged", &merged, "--eta", "0.4", "--as", kind, "-o", &lo,
            ];
            ok("warp-liti", &a, w.path());
        }
        // A task_arithmetic recipe over the two adapters (a filter, λ) in rank space
        // (`warp merge --as adapter`, issue 25) and in full.
        let recipe = w.path().join(format!("ta-{f}.yaml"));
        std::fs::write(
            &recipe,
            format!(
                "models:\n  - model: {}\n    parameters: {{weight: [0.8, 0.3]}}\n  - model: {}\n    \
                 parameters:\n      weight:\n        - filter: attn\n          value: -0.6\n        \
                 - value: 0.9\nbase_model: {}\nmerge_method: task_arithmetic\nparameters: \
                 {{lambda: 1.2}}\ndtype: float32\n",
                p(&ads[0]),
                p(&ads[1]),
                p(&base)
            ),
        )
        .unwrap();
        for kind in ["adapter", "full"] {
            let o = p(&w.path().join(format!("ta-{kind}-{f}")));
            let a = ["merge", &p(&recipe), "--as", kind, "-o", &o, "-q"];
            ok("warp", &a, w.path());
        }
        let mut models = Vec::new();
        let liti = |kind: &str| w.path().join(format!("liti-{kind}-{f}"));
        let ta = |kind: &str| w.path().join(format!("ta-{kind}-{f}"));
        let pairs = [
            (
                out("full").join("eta-0.50"),
                out("adapter").join("eta-0.50"),
            ),
            (
                out("full").join("eta-1.30"),
                out("adapter").join("eta-1.30"),
            ),
            (liti("full"), liti("adapter")),
            (ta("full"), ta("adapter")),
        ];
        for (full, ad) in &pairs {
            let cfg: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(ad.join("adapter_config.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(cfg["r"], 6, "{}", ad.display());
            assert!(!ad.join("model.safetensors").exists());
            models.push(serde_json::json!({"dir": p(full)}));
            models.push(serde_json::json!({"base": p(&base), "adapter": p(ad)}));
        }
        let r = peft_ref(&serde_json::json!({"op": "logits", "models": models, "input_ids": ids}));
        let l = r["logits"].as_array().unwrap();
        assert_logits_pairs(l, f);
        // The merges change the logits (the comparison is not of the base with itself).
        let base_logits = peft_ref(&serde_json::json!({"op": "logits",
            "models": [{"dir": p(&base)}], "input_ids": ids}));
        assert_ne!(base_logits["logits"][0], l[0]);
    }
}

/// `warp extract-lora` of full fine-tunes whose task vectors have rank 4 (warp's materialised
/// PEFT-made adapters, `--as full`) on transformers-made Qwen2 (Linear) and GPT-2 (Conv1D,
/// `fan_in_fan_out` from its config) models, default targets: PEFT loads the extracted rank-4
/// adapters, and base + adapter gives the logits of the fine-tune (relative 1e-5, f32).
#[test]
fn peft_loads_extracted_adapters_with_the_logits_of_the_fine_tune() {
    let w = tempfile::tempdir().unwrap();
    let ids = serde_json::json!([[1, 5, 9, 2, 33, 17, 8, 60]]);
    let families = [
        (
            serde_json::json!({"model_type": "qwen2", "vocab_size": 64, "hidden_size": 32,
                "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "max_position_embeddings": 64,
                "tie_word_embeddings": false}),
            serde_json::json!(["q_proj", "v_proj", "down_proj"]),
            false,
        ),
        (
            serde_json::json!({"model_type": "gpt2", "vocab_size": 64, "n_embd": 32,
                "n_layer": 2, "n_head": 4, "n_positions": 64}),
            serde_json::json!(["c_attn", "c_fc"]),
            true,
        ),
    ];
    for (f, (cfg, targets, fifo)) in families.into_iter().enumerate() {
        let base = w.path().join(format!("base-{f}"));
        let ad = w.path().join(format!("ad-{f}"));
        peft_ref(&serde_json::json!({
            "op": "make", "base": p(&base), "config": cfg, "seed": f,
            "adapters": [{"out": p(&ad), "r": 4, "lora_alpha": 8, "target_modules": targets,
                "modules_to_save": null, "fan_in_fan_out": fifo, "seed": 50, "std": 0.1}]
        }));
        let (b, ft, ex) = (
            p(&base),
            p(&w.path().join(format!("ft-{f}"))),
            p(&w.path().join(format!("ex-{f}"))),
        );
        let a = [
            "--init",
            &b,
            "--merged",
            &p(&ad),
            "--eta",
            "1",
            "--as",
            "full",
            "-o",
            &ft,
        ];
        ok("warp-liti", &a, w.path());
        ok(
            "warp-extract-lora",
            &[&ft, "--init", &b, "--rank", "4", "-o", &ex, "-q"],
            w.path(),
        );
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(w.path().join(format!("ex-{f}/adapter_config.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(
            (cfg["r"].as_u64(), cfg["fan_in_fan_out"].as_bool()),
            (Some(4), Some(fifo))
        );
        let models = [
            serde_json::json!({"dir": ft}),
            serde_json::json!({"base": b, "adapter": ex}),
        ];
        let r = peft_ref(&serde_json::json!({"op": "logits", "models": models, "input_ids": ids}));
        let l = r["logits"].as_array().unwrap();
        assert_logits_pairs(l, f);
        let base_logits = peft_ref(&serde_json::json!({"op": "logits",
            "models": [{"dir": b}], "input_ids": ids}));
        assert_ne!(base_logits["logits"][0], l[0]);
    }
}
