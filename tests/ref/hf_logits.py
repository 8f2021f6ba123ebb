#!/usr/bin/env python3
"""Reference logits from Hugging Face `transformers` for tests/rl_model.rs.

    python hf_logits.py MODEL_DIR < request.json > response.json

request:  {"input_ids": [[...], ...], "attention_mask": [[...], ...] (optional),
           "position_ids": [[...], ...] (optional)}
response: {"logits": [[[...]]] (float32 values as float64 JSON), "shape": [b, t, v],
           "torch": "2.11.0", "transformers": "5.24.0"}

The folder is loaded with `LlamaForCausalLM.from_pretrained(dir, dtype=float32,
attn_implementation="eager")`: the plain PyTorch attention, independent of our code. Missing or
unexpected weights are an error (a silently random-initialised tensor would make the comparison
meaningless). Needs the venv of scripts/setup-torch.sh.
"""
import json
import sys

try:
    import torch
    import transformers
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging
except ImportError as e:  # pragma: no cover - environment problem, reported clearly
    sys.stderr.write(
        f"hf_logits.py: cannot import torch/transformers ({e}); "
        "run `source scripts/setup-torch.sh` first (it exports WARP_TORCH_PYTHON)\n"
    )
    sys.exit(3)


def main() -> int:
    if len(sys.argv) != 2:
        sys.stderr.write("usage: hf_logits.py MODEL_DIR < request.json\n")
        return 2
    hf_logging.disable_progress_bar()
    req = json.load(sys.stdin)
    model, info = LlamaForCausalLM.from_pretrained(
        sys.argv[1],
        dtype=torch.float32,
        attn_implementation="eager",
        output_loading_info=True,
    )
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        sys.stderr.write(f"hf_logits.py: weights do not match the architecture: {bad}\n")
        return 4
    model.eval()
    ids = torch.tensor(req["input_ids"], dtype=torch.long)
    kwargs = {"use_cache": False}
    if req.get("attention_mask") is not None:
        kwargs["attention_mask"] = torch.tensor(req["attention_mask"], dtype=torch.long)
    if req.get("position_ids") is not None:
        kwargs["position_ids"] = torch.tensor(req["position_ids"], dtype=torch.long)
    with torch.no_grad():
        logits = model(input_ids=ids, **kwargs).logits.float()
    json.dump(
        {
            "logits": logits.tolist(),
            "shape": list(logits.shape),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
