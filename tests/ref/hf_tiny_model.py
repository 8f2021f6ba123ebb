#!/usr/bin/env python3
"""A tiny random causal LM made by Hugging Face `transformers` from a config, for tests/rl_scale.rs.

    python hf_tiny_model.py OUT_DIR < request.json > response.json
    python hf_tiny_model.py < {"models": [{"out": DIR, ...request...}, ...]} > [response, ...]

request:  {"config": {"model_type": "qwen2", "vocab_size": 64, ...}  (any transformers config
           fields; model_type picks the family), "dtype": "f32" | "bf16", "seed": 0,
           "tokenizer": true}
response: {"parameters": N, "model_type": ..., "torch": ..., "transformers": ...}
(The second form makes several models in one process: one import of torch and transformers.)

The weights are transformers' own random initialisation (`AutoModelForCausalLM.from_config` under
`torch.manual_seed(seed)`), saved with `save_pretrained` in the given dtype: the layout, names and
config.json a user's checkpoint of that family has. With "tokenizer", a word-level tokenizer.json
is written beside it: <pad> <s> </s> <unk> then the words w4 … w{vocab-1}, split on whitespace,
BOS added (ids 0, 1, 2, 3; config.json gets the same pad/bos/eos ids). Needs the venv of
scripts/setup-torch.sh.
"""
import json
import os
import sys

try:
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging
except ImportError as e:  # pragma: no cover - environment problem, reported clearly
    sys.stderr.write(
        f"hf_tiny_model.py: cannot import torch/transformers ({e}); "
        "run `source scripts/setup-torch.sh` first (it exports WARP_TORCH_PYTHON)\n"
    )
    sys.exit(3)


def main() -> int:
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    req = json.load(sys.stdin)
    if len(sys.argv) == 1 and "models" in req:
        json.dump([make(m["out"], m) for m in req["models"]], sys.stdout)
        return 0
    if len(sys.argv) != 2:
        sys.stderr.write("usage: hf_tiny_model.py OUT_DIR < request.json\n")
        return 2
    json.dump(make(sys.argv[1], req), sys.stdout)
    return 0


def make(out, req):
    fields = dict(req["config"])
    model_type = fields.pop("model_type")
    if req.get("tokenizer"):
        fields.setdefault("pad_token_id", 0)
        fields.setdefault("bos_token_id", 1)
        fields.setdefault("eos_token_id", 2)
    cfg = AutoConfig.for_model(model_type, **fields)
    torch.manual_seed(int(req.get("seed", 0)))
    model = AutoModelForCausalLM.from_config(cfg)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[req.get("dtype", "f32")]
    model = model.to(dtype)
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out)
    if req.get("tokenizer"):
        specials = ["<pad>", "<s>", "</s>", "<unk>"]
        vocab = {t: i for i, t in enumerate(specials)}
        for i in range(len(specials), cfg.vocab_size):
            vocab[f"w{i}"] = i
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
        tok.add_special_tokens(specials)
        tok.save(os.path.join(out, "tokenizer.json"))
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "model_type": model_type,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


if __name__ == "__main__":
    sys.exit(main())
