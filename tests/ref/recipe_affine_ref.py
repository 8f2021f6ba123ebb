#!/usr/bin/env python3
"""Independent float64 reference for mergekit's affine recipe methods (issue 25).

    python recipe_affine_ref.py SPEC.json

SPEC: {"method": "linear" | "task_arithmetic", "base": PATH (task_arithmetic), "layers": L,
       "models": [{"path": PATH, "weight": SETTING}, ...], "normalize": bool, "lambda": x,
       "out": OUT.safetensors}

A SETTING is a number, a gradient (a list of numbers, interpolated over the layers: layer N of
L is at t = N / (L - 1), tensors outside the layers at t = 0) or a list of conditionals
[{"filter": SUBSTRING or "*", "value": ...}, {"value": ...}] (the first whose filter is absent,
"*" or in the tensor's name). Per tensor, in float64:

    linear:           sum_m w_m x_m / sum_m w_m   (normalize)   or   sum_m w_m x_m
    task_arithmetic:  x_0 + lambda * sum_m w_m (x_m - x_0) [/ sum_m w_m when normalize]

Floats are written as F64, other tensors copied from the first input. The inputs are usually the
float64 materialisations of LoRA adapters (lora_ref.py). Own code (numpy, st.py), not warp's or
mergekit's.
"""
import json
import os
import re
import sys
from collections import OrderedDict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from st import FLOATS, load_checkpoint, write_file  # noqa: E402

LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def position(name, layers):
    m = LAYER.search(name)
    if m is None:
        return 0.0
    return int(m.group(1)) / (layers - 1) if layers > 1 else 1.0


def value(setting, name, t):
    if isinstance(setting, (int, float)):
        return float(setting)
    if setting and isinstance(setting[0], dict):
        for c in setting:
            f = c.get("filter")
            if f is None or f == "*" or f in name:
                return value(c["value"], name, t)
        raise SystemExit(f"recipe_affine_ref: no conditional matches {name}")
    v = [float(x) for x in setting]
    return float(np.interp(t, np.linspace(0.0, 1.0, len(v)), v))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as f:
        spec = json.load(f)
    method = spec["method"]
    models = [load_checkpoint(m["path"]) for m in spec["models"]]
    base = load_checkpoint(spec["base"]) if method == "task_arithmetic" else None
    first = base if base is not None else models[0]
    out = OrderedDict()
    for name, (dt, arr) in first.items():
        if dt not in FLOATS:
            out[name] = (dt, arr)
            continue
        t = position(name, spec["layers"])
        w = [value(m["weight"], name, t) for m in spec["models"]]
        xs = [ck[name][1].astype(np.float64) for ck in models]
        if method == "linear":
            v = sum(wm * xm for wm, xm in zip(w, xs))
            if spec.get("normalize", True):
                v = v / sum(w)
        elif method == "task_arithmetic":
            x0 = arr.astype(np.float64)
            d = sum(wm * (xm - x0) for wm, xm in zip(w, xs))
            if spec.get("normalize", False) and abs(sum(w)) >= 1e-8:
                d = d / sum(w)
            v = x0 + spec.get("lambda", 1.0) * d
        else:
            raise SystemExit(f"recipe_affine_ref: unknown method {method}")
        out[name] = ("F64", v)
    write_file(spec["out"], out, {"format": "pt"})
    print(f"recipe_affine_ref: wrote {spec['out']}")


if __name__ == "__main__":
    main()
