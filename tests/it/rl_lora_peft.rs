//! `warp rl --lora R` on models that transformers makes from a config (issue 25), in the venv of
//! scripts/setup-trl.sh (PEFT): PEFT loads the adapters a run writes (`final/policy`,
//! `final/ema`), and base + adapter run by PEFT gives the logits of warp's own full-weight
//! materialisation of the adapter (`warp convert`), within 1e-5 of the largest logit.

use std::path::Path;

use crate::common::{ok, torch_ref};
use crate::lora_peft::{assert_logits_pairs, peft_ref};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A reward that counts the token "w7" in the completion (any reward will do: the test is about
/// the adapters written, not what they learnt).
// Distinct characters of the completion: a dense reward, so that every group of samples has
// different rewards and the adapters receive a gradient whatever the samples (a sparse reward,
// such as counting one word, can leave 3 short steps without any signal).
const SCORER: &str = "#!/usr/bin/env python3\nimport json, sys\nfor line in sys.stdin:\n    \
                      d = json.loads(line)\n    print(len(set(d[\"completion\"])) / 8, \
                      flush=True)\n";

/// Llama with bf16 weights (trained with `--dtype bf16`: bf16 base, f32 factors) and Qwen2 with
/// q/k/v biases and a tied head (f32, rsLoRA on q_proj,v_proj,down_proj).
// long fn: two families, each trained, loaded by PEFT and compared, written out in sequence.
#[test]
fn peft_loads_rl_adapters_with_the_logits_of_warps_materialised_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let common = serde_json::json!({"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 64});
    let mut llama = common.clone();
    llama["model_type"] = "llama".into();
    llama["tie_word_embeddings"] = false.into();
    let mut qwen = common.clone();
    qwen["model_type"] = "qwen2".into();
    qwen["tie_word_embeddings"] = true.into();
    let models = serde_json::json!({"models": [
        {"out": d.join("llama"), "config": llama, "dtype": "bf16", "seed": 1, "tokenizer": true},
        {"out": d.join("qwen2"), "config": qwen, "dtype": "f32", "seed": 2, "tokenizer": true},
    ]});
    torch_ref("hf_tiny_model.py", &[], &models);
    let prompts = d.join("prompts.jsonl");
    let lines: String = (0..8)
        .map(|i| {
            format!(
                "{{\"prompt\": \"w{} w{} w{}\"}}\n",
                4 + i,
                10 + i,
                20 + 2 * i
            )
        })
        .collect();
    std::fs::write(&prompts, lines).unwrap();
    let scorer = d.join("score.py");
    std::fs::write(&scorer, SCORER).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&scorer, std::fs::Permissions::from_mode(0o755)).unwrap();
    let reward = format!("cmd:{}", s(&scorer));
    let ids = serde_json::json!([[1, 5, 9, 17, 33, 7, 60, 12]]);
    for (i, (name, extra)) in [
        (
            "llama",
            vec!["--dtype", "bf16", "--lora", "8", "--lora-alpha", "16"],
        ),
        (
            "qwen2",
            vec![
                "--lora",
                "4",
                "--lora-alpha",
                "6",
                "--rslora",
                "--lora-targets",
                "q_proj,v_proj,down_proj",
            ],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let base = d.join(name);
        let out = d.join(format!("run-{name}"));
        let mut args = vec![
            "rl",
            s(&base),
            "-o",
            s(&out),
            "--prompts",
            s(&prompts),
            "--reward",
            &reward,
            "--steps",
            "3",
            "--batch",
            "4",
            "-n",
            "2",
            "--max-new-tokens",
            "4",
            "--lr",
            "2e-2",
            "--warmup",
            "0",
            "--threads",
            "1",
            "-q",
        ];
        args.extend(extra);
        ok("warp", &args, d);
        let mut pairs = Vec::new();
        for which in ["policy", "ema"] {
            let adapter = out.join("final").join(which);
            let full = d.join(format!("full-{name}-{which}"));
            ok(
                "warp",
                &[
                    "convert",
                    s(&adapter),
                    "-o",
                    s(&full),
                    "--dtype",
                    "f32",
                    "-q",
                ],
                d,
            );
            pairs.push(serde_json::json!({"dir": full}));
            pairs.push(serde_json::json!({"base": base, "adapter": adapter}));
        }
        let r = peft_ref(&serde_json::json!({"op": "logits", "models": pairs, "input_ids": ids}));
        let l = r["logits"].as_array().unwrap();
        assert_logits_pairs(l, i);
        // The adapters trained: the policy's logits are not the base's.
        let b = peft_ref(&serde_json::json!({"op": "logits",
            "models": [{"dir": base}], "input_ids": ids}));
        assert_ne!(b["logits"][0], l[1], "{name}: the adapter is a no-op");
    }
}
