#!/usr/bin/env python3
"""Reference gradients of warp-rl's LoRA updates (`warp rl --lora R`), for tests/it/rl_lora.rs.

    python lora_rl_ref.py < request.json > response.json

request: {"jobs": [{"base": DIR, "policy": ADAPTER, "old": ADAPTER, "anchor": ADAPTER,
                    "out": FILE.safetensors, "double": false, "pairs": [[prompt ids, completion ids], ...],
                    "rewards": [...], "n": 4, "baseline": "grpo" | ..., "beta": 0.1,
                    "temperature": 0.9, "length_penalty": 0.0, "clip_eps": 0.2}, ...]}
response: [{"loss": L, "clipped": share of tokens whose clipped branch is taken}, ...]
and, per job, the gradient of every LoRA factor of `policy` in `out` (f32, by PEFT key).

The base is read by transformers' `LlamaForCausalLM` (f32, eager attention). An adapter folder
(adapter_config.json: r, lora_alpha, use_rslora, target_modules; adapter_model.safetensors:
`base_model.model.<module>.lora_A.weight` [r, in] and `lora_B.weight` [out, r]) is applied by
replacing each target nn.Linear's forward with `W x + s * B (A x)`, s = lora_alpha / r (or
/ sqrt(r) with rsLoRA), A and B leaf tensors of their own: written here from the definition,
neither PEFT nor warp. The loss is grpo_ref.py's (same definitions, its functions reused).
With "double" everything is float64: a reference for the rounding of an f32 implementation.
"""
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:
    import torch
    from safetensors.torch import load_file, save_file
    from transformers.utils import logging as hf_logging

    from grpo_ref import advantages, load
except ImportError as e:  # pragma: no cover - environment problem, reported clearly
    sys.stderr.write(
        f"lora_rl_ref.py: cannot import torch/transformers ({e}); "
        "run `source scripts/setup-torch.sh` first (it exports WARP_TORCH_PYTHON)\n"
    )
    sys.exit(3)

PREFIX = "base_model.model."


def read_adapter(path, dtype):
    """(scale, {module path: (A, B)}) of an adapter folder; A and B as leaf tensors."""
    with open(os.path.join(path, "adapter_config.json")) as f:
        cfg = json.load(f)
    r, alpha = cfg["r"], cfg["lora_alpha"]
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    tensors = load_file(os.path.join(path, "adapter_model.safetensors"))
    factors = {}
    for key, t in tensors.items():
        for which, suffix in (("A", ".lora_A.weight"), ("B", ".lora_B.weight")):
            if key.endswith(suffix):
                module = key[len(PREFIX) : -len(suffix)]
                factors.setdefault(module, {})[which] = t.to(dtype).clone().requires_grad_(True)
    targets = cfg["target_modules"]
    if sorted(factors) != sorted(targets):
        raise SystemExit(f"lora_rl_ref.py: {path}: factors of {sorted(factors)}, targets {targets}")
    return scale, {m: (f["A"], f["B"]) for m, f in factors.items()}


def adapted(base_dir, adapter_dir, double):
    """The base model with the adapter applied, and the adapter's factors by PEFT key."""
    dtype = torch.float64 if double else torch.float32
    model = load(base_dir).to(dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    scale, factors = read_adapter(adapter_dir, dtype)
    modules = dict(model.named_modules())
    for name, (a, b) in factors.items():
        lin = modules[name]
        if not isinstance(lin, torch.nn.Linear):
            raise SystemExit(f"lora_rl_ref.py: {name} is not a Linear")
        if a.shape != (a.shape[0], lin.in_features) or b.shape != (lin.out_features, a.shape[0]):
            raise SystemExit(f"lora_rl_ref.py: {name}: A {tuple(a.shape)}, B {tuple(b.shape)}")

        def forward(x, lin=lin, a=a, b=b):
            return torch.nn.functional.linear(x, lin.weight, lin.bias) + scale * ((x @ a.T) @ b.T)

        lin.forward = forward
    named = {}
    for name, (a, b) in factors.items():
        named[f"{PREFIX}{name}.lora_A.weight"] = a
        named[f"{PREFIX}{name}.lora_B.weight"] = b
    return model, named


def token_logprobs(model, pairs, temperature):
    """Per pair, the log-probabilities [len(completion)] of its completion tokens, in the
    model's dtype (grpo_ref.py's, without its cast of the logits to f32)."""
    out = []
    for prompt, completion in pairs:
        if not completion:
            out.append(torch.zeros(0))
            continue
        ids = torch.tensor([prompt + completion])
        logits = model(input_ids=ids, use_cache=False).logits[0]
        at = logits[len(prompt) - 1 : len(prompt) - 1 + len(completion)] / temperature
        lp = torch.log_softmax(at, dim=-1)
        out.append(lp.gather(-1, torch.tensor(completion).unsqueeze(-1)).squeeze(-1))
    return out


def job(j):
    pairs = [(list(p), list(c)) for p, c in j["pairs"]]
    temperature = j["temperature"]
    double = bool(j.get("double"))
    with torch.no_grad():
        old = token_logprobs(adapted(j["base"], j["old"], double)[0], pairs, temperature)
        anchor = token_logprobs(adapted(j["base"], j["anchor"], double)[0], pairs, temperature)
    r = torch.tensor(j["rewards"], dtype=torch.float64)
    log_ratio = torch.tensor(
        [float(o.sum() - a.sum()) for o, a in zip(old, anchor)], dtype=torch.float64
    )
    lens = torch.tensor([len(c) for _, c in pairs], dtype=torch.float64)
    r_beta = r - j["beta"] * log_ratio - j["length_penalty"] * lens
    adv = advantages(r_beta, j["n"], j["baseline"])
    adv = adv if double else adv.float()
    policy, factors = adapted(j["base"], j["policy"], double)
    lp = token_logprobs(policy, pairs, temperature)
    eps = j["clip_eps"]
    loss = torch.zeros((), dtype=torch.float64 if double else torch.float32)
    clipped = tokens = 0
    for a, cur, o in zip(adv, lp, old):
        if cur.numel() == 0:
            continue
        rho = torch.exp(cur - o)
        loss = loss + torch.min(rho * a, torch.clamp(rho, 1 - eps, 1 + eps) * a).sum()
        with torch.no_grad():
            clipped += int((((a > 0) & (rho > 1 + eps)) | ((a < 0) & (rho < 1 - eps))).sum())
            tokens += cur.numel()
    loss = -loss / len(pairs)
    loss.backward()
    grads = {}
    for key, t in factors.items():
        if t.grad is None:
            raise SystemExit(f"lora_rl_ref.py: {key} received no gradient")
        grads[key] = t.grad.detach().contiguous()
    for name, p in policy.named_parameters():
        if p.grad is not None:
            raise SystemExit(f"lora_rl_ref.py: the frozen base parameter {name} got a gradient")
    save_file({k: g.double() if double else g for k, g in grads.items()}, j["out"])
    return {"loss": float(loss), "clipped": clipped / tokens}


def main() -> int:
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)
    req = json.load(sys.stdin)
    json.dump([job(j) for j in req["jobs"]], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
