#!/usr/bin/env python3
"""Regenerate the committed test fixtures under fixtures/ (deterministic, numpy seed 0).

  tiny-llama-bf16/         single model.safetensors, bf16 (N(0,0.02) matrices, ones for norms)
  tiny-llama-f32-3shard/   the same weights upcast exactly to f32, 3 shards + index.json
  tiny-llama-bf16-ft1/     bf16(init + 0.005 * noise), noise seed 1 (every tensor, norms included)
  tiny-llama-bf16-ft2/     same with noise seed 2
Each folder also gets config.json, generation_config.json, tokenizer.json (character-level
WordLevel), tokenizer_config.json and special_tokens_map.json.
Needs only numpy; if `safetensors` / `tokenizers` are installed the outputs are validated with them.
Usage: python3 scripts/make_fixtures.py [--out fixtures]
"""
import argparse
import json
import os
import sys
from collections import OrderedDict

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "ref"))
from make_ckpt import llama_config, llama_shapes  # noqa: E402
from st import bf16_bits_to_f32, f64_to_bf16_bits, load_checkpoint, write_checkpoint  # noqa: E402

DIMS = dict(vocab=48, hidden=32, inter=64, layers=2, heads=4, kv_heads=2)
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARS = list("0123456789") + list("+-*=?: ") + ["Q", "A"]
TEST_TEXT = "Q: 12+7=? A: 19"


def tokenizer_json():
    vocab = OrderedDict((t, i) for i, t in enumerate(SPECIALS + CHARS))
    assert len(vocab) <= DIMS["vocab"]
    added = [OrderedDict(id=i, content=t, single_word=False, lstrip=False, rstrip=False,
                         normalized=False, special=True) for i, t in enumerate(SPECIALS)]
    bos = lambda: {"SpecialToken": {"id": "<s>", "type_id": 0}}  # noqa: E731
    return OrderedDict([
        ("version", "1.0"), ("truncation", None), ("padding", None), ("added_tokens", added),
        ("normalizer", None),
        # every character becomes its own pre-token (the regex "." matched and isolated)
        ("pre_tokenizer", {"type": "Split", "pattern": {"Regex": "."}, "behavior": "Isolated", "invert": False}),
        ("post_processor", {"type": "TemplateProcessing",
                            "single": [bos(), {"Sequence": {"id": "A", "type_id": 0}}],
                            "pair": [bos(), {"Sequence": {"id": "A", "type_id": 0}},
                                     bos(), {"Sequence": {"id": "B", "type_id": 0}}],
                            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}),
        ("decoder", {"type": "Fuse"}),
        ("model", OrderedDict([("type", "WordLevel"), ("vocab", vocab), ("unk_token", "<unk>")])),
    ])


def companions(torch_dtype):
    tok_cfg = OrderedDict([
        ("add_bos_token", True), ("add_eos_token", False),
        ("added_tokens_decoder", OrderedDict((str(i), OrderedDict(
            content=t, lstrip=False, normalized=False, rstrip=False, single_word=False, special=True))
            for i, t in enumerate(SPECIALS))),
        ("bos_token", "<s>"), ("clean_up_tokenization_spaces", False), ("eos_token", "</s>"),
        ("model_max_length", 64), ("pad_token", "<pad>"), ("tokenizer_class", "PreTrainedTokenizerFast"),
        ("unk_token", "<unk>")])
    return OrderedDict([
        ("config.json", llama_config(**DIMS, torch_dtype=torch_dtype, max_pos=64)),
        ("generation_config.json", OrderedDict([("_from_model_config", True), ("bos_token_id", 1),
                                                ("eos_token_id", 2), ("pad_token_id", 0),
                                                ("transformers_version", "4.44.2")])),
        ("tokenizer.json", tokenizer_json()),
        ("tokenizer_config.json", tok_cfg),
        ("special_tokens_map.json", OrderedDict(bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                                unk_token="<unk>")),
    ])


def write_folder(folder, tensors, shards, torch_dtype):
    os.makedirs(folder, exist_ok=True)
    for f in os.listdir(folder):  # start clean (e.g. a shard count change)
        os.remove(os.path.join(folder, f))
    write_checkpoint(folder, tensors, shards=shards, metadata={"format": "pt"})
    for name, obj in companions(torch_dtype).items():
        with open(os.path.join(folder, name), "w") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "fixtures"))
    out = ap.parse_args().out
    shapes = llama_shapes(**DIMS)
    rng = np.random.default_rng(0)
    base = OrderedDict()  # name -> bf16 bits
    for n, s in shapes.items():
        x = np.ones(s) if len(s) == 1 else rng.normal(0.0, 0.02, s)
        base[n] = f64_to_bf16_bits(x)
    base_f = OrderedDict((n, bf16_bits_to_f32(b)) for n, b in base.items())  # exact values
    write_folder(os.path.join(out, "tiny-llama-bf16"),
                 OrderedDict((n, ("BF16", b)) for n, b in base.items()), 1, "bfloat16")
    write_folder(os.path.join(out, "tiny-llama-f32-3shard"),
                 OrderedDict((n, ("F32", v)) for n, v in base_f.items()), 3, "float32")
    for seed in (1, 2):
        r = np.random.default_rng(seed)
        ft = OrderedDict((n, ("BF16", f64_to_bf16_bits(v.astype(np.float64) + 0.005 * r.normal(0.0, 1.0, v.shape))))
                         for n, v in base_f.items())
        write_folder(os.path.join(out, f"tiny-llama-bf16-ft{seed}"), ft, 1, "bfloat16")
    validate(out, base_f)


def validate(out, base_f):
    a = load_checkpoint(os.path.join(out, "tiny-llama-bf16"))
    b = load_checkpoint(os.path.join(out, "tiny-llama-f32-3shard"))
    assert list(a) == list(b) == list(base_f)
    for n in a:
        assert a[n][0] == "BF16" and b[n][0] == "F32" and np.array_equal(a[n][1], b[n][1]), n
    for s in (1, 2):
        f = load_checkpoint(os.path.join(out, f"tiny-llama-bf16-ft{s}"))
        d = np.concatenate([f[n][1].ravel() - a[n][1].ravel() for n in a])
        assert 0.003 < d.std() < 0.007, d.std()
    try:
        from safetensors.numpy import load_file
        folder = os.path.join(out, "tiny-llama-f32-3shard")
        for fn in sorted(os.listdir(folder)):
            if fn.endswith(".safetensors"):
                for n, v in load_file(os.path.join(folder, fn)).items():
                    assert np.array_equal(v, base_f[n]), n
    except ImportError:
        print("make_fixtures: safetensors not installed, skipped official-reader check")
    try:
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(os.path.join(out, "tiny-llama-bf16", "tokenizer.json"))
        enc = tok.encode(TEST_TEXT)
        assert enc.ids[0] == 1 and enc.tokens[1:] == list(TEST_TEXT), enc.tokens
        assert tok.decode(enc.ids) == TEST_TEXT
        assert tok.get_vocab_size() <= DIMS["vocab"]
    except ImportError:
        print("make_fixtures: tokenizers not installed, skipped tokenizer check")
    for d in sorted(os.listdir(out)):
        p = os.path.join(out, d)
        if os.path.isdir(p):
            size = sum(os.path.getsize(os.path.join(p, f)) for f in os.listdir(p))
            assert size < 200_000, (d, size)
            print(f"make_fixtures: {d}: {size} bytes")


if __name__ == "__main__":
    main()
