#!/usr/bin/env python3
"""Independent float64 reference for PEFT LoRA adapters read as checkpoints (issue 25).

    python lora_ref.py --base BASE --adapter ADAPTER_DIR --out OUT.safetensors

Writes base + s·B·A for every LoRA module of the adapter (s = lora_alpha / r, or
lora_alpha / sqrt(r) with use_rslora; transposed for fan_in_fan_out and embeddings), the
adapter's full tensors (modules_to_save) in place of the base's, every other tensor of the base
as it is; floats as F64 (the exact float64 result), non-floats copied. Reads adapter_config.json
and adapter_model.safetensors with its own code (st.py), not with PEFT or warp.
"""
import argparse
import json
import math
import os
import sys
from collections import OrderedDict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from st import FLOATS, load_checkpoint, read_file, to_float64, write_file  # noqa: E402

PREFIX = "base_model.model."


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    with open(os.path.join(a.adapter, "adapter_config.json")) as f:
        cfg = json.load(f)
    r, alpha = cfg["r"], cfg.get("lora_alpha", 8)
    s = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    fifo = bool(cfg.get("fan_in_fan_out"))
    raw, _ = read_file(os.path.join(a.adapter, "adapter_model.safetensors"))
    ad = {k[len(PREFIX):]: to_float64(dt, arr) for k, (dt, arr) in raw.items()}
    base = load_checkpoint(a.base)
    out = OrderedDict()
    for n, (dt, arr) in base.items():
        out[n] = ("F64", arr) if dt in FLOATS else (dt, arr)
    used = set()
    for k in ad:
        for sa, sb, transposed in ((".lora_A.weight", ".lora_B.weight", fifo),
                                   (".lora_embedding_A", ".lora_embedding_B", True)):
            if k.endswith(sa):
                mod = k[:-len(sa)]
                A, B = ad[k], ad[mod + sb]
                d = s * (B @ A)
                if transposed:
                    d = d.T
                w = mod + ".weight"
                out[w] = ("F64", out[w][1] + d.reshape(out[w][1].shape))
                used.update([k, mod + sb])
    for k, v in ad.items():
        if k not in used:
            assert k in out, f"full tensor {k} not in the base"
            out[k] = ("F64", v)
    write_file(a.out, out, {"format": "pt"})
    print(f"lora_ref: wrote {a.out}")


if __name__ == "__main__":
    main()
