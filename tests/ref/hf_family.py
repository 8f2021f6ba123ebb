#!/usr/bin/env python3
"""Reference outputs from Hugging Face `transformers` for tests/rl_families.rs.

    python hf_family.py < requests.jsonl > responses.jsonl

One JSON request per line, one JSON response per line (flushed), until end of input, so a test
pays for importing torch and transformers once. Every response has "ok": true, or "ok": false
and "error". Requests ("op"):

  make      {"dir", "config": {...}, "class": "GemmaForCausalLM", "seed", "std",
             "save_dtype": "float32" | "bfloat16", "tokenizer_dir" (optional)}
            Builds `transformers.<class>` from `AutoConfig.for_model(**config)`, sets every weight
            from `torch.manual_seed(seed)`: N(0, std), norm weights 1 + N(0, 0.1) (Gemma-style
            norms, which store w for x·(1 + w): N(0, 0.1)), and saves it with `save_pretrained`
            in `save_dtype` (safetensors), with the tokenizer files of `tokenizer_dir`.
            Returns the saved config.json.
  logits    {"dir", "dtype", "batches": [{"input_ids", "attention_mask", "position_ids"}]}
            Loads the folder with the class of its config.json (`from_pretrained`, eager
            attention, `dtype`; missing, unexpected or mismatched weights are an error) and
            returns the logits of each batch as float32 lists ("logits": [[[[...]]]]).
  generate  {"dir", "prompts": [[ids]], "max_new_tokens", "eos_token_id", "pad_token_id"}
            Greedy `generate` (f32, eager) of the prompts in one left-padded batch; returns each
            row's new tokens up to and including its first EOS ("tokens").
  seqcls    {"dir", "seqs": [[ids]]}
            The sequence classifier's score of each sequence alone ("scores").

Needs the venv of scripts/setup-torch.sh. Nothing here is compared with itself: the Rust side
loads the same folders with its own code.
"""
import json
import shutil
import sys
from pathlib import Path

try:
    import torch
    import transformers
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging
except ImportError as e:  # pragma: no cover - environment problem, reported clearly
    sys.stderr.write(
        f"hf_family.py: cannot import torch/transformers ({e}); "
        "run `source scripts/setup-torch.sh` first (it exports WARP_TORCH_PYTHON)\n"
    )
    sys.exit(3)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
GEMMA = ("gemma", "gemma2", "gemma3_text")
_loaded = {}


def make(req):
    fields = dict(req["config"])
    model_type = fields.pop("model_type")
    config = AutoConfig.for_model(model_type, **fields)
    config.architectures = [req["class"]]
    torch.manual_seed(req["seed"])
    model = getattr(transformers, req["class"])(config).eval()
    std = req["std"]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                offset = 0.0 if model_type in GEMMA else 1.0
                p.copy_(offset + 0.1 * torch.randn_like(p))
            else:
                p.copy_(std * torch.randn_like(p))
    out = Path(req["dir"])
    model.to(DTYPES[req["save_dtype"]]).save_pretrained(out)
    if req.get("tokenizer_dir"):
        for f in TOKENIZER_FILES:
            shutil.copy(Path(req["tokenizer_dir"]) / f, out / f)
    return {"config": json.loads((out / "config.json").read_text())}


def load(path, dtype, kind="causal"):
    key = (path, dtype, kind)
    if key not in _loaded:
        arch = json.loads((Path(path) / "config.json").read_text())["architectures"][0]
        cls = getattr(transformers, arch)
        model, info = cls.from_pretrained(
            path, dtype=DTYPES[dtype], attn_implementation="eager", output_loading_info=True
        )
        bad = {
            k: v
            for k, v in info.items()
            if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")
        }
        if bad:
            raise ValueError(f"{path}: weights do not match {arch}: {bad}")
        _loaded[key] = model.eval()
    return _loaded[key]


def logits(req):
    model = load(req["dir"], req["dtype"])
    out = []
    with torch.no_grad():
        for b in req["batches"]:
            kwargs = {"use_cache": False}
            for k in ("attention_mask", "position_ids"):
                if b.get(k) is not None:
                    kwargs[k] = torch.tensor(b[k], dtype=torch.long)
            ids = torch.tensor(b["input_ids"], dtype=torch.long)
            out.append(model(input_ids=ids, **kwargs).logits.float().tolist())
    return {"logits": out}


def generate(req):
    model = load(req["dir"], "float32")
    prompts, pad, eos = req["prompts"], req["pad_token_id"], req["eos_token_id"]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        seqs = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=req["max_new_tokens"],
            do_sample=False,
            num_beams=1,
            eos_token_id=eos,
            pad_token_id=pad,
        )
    tokens = []
    for row in seqs[:, width:].tolist():
        cut = row.index(eos) + 1 if eos in row else len(row)
        tokens.append(row[:cut])
    return {"tokens": tokens}


def seqcls(req):
    model = load(req["dir"], "float32", "seqcls")
    with torch.no_grad():
        scores = [model(input_ids=torch.tensor([s])).logits[0, 0].item() for s in req["seqs"]]
    return {"scores": scores}


OPS = {"make": make, "logits": logits, "generate": generate, "seqcls": seqcls}


def main() -> int:
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            resp = OPS[req["op"]](req)
            resp["ok"] = True
        except Exception as e:  # reported to the test, which fails with the message
            resp = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        resp["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
        sys.stdout.write(json.dumps(resp) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
