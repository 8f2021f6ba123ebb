#!/usr/bin/env python3
"""Reference Adam trajectory from PyTorch's own optimizer, for tests/rl_scale.rs.

    python torch_adam.py < request.json > response.json

request:  {"params": {NAME: {"shape": [...], "values": [...]}}, "grads": [{NAME: [...]}, ...]
           (one dict per step, flattened f32 values), "lr": [lr of step 1, 2, ...],
           "beta1", "beta2", "eps", "weight_decay", "clip"}
response: {"params": {NAME: [values after the last step]}, "norms": [global gradient norm of
           each step, before clipping]}

The parameters are float32 tensors updated by `torch.optim.Adam` (weight_decay 0) or
`torch.optim.AdamW` (decoupled weight decay), with the learning rate of each step set on the
param group. Clipping follows warp's rule, written out here: when clip > 0 and the global norm
sqrt(sum of squares, in float64) exceeds it, every gradient is multiplied by clip / norm. Needs
the venv of scripts/setup-torch.sh.
"""
import json
import math
import sys

try:
    import torch
except ImportError as e:  # pragma: no cover - environment problem, reported clearly
    sys.stderr.write(f"torch_adam.py: cannot import torch ({e}); source scripts/setup-torch.sh\n")
    sys.exit(3)


def main() -> int:
    req = json.load(sys.stdin)
    names = list(req["params"])
    params = {
        n: torch.tensor(req["params"][n]["values"], dtype=torch.float32)
        .reshape(req["params"][n]["shape"])
        .requires_grad_(True)
        for n in names
    }
    opt_cls = torch.optim.AdamW if req["weight_decay"] > 0 else torch.optim.Adam
    kw = {"weight_decay": req["weight_decay"]} if req["weight_decay"] > 0 else {}
    opt = opt_cls([params[n] for n in names], lr=req["lr"][0],
                  betas=(req["beta1"], req["beta2"]), eps=req["eps"], **kw)
    norms = []
    for step, grads in enumerate(req["grads"]):
        gs = {n: torch.tensor(grads[n], dtype=torch.float32).reshape(params[n].shape)
              for n in names}
        norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in gs.values()))
        norms.append(norm)
        if req["clip"] > 0 and norm > req["clip"]:
            for n in names:
                gs[n] = gs[n] * (req["clip"] / norm)
        for n in names:
            params[n].grad = gs[n]
        for group in opt.param_groups:
            group["lr"] = req["lr"][step]
        opt.step()
    json.dump({"params": {n: params[n].detach().reshape(-1).tolist() for n in names},
               "norms": norms}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
