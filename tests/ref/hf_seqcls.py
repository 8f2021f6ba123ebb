#!/usr/bin/env python3
"""Reference reward-model scores from Hugging Face `transformers` for tests/rl_reward.rs.

    python hf_seqcls.py OUT_DIR TOKENIZER_DIR < request.json > response.json

request:  {"seed": 0, "num_labels": 1, "drop": [tensor names], "std": 0.2,
           "pairs": [[prompt, completion], ...]}
response: {"ids": [[...], ...], "right": [...], "left": [...], "single": [...],
           "torch": "2.11.0", "transformers": "5.24.0"}

Makes a random small `LlamaForSequenceClassification` (vocab 48, hidden 32, 2 layers, 4 heads,
2 KV heads, `num_labels` labels, pad_token_id 0; weights N(0, std) from `torch.manual_seed(seed)`,
norms 1 + N(0, 0.1)) and saves it with `save_pretrained` (safetensors) into OUT_DIR, with the
tokenizer files of TOKENIZER_DIR (tokenizer.json, tokenizer_config.json,
special_tokens_map.json). Tensors named in "drop" are then removed from the saved file (to make
broken checkpoints for error tests).

When num_labels is 1 and nothing is dropped, the folder is read back with
`AutoModelForSequenceClassification.from_pretrained` (f32, eager attention; missing or unexpected
weights are an error) and the pairs are tokenized with `AutoTokenizer` of OUT_DIR (the prompt
with its special tokens, the completion without) and scored three ways, all through the model's
own pooling (the rightmost token that is not pad_token_id):
  - "right": one batch, right-padded, attention mask, default position ids (the usual HF call);
  - "left": one batch, left-padded, attention mask, position ids cumsum(mask) - 1;
  - "single": each pair alone.
Needs the venv of scripts/setup-torch.sh.
"""
import json
import shutil
import sys
from pathlib import Path

try:
    import torch
    import transformers
    from safetensors.torch import load_file, save_file
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        LlamaConfig,
        LlamaForSequenceClassification,
    )
    from transformers.utils import logging as hf_logging
except ImportError as e:  # pragma: no cover - environment problem, reported clearly
    sys.stderr.write(
        f"hf_seqcls.py: cannot import torch/transformers ({e}); "
        "run `source scripts/setup-torch.sh` first (it exports WARP_TORCH_PYTHON)\n"
    )
    sys.exit(3)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
PAD = 0


def make(out: Path, tok_dir: Path, seed: int, num_labels: int, std: float, drop) -> None:
    config = LlamaConfig(
        vocab_size=48,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=2,
        num_labels=num_labels,
    )
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(std * torch.randn_like(p))
    model.save_pretrained(out)
    for f in TOKENIZER_FILES:
        shutil.copy(tok_dir / f, out / f)
    if drop:
        path = out / "model.safetensors"
        tensors = load_file(path)
        for name in drop:
            del tensors[name]
        save_file(tensors, path, metadata={"format": "pt"})


def pad_batch(seqs, left: bool):
    w = max(len(s) for s in seqs)
    ids, mask = [], []
    for s in seqs:
        fill = [PAD] * (w - len(s))
        ones, zeros = [1] * len(s), [0] * (w - len(s))
        ids.append(fill + s if left else s + fill)
        mask.append(zeros + ones if left else ones + zeros)
    return torch.tensor(ids), torch.tensor(mask)


def main() -> int:
    if len(sys.argv) != 3:
        sys.stderr.write("usage: hf_seqcls.py OUT_DIR TOKENIZER_DIR < request.json\n")
        return 2
    hf_logging.disable_progress_bar()
    out, tok_dir = Path(sys.argv[1]), Path(sys.argv[2])
    req = json.load(sys.stdin)
    num_labels = req.get("num_labels", 1)
    drop = req.get("drop", [])
    make(out, tok_dir, req.get("seed", 0), num_labels, req.get("std", 0.2), drop)
    resp = {"torch": torch.__version__, "transformers": transformers.__version__}
    if num_labels == 1 and not drop:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            out, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
        )
        bad = {
            k: v
            for k, v in info.items()
            if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")
        }
        if bad:
            sys.stderr.write(f"hf_seqcls.py: weights do not match the architecture: {bad}\n")
            return 4
        model.eval()
        tok = AutoTokenizer.from_pretrained(out)
        if len(tok) > model.config.vocab_size:
            sys.stderr.write(f"hf_seqcls.py: tokenizer has {len(tok)} tokens > vocab_size\n")
            return 5
        seqs = [
            tok(p)["input_ids"] + tok(c, add_special_tokens=False)["input_ids"]
            for p, c in req["pairs"]
        ]
        resp["ids"] = seqs
        with torch.no_grad():
            ids, mask = pad_batch(seqs, left=False)
            resp["right"] = model(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()
            ids, mask = pad_batch(seqs, left=True)
            pos = (mask.cumsum(1) - 1).clamp(min=0)
            resp["left"] = model(
                input_ids=ids, attention_mask=mask, position_ids=pos
            ).logits[:, 0].tolist()
            resp["single"] = [
                model(input_ids=torch.tensor([s])).logits[0, 0].item() for s in seqs
            ]
    json.dump(resp, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
