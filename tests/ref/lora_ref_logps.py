"""Reference log-probabilities of a LoRA policy, without PEFT (tests/it/trl.rs).

    python lora_ref_logps.py BASE ADAPTER RECORD < {"temperature": T}

BASE: an HF model folder; ADAPTER: a PEFT LoRA adapter folder (adapter_config.json,
adapter_model.safetensors); RECORD: a file of tests/ref/trl_policy_steps.py ($WARP_TRL_REF_LOGPS:
input_ids, attention_mask, logits_to_keep, TRL's log-probs). The adapter is folded into the base
by hand, W + s.B.A with s = lora_alpha / r (/ sqrt(r) with use_rslora), then the log-probabilities
of the last logits_to_keep tokens under the tempered distribution are computed with transformers.
Prints JSON {"ours": [[...]], "trl": [[...]], "mask": [[...]]} (rows: sequences; mask: the kept
positions' attention mask)."""

import json
import math
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main():
    base, adapter, record = sys.argv[1:4]
    req = json.load(sys.stdin)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    cfg = json.load(open(f"{adapter}/adapter_config.json"))
    r = cfg["r"]
    s = cfg["lora_alpha"] / (math.sqrt(r) if cfg.get("use_rslora") else r)
    lora = load_file(f"{adapter}/adapter_model.safetensors")
    params = dict(model.named_parameters())
    prefix = "base_model.model."
    folded = 0
    with torch.no_grad():
        for key, a in lora.items():
            if not key.endswith(".lora_A.weight"):
                continue
            module = key[len(prefix):-len(".lora_A.weight")]
            b = lora[key.replace(".lora_A.", ".lora_B.")]
            w = params[f"{module}.weight"]
            w += s * (b.double() @ a.double()).to(w.dtype)
            folded += 1
    assert folded > 0, "no LoRA pairs in the adapter"
    rec = load_file(record)
    ids, mask = rec["input_ids"], rec["attention_mask"]
    keep = int(rec["logits_to_keep"][0])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    logits = logits[:, -(keep + 1):-1].double() / req["temperature"]
    ours = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, -keep:, None])[..., 0]
    json.dump({"ours": ours.tolist(), "trl": rec["logps"].double().tolist(),
               "mask": mask[:, -keep:].tolist(), "folded": folded}, sys.stdout)


if __name__ == "__main__":
    main()
