#!/usr/bin/env python3
"""mergekit 0.1.5 as the independent reference of `warp merge` (tests/it/merge_recipe.rs).

    python mergekit_ref.py < request.json > response.json

request: {"op": "models", "dir": D, "families": [...]}  makes tiny checkpoints with transformers:
           per family a base (random init from a config) and fine-tunes base + N(0, σ²) noise of
           different seeds, all saved by `save_pretrained` in bf16, sharded;
         {"op": "merge", "jobs": [{"recipe": YAML, "out": DIR}, ...]}  runs mergekit's run_merge
           on each recipe (CPU, one process);
         {"op": "compare", "pairs": [{"warp": DIR, "ref": DIR, "ties": {...} | null}, ...]}
           compares two outputs element by element: the largest difference in bf16 ulps of the
           reference value, per pair; with "ties" (the selection of TIES/breadcrumbs: base,
           models, density, gamma) elements whose |δ_m| equals a selection threshold of some
           model are counted apart (both tools keep exactly k elements, but choose among equal
           magnitudes differently: warp by index, torch by its sort);
         {"op": "logits", "dirs": [D1, D2], "ids": [[...]]}  loads each with transformers and
           returns the logits' largest absolute difference.
Needs the venv of scripts/setup-mergekit.sh.
"""
import json
import os
import sys

try:
    import torch
    import yaml
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging
except ImportError as e:  # pragma: no cover
    sys.stderr.write(f"mergekit_ref.py: {e}; run `source scripts/setup-mergekit.sh` first\n")
    sys.exit(3)


def load_dir(d):
    out = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(d, f)))
    return out


def models(req):
    made = {}
    for fam in req["families"]:
        fields = dict(fam["config"])
        model_type = fields.pop("model_type")
        cfg = AutoConfig.for_model(model_type, **fields)
        torch.manual_seed(fam.get("seed", 0))
        base = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)
        names = []
        for i in range(fam["finetunes"] + 1):
            name = f"{fam['name']}-base" if i == 0 else f"{fam['name']}-ft{i}"
            m = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)
            m.load_state_dict(base.state_dict())
            if i > 0:
                g = torch.Generator().manual_seed(1000 * i + fam.get("seed", 0))
                with torch.no_grad():
                    for p in m.parameters():
                        noise = torch.randn(p.shape, generator=g) * fam.get("sigma", 0.01)
                        p.add_(noise.to(p.dtype))
            out = os.path.join(req["dir"], name)
            m.save_pretrained(out, max_shard_size=fam.get("shard", "200KB"))
            names.append(out)
        made[fam["name"]] = names
    return made


def merge(req):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    for job in req["jobs"]:
        cfg = MergeConfiguration.model_validate(yaml.safe_load(job["recipe"]))
        run_merge(cfg, job["out"], MergeOptions(quiet=True, copy_tokenizer=True,
                                                random_seed=job.get("seed", 0)))
    return {"done": len(req["jobs"])}


def ulps(w, r, scale=None):
    """|w − r| in units of the bf16 ulp at |r| (the spacing of bf16 values there); with
    `scale`, at max(|r|, |scale|) (for results that cancel to nearly zero)."""
    w = w.float()
    r = r.float()
    mag = r.abs() if scale is None else torch.maximum(r.abs(), scale.float().abs())
    mag = mag.clamp(min=2.0 ** -126)
    ulp = torch.pow(2.0, torch.floor(torch.log2(mag)) - 7)
    return (w - r).abs() / ulp


def tie_mask(name, ties, shape):
    """Elements whose |δ_m| equals one of the selection thresholds of some model (SCE: whose
    variance across the task vectors is within 1e-5 of the threshold, relatively: both tools
    compute the variance in f32, in different orders)."""
    mask = torch.zeros(shape, dtype=torch.bool)
    base = ties["_base"][name].float()
    if ties.get("variance"):
        tvs = torch.stack([m[name].float() - base for m in ties["_models"]])
        var = torch.var(tvs, dim=0, unbiased=False).reshape(-1)
        k = int(int(torch.count_nonzero(var)) * ties["variance"])
        if 0 < k < var.numel():
            cut = torch.sort(var, descending=True).values[k - 1]
            mask |= ((var - cut).abs() <= 1e-5 * cut).reshape(shape)
        return mask
    for m, d, g in zip(ties["_models"], ties["density"], ties["gamma"]):
        delta = (m[name].float() - base).abs().reshape(-1)
        n = delta.numel()
        if d >= 1:
            continue
        srt = torch.sort(delta).values
        cuts = []
        if g is None:  # magnitude: the k largest
            k = max(1, int(d * n))
            cuts.append(srt[n - k])
        else:  # outliers: ranks [bot, bot + target)
            target, top = int(d * n), int(g * n)
            bot = max(0, n - target - top)
            if bot > 0:
                cuts.append(srt[bot])
            if bot + target < n and target > 0:
                cuts.append(srt[bot + target - 1])
        for c in cuts:
            mask |= (delta == c).reshape(shape)
    return mask


def compare(req):
    res = []
    for pair in req["pairs"]:
        w, r = load_dir(pair["warp"]), load_dir(pair["ref"])
        ties = pair.get("ties")
        if ties:
            ties["_base"] = load_dir(ties["base"])
            ties["_models"] = [load_dir(m) for m in ties["models"]]
        missing = sorted(set(r) ^ set(w))
        worst, worst_name, tied, tied_diff, total = 0.0, None, 0, 0, 0
        worst_scaled = 0.0
        for name, rv in r.items():
            if name not in w:
                continue
            wv = w[name]
            if wv.shape != rv.shape or wv.dtype != rv.dtype:
                missing.append(f"{name}: {wv.dtype}{list(wv.shape)} vs {rv.dtype}{list(rv.shape)}")
                continue
            u = ulps(wv, rv)
            total += u.numel()
            if ties and name in ties["_base"]:
                t = tie_mask(name, ties, u.shape)
                tied += int(t.sum())
                tied_diff += int(((u > 1) & t).sum())
                u = torch.where(t, torch.zeros_like(u), u)
                us = torch.where(t, torch.zeros_like(u), ulps(wv, rv, ties["_base"][name]))
                worst_scaled = max(worst_scaled, float(us.max()) if us.numel() else 0.0)
            m = float(u.max()) if u.numel() else 0.0
            if m > worst:
                worst, worst_name = m, name
        res.append({"max_ulps": worst, "max_ulps_of_base": worst_scaled, "worst": worst_name,
                    "mismatch": missing,
                    "tied": tied, "tied_differing": tied_diff, "elements": total})
    return res


def logits(req):
    ids = torch.tensor(req["ids"])
    outs = []
    for d in req["dirs"]:
        m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
        m.eval()
        with torch.no_grad():
            outs.append(m(ids).logits)
    layers = [AutoConfig.from_pretrained(d).num_hidden_layers for d in req["dirs"]]
    return {"max_abs_diff": float((outs[0] - outs[1]).abs().max()),
            "max_abs": float(outs[1].abs().max()), "layers": layers}


def main():
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    req = json.load(sys.stdin)
    op = {"models": models, "merge": merge, "compare": compare, "logits": logits}[req["op"]]
    json.dump(op(req), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
