#!/usr/bin/env python3
"""PEFT LoRA adapters made and run by PEFT itself, for tests/it/lora.rs (issue 25).

    python peft_ref.py < request.json > response.json

Requests ("op"):
  make     {"base": DIR, "config": {"model_type": ..., ...}, "seed": 0,
            "adapters": [{"out": DIR, "r": 4, "lora_alpha": 8, "use_rslora": false,
                          "target_modules": [...], "modules_to_save": [...] or null,
                          "fan_in_fan_out": false, "seed": 1, "std": 0.05}]}
           The base: transformers' `AutoModelForCausalLM.from_config` under `torch.manual_seed`,
           f32, `save_pretrained`. Each adapter: `get_peft_model(base, LoraConfig(...))`, every
           trainable tensor (LoRA A and B, modules_to_save copies) set to N(0, std) under its seed
           (PEFT starts B at zero, and a zero adapter tests nothing), `save_pretrained`
           (adapter_config.json + adapter_model.safetensors, base_model_name_or_path = DIR).
           Returns {"peft": version, "transformers": version}.
  logits   {"models": [{"dir": DIR} | {"base": DIR, "adapter": DIR}], "input_ids": [[...]]}
           f32 logits of each model (eager attention): a full checkpoint, or a base with an
           adapter loaded by `PeftModel.from_pretrained` and run unmerged (base(x) + s·B·A·x).
           Returns {"logits": [flat list per model]}.

Needs the venv of scripts/setup-trl.sh (torch, transformers and peft).
"""
import json
import sys

try:
    import peft
    import torch
    import transformers
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging
except ImportError as e:  # pragma: no cover - environment problem, reported clearly
    sys.stderr.write(f"peft_ref.py: cannot import torch/transformers/peft ({e}); "
                     "run `source scripts/setup-trl.sh` first (it exports WARP_TRL_PYTHON)\n")
    sys.exit(3)


def make(req):
    fields = dict(req["config"])
    model_type = fields.pop("model_type")
    cfg = AutoConfig.for_model(model_type, **fields)
    torch.manual_seed(int(req.get("seed", 0)))
    base = AutoModelForCausalLM.from_config(cfg).to(torch.float32)
    base.save_pretrained(req["base"])
    for ad in req["adapters"]:
        model = AutoModelForCausalLM.from_pretrained(req["base"], dtype=torch.float32)
        lc = LoraConfig(
            r=ad["r"], lora_alpha=ad["lora_alpha"], use_rslora=ad.get("use_rslora", False),
            target_modules=ad["target_modules"], modules_to_save=ad.get("modules_to_save"),
            fan_in_fan_out=ad.get("fan_in_fan_out", False), lora_dropout=0.0,
            task_type="CAUSAL_LM")
        pm = get_peft_model(model, lc)
        g = torch.Generator().manual_seed(int(ad["seed"]))
        with torch.no_grad():
            for _, p in pm.named_parameters():
                if p.requires_grad:
                    p.copy_(torch.randn(p.shape, generator=g) * ad.get("std", 0.05))
        pm.save_pretrained(ad["out"])
    return {"peft": peft.__version__, "transformers": transformers.__version__}


def logits(req):
    ids = torch.tensor(req["input_ids"])
    out = []
    for m in req["models"]:
        if "adapter" in m:
            base = AutoModelForCausalLM.from_pretrained(m["base"], dtype=torch.float32,
                                                        attn_implementation="eager")
            model = PeftModel.from_pretrained(base, m["adapter"])
        else:
            model = AutoModelForCausalLM.from_pretrained(m["dir"], dtype=torch.float32,
                                                         attn_implementation="eager")
        model.eval()
        with torch.no_grad():
            out.append(model(input_ids=ids).logits.float().flatten().tolist())
    return {"logits": out}


def main():
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    req = json.load(sys.stdin)
    json.dump({"make": make, "logits": logits}[req["op"]](req), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
