#!/usr/bin/env python3
"""Scores (prompt, completion) pairs with an existing reward-model folder through Hugging Face
`transformers`, for tests/science.rs (the reference for warp's `model:` reward on a reward model
that warp trained).

    python hf_rm_score.py RM_DIR < request.json > response.json

request:  {"pairs": [[prompt, completion], ...]}
response: {"single": [...], "batch": [...], "ids": [[...], ...], "class": "...",
           "torch": "2.11.0", "transformers": "5.24.0"}

The folder is loaded with `AutoModelForSequenceClassification.from_pretrained` (f32, eager
attention; missing or unexpected weights are an error) and `AutoTokenizer`; each pair is the
prompt tokenized with its special tokens followed by the completion without, scored alone
("single") and in one right-padded batch with an attention mask ("batch"), both through the
model's own pooling (the last token that is not pad_token_id). Needs the venv of
scripts/setup-torch.sh.
"""
import json
import sys

try:
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging
except ImportError as e:  # pragma: no cover - environment problem, reported clearly
    sys.stderr.write(
        f"hf_rm_score.py: cannot import torch/transformers ({e}); "
        "run `source scripts/setup-torch.sh` first (it exports WARP_TORCH_PYTHON)\n"
    )
    sys.exit(3)


def main() -> int:
    if len(sys.argv) != 2:
        sys.stderr.write("usage: hf_rm_score.py RM_DIR < request.json\n")
        return 2
    hf_logging.disable_progress_bar()
    path = sys.argv[1]
    req = json.load(sys.stdin)
    model, info = AutoModelForSequenceClassification.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    bad = {
        k: v
        for k, v in info.items()
        if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")
    }
    if bad:
        sys.stderr.write(f"hf_rm_score.py: weights do not match the architecture: {bad}\n")
        return 4
    model.eval()
    tok = AutoTokenizer.from_pretrained(path)
    seqs = [
        tok(p)["input_ids"] + tok(c, add_special_tokens=False)["input_ids"]
        for p, c in req["pairs"]
    ]
    pad = model.config.pad_token_id
    with torch.no_grad():
        single = [model(input_ids=torch.tensor([s])).logits[0, 0].item() for s in seqs]
        w = max(len(s) for s in seqs)
        ids = torch.tensor([s + [pad] * (w - len(s)) for s in seqs])
        mask = torch.tensor([[1] * len(s) + [0] * (w - len(s)) for s in seqs])
        batch = model(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()
    json.dump(
        {
            "single": single,
            "batch": batch,
            "ids": seqs,
            "class": type(model).__name__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
