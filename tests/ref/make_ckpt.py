#!/usr/bin/env python3
"""Write random *related* tiny Llama checkpoints for merge tests: DIR/init, DIR/p1..pM.

Kinds (deltas d_m = p_m - init, as stored in the chosen dtype):
  random        p_m = init + 0.01*noise_m (independent noise)
  identical     all p_m equal (init + 0.01*noise)
  parallel      d_m = m * d_1 exactly (c_m = m > 0)
  antiparallel  d_2 = -d_1 exactly (M = 2)
  zero          d_1 = 0 exactly (p_2.. random)
  orthogonal    d_1 . d_2 = 0 and |d_1| = |d_2| exactly in every tensor (M = 2):
                d_1 lives on even flat indices, d_2 on odd ones, same multiset of magnitudes
The exact kinds put init and every p_m on the grid k * 2^-12 with |k| <= 255, which every
supported dtype (bf16: 8 significant bits) represents exactly, so the deltas are exact in float64.
"""
import argparse
import json
import os
import sys
from collections import OrderedDict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from st import bf16_bits_to_f32, f64_to_bf16_bits, write_checkpoint  # noqa: E402

DTYPES = {"bf16": ("BF16", "bfloat16"), "f16": ("F16", "float16"), "f32": ("F32", "float32")}
GRID = 2.0 ** -12


def llama_shapes(vocab, hidden, inter, layers, heads, kv_heads):
    hd = hidden // heads
    s = OrderedDict([("model.embed_tokens.weight", (vocab, hidden))])
    for i in range(layers):
        p = f"model.layers.{i}."
        s[p + "self_attn.q_proj.weight"] = (heads * hd, hidden)
        s[p + "self_attn.k_proj.weight"] = (kv_heads * hd, hidden)
        s[p + "self_attn.v_proj.weight"] = (kv_heads * hd, hidden)
        s[p + "self_attn.o_proj.weight"] = (hidden, heads * hd)
        s[p + "mlp.gate_proj.weight"] = (inter, hidden)
        s[p + "mlp.up_proj.weight"] = (inter, hidden)
        s[p + "mlp.down_proj.weight"] = (hidden, inter)
        s[p + "input_layernorm.weight"] = (hidden,)
        s[p + "post_attention_layernorm.weight"] = (hidden,)
    s["model.norm.weight"] = (hidden,)
    s["lm_head.weight"] = (vocab, hidden)
    return s


def llama_config(vocab, hidden, inter, layers, heads, kv_heads, torch_dtype, max_pos=64):
    return OrderedDict([
        ("architectures", ["LlamaForCausalLM"]), ("attention_bias", False), ("attention_dropout", 0.0),
        ("bos_token_id", 1), ("eos_token_id", 2), ("pad_token_id", 0), ("head_dim", hidden // heads),
        ("hidden_act", "silu"), ("hidden_size", hidden), ("initializer_range", 0.02),
        ("intermediate_size", inter), ("max_position_embeddings", max_pos), ("mlp_bias", False),
        ("model_type", "llama"), ("num_attention_heads", heads), ("num_hidden_layers", layers),
        ("num_key_value_heads", kv_heads), ("pretraining_tp", 1), ("rms_norm_eps", 1e-05),
        ("rope_scaling", None), ("rope_theta", 10000.0), ("tie_word_embeddings", False),
        ("torch_dtype", torch_dtype), ("transformers_version", "4.44.2"), ("use_cache", True),
        ("vocab_size", vocab)])


def quantize(x, st_dtype):
    """float64 -> float64 values exactly representable in st_dtype (RNE)."""
    if st_dtype == "BF16":
        return bf16_bits_to_f32(f64_to_bf16_bits(x)).astype(np.float64)
    return x.astype({"F16": np.float16, "F32": np.float32}[st_dtype]).astype(np.float64)


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def build(kind, m, shapes, rng, dt):
    """-> (init dict, [p_1..p_M] dicts), name -> float64 array (representable in dt)."""
    if kind in ("antiparallel", "orthogonal") and m != 2:
        sys.exit(f"make_ckpt: --kind {kind} needs --m 2")
    q = lambda x: quantize(x, dt)  # noqa: E731
    if kind in ("random", "identical", "zero"):
        init = {n: q(rng.normal(0, 0.02, s)) for n, s in shapes.items()}
        pols = [{n: q(init[n] + 0.01 * rng.normal(0, 1, s)) for n, s in shapes.items()} for _ in range(m)]
        if kind == "identical":
            pols = [pols[0]] * m
        if kind == "zero":
            pols[0] = dict(init)
        return init, pols
    # exact kinds: integer grid, value = k * GRID with |k| <= 255
    a = {n: np.clip(np.round(rng.normal(0, 0.02, s) / GRID), -127, 127) for n, s in shapes.items()}
    init = {n: a[n] * GRID for n in shapes}
    pols = [dict() for _ in range(m)]
    for n, s in shapes.items():
        if kind == "parallel":
            lim = 128 // m
            k = np.clip(np.round(rng.normal(0, 0.01, s) / GRID), -lim, lim)
            for i in range(m):
                pols[i][n] = (a[n] + (i + 1) * k) * GRID
        elif kind == "antiparallel":
            k = np.clip(np.round(rng.normal(0, 0.01, s) / GRID), -128, 128)
            pols[0][n], pols[1][n] = (a[n] + k) * GRID, (a[n] - k) * GRID
        elif kind == "orthogonal":
            size = int(np.prod(s))
            n_odd = size // 2
            mags = np.clip(np.abs(np.round(rng.normal(0, 0.01, n_odd) / GRID)), 1, 128)
            d1, d2 = np.zeros(size), np.zeros(size)
            d1[0:2 * n_odd:2] = mags * rng.choice([-1.0, 1.0], n_odd)
            d2[1::2] = rng.permutation(mags) * rng.choice([-1.0, 1.0], n_odd)
            pols[0][n] = (a[n] + d1.reshape(s)) * GRID
            pols[1][n] = (a[n] + d2.reshape(s)) * GRID
        else:
            sys.exit(f"make_ckpt: unknown kind {kind}")
    for d in [init] + pols:  # the grid must be exactly representable
        for n in d:
            assert np.array_equal(q(d[n]), d[n]), n
    return init, pols


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--m", type=int, required=True, help="number of policies p1..pM")
    ap.add_argument("--dtype", choices=list(DTYPES), required=True)
    ap.add_argument("--shards", type=int, default=1, help="1 = single model.safetensors")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kind", default="random",
                    choices=["random", "identical", "parallel", "antiparallel", "zero", "orthogonal"])
    ap.add_argument("--with-int", action="store_true", help="add I64 model.position_ids (arange)")
    a = ap.parse_args()
    dims = dict(vocab=40, hidden=32, inter=48, layers=2, heads=4, kv_heads=2)
    dt, torch_dtype = DTYPES[a.dtype]
    shapes = llama_shapes(**dims)
    init, pols = build(a.kind, a.m, shapes, np.random.default_rng(a.seed), dt)
    config = llama_config(**dims, torch_dtype=torch_dtype)
    for name, d in [("init", init)] + [(f"p{i + 1}", p) for i, p in enumerate(pols)]:
        folder = os.path.join(a.out, name)
        tensors = OrderedDict((n, (dt, d[n])) for n in shapes)
        if a.with_int:
            tensors["model.position_ids"] = ("I64", np.arange(64, dtype=np.int64).reshape(1, 64))
        write_checkpoint(folder, tensors, shards=a.shards, metadata={"format": "pt"})
        write_json(os.path.join(folder, "config.json"), config)
    print(f"make_ckpt: wrote init + {a.m} policies ({a.kind}, {a.dtype}, {a.shards} shard(s)) to {a.out}")


if __name__ == "__main__":
    main()
