#!/usr/bin/env python3
"""Reference gradients of warp-rl's policy-gradient updates (GRPO, Dr. GRPO, RLOO, REINFORCE; the
first update of a batch and the later clipped ones), for tests/it/rl_grpo.rs.

    python grpo_ref.py < request.json > response.json

request: {"jobs": [{"policy": DIR, "old": DIR, "anchor": DIR, "out": FILE.safetensors,
                    "pairs": [[prompt ids, completion ids], ...], "rewards": [...], "n": 4,
                    "baseline": "grpo" | "dr-grpo" | "rloo" | "none", "beta": 0.1,
                    "temperature": 0.9, "length_penalty": 0.0, "clip_eps": 0.2}, ...]}
response: [{"loss": L, "clipped": share of tokens whose clipped branch is taken,
            "outside": share of tokens whose ratio is outside [1 - eps, 1 + eps]}, ...]
and, per job, the gradient of every parameter of `policy` in `out` (f32, by HF name).

The models are read by transformers' `LlamaForCausalLM` (f32, eager attention); each pair is
scored alone (no padding), from the full logits. The loss is written from the definitions, with
none of warp's code or layout:
    log-probabilities at temperature T: log_softmax(logits / T) at the completion tokens;
    r_beta = r - beta * (sum_t logp_old - sum_t logp_anchor) - length_penalty * |y|;
    A per group of n: grpo (r_beta - mean) / (std (unbiased) + 1e-4), dr-grpo r_beta - mean,
      rloo r_beta - mean of the other n - 1, none r_beta;
    rho_t = exp(logp_t - logp_old_t);  loss = -(1/B) sum_i sum_t min(rho_t A_i, clamp(rho_t,
      1 - eps, 1 + eps) A_i), B the number of samples.
With `policy` = `old` every rho is 1 and the gradient is that of -(1/B) sum_i A_i log pi(y_i|x_i).

Optional job keys "kl_estimator": "topk" and "kl_topk": k (EMA-PG's top-k KL as a loss term): then
r_beta has no KL term, and the loss gains (beta/B) sum_i sum_t KL_t, at each completion position
with p = the policy's and q = the anchor's tempered distributions (full logits):
    k >= vocabulary: KL_t = sum_v p(v) (log p(v) - log q(v)), the exact KL by autograd;
    else, S = the k most likely tokens of p, y the sampled token, d = log p(y) - log q(y),
      w = p(y) / p_old(y) (no gradient):
      KL_t = sum_{v in S} p(v) (log p(v) - log q(v)) + [y not in S] w (sg(d) + (sg(d) + 1) (log p(y) - sg(log p(y)))).
The response then also gives "tail": the share of tokens outside S.

A job {"unbiased": {"vocab": V, "k": k, "seed": s}} checks the top-k estimator's math on a random
one-position distribution instead: the expectation over y ~ p of the estimator's gradient
(sum_y p(y) grad KL_t(y), computed exactly) against the gradient of the exact KL; it answers the
largest deviation for the estimator above ("with_one") and for the variant without the + 1
("without_one", the EMA-PG code's tail term), relative to the largest exact gradient.
"""
import json
import sys

try:
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging
except ImportError as e:  # pragma: no cover - environment problem, reported clearly
    sys.stderr.write(
        f"grpo_ref.py: cannot import torch/transformers ({e}); "
        "run `source scripts/setup-torch.sh` first (it exports WARP_TORCH_PYTHON)\n"
    )
    sys.exit(3)


def load(path):
    model, info = LlamaForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys")}
    if bad:
        raise SystemExit(f"grpo_ref.py: {path}: weights do not match the architecture: {bad}")
    model.eval()
    return model


def token_logprobs(model, pairs, temperature):
    """Per pair, the log-probabilities [len(completion)] of its completion tokens."""
    out = []
    for prompt, completion in pairs:
        if not completion:
            out.append(torch.zeros(0))
            continue
        ids = torch.tensor([prompt + completion])
        logits = model(input_ids=ids, use_cache=False).logits[0].float()
        at = logits[len(prompt) - 1 : len(prompt) - 1 + len(completion)] / temperature
        lp = torch.log_softmax(at, dim=-1)
        out.append(lp.gather(-1, torch.tensor(completion).unsqueeze(-1)).squeeze(-1))
    return out


def advantages(r_beta, n, baseline):
    g = r_beta.view(-1, n)
    if baseline == "none":
        return r_beta
    if baseline == "rloo":
        return (g - (g.sum(-1, keepdim=True) - g) / (n - 1)).view(-1)
    centred = g - g.mean(-1, keepdim=True)
    if baseline == "dr-grpo":
        return centred.view(-1)
    if baseline == "grpo":
        return (centred / (g.std(-1, keepdim=True) + 1e-4)).view(-1)
    raise SystemExit(f"grpo_ref.py: unknown baseline {baseline}")


def topk_kl(logp, logq, y, k, w):
    """The top-k KL estimate at each position: logp, logq [L, V], y [L], w [L] (no gradient)."""
    if k >= logp.shape[-1]:
        return (logp.exp() * (logp - logq)).sum(-1)
    top = logp.detach().topk(k, dim=-1).indices
    lp_s, lq_s = logp.gather(-1, top), logq.gather(-1, top)
    head = (lp_s.exp() * (lp_s - lq_s)).sum(-1)
    outside = (top != y.unsqueeze(-1)).all(-1).float()
    lp_y = logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    lq_y = logq.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    d = (lp_y - lq_y).detach()
    return head + outside * w * (d + (d + 1) * (lp_y - lp_y.detach())), outside


def position_logprobs(model, prompt, completion, temperature):
    ids = torch.tensor([prompt + completion])
    logits = model(input_ids=ids, use_cache=False).logits[0].float()
    at = logits[len(prompt) - 1 : len(prompt) - 1 + len(completion)] / temperature
    return torch.log_softmax(at, dim=-1)


def unbiased(u):
    g = torch.Generator().manual_seed(u["seed"])
    v, k = u["vocab"], u["k"]
    theta = (torch.randn(v, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    logq = torch.log_softmax(torch.randn(v, generator=g, dtype=torch.float64) * 2, -1)

    def grad_of(f):
        (gr,) = torch.autograd.grad(f, theta)
        return gr

    logp = torch.log_softmax(theta, -1)
    exact = grad_of((logp.exp() * (logp - logq)).sum())
    out = {}
    for name, one in (("with_one", 1.0), ("without_one", 0.0)):
        mean = torch.zeros(v, dtype=torch.float64)
        for y in range(v):
            logp = torch.log_softmax(theta, -1)
            top = logp.detach().topk(k).indices
            head = (logp[top].exp() * (logp[top] - logq[top])).sum()
            tail = 0.0 if bool((top == y).any()) else 1.0
            d = (logp[y] - logq[y]).detach()
            est = head + tail * (d + one) * logp[y]
            mean += float(logp[y].detach().exp()) * grad_of(est)
        out[name] = float((mean - exact).abs().max() / exact.abs().max())
    return out


def job(j):
    if "unbiased" in j:
        return unbiased(j["unbiased"])
    topk = j.get("kl_estimator", "sampled") == "topk"
    pairs = [(list(p), list(c)) for p, c in j["pairs"]]
    temperature = j["temperature"]
    with torch.no_grad():
        old = token_logprobs(load(j["old"]), pairs, temperature)
        anchor = token_logprobs(load(j["anchor"]), pairs, temperature)
    r = torch.tensor(j["rewards"], dtype=torch.float64)
    log_ratio = torch.tensor([float(o.sum() - a.sum()) for o, a in zip(old, anchor)], dtype=torch.float64)
    lens = torch.tensor([len(c) for _, c in pairs], dtype=torch.float64)
    beta_in_reward = 0.0 if topk else j["beta"]
    r_beta = r - beta_in_reward * log_ratio - j["length_penalty"] * lens
    adv = advantages(r_beta, j["n"], j["baseline"]).float()
    policy = load(j["policy"])
    policy.zero_grad()
    lp = token_logprobs(policy, pairs, temperature)
    eps = j["clip_eps"]
    loss = torch.zeros(())
    clipped = outside = tokens = 0
    for a, cur, o in zip(adv, lp, old):
        if cur.numel() == 0:
            continue
        rho = torch.exp(cur - o)
        loss = loss + torch.min(rho * a, torch.clamp(rho, 1 - eps, 1 + eps) * a).sum()
        with torch.no_grad():
            flat = ((a > 0) & (rho > 1 + eps)) | ((a < 0) & (rho < 1 - eps))
            clipped += int(flat.sum())
            outside += int(((rho > 1 + eps) | (rho < 1 - eps)).sum())
            tokens += cur.numel()
    loss = -loss / len(pairs)
    answer = {}
    if topk:
        policy_model, anchor_model = policy, load(j["anchor"])
        kl, outside_k, n_tok = torch.zeros(()), 0.0, 0
        for (p, c), o in zip(pairs, old):
            if not c:
                continue
            logp = position_logprobs(policy_model, p, c, temperature)
            with torch.no_grad():
                logq = position_logprobs(anchor_model, p, c, temperature)
            y = torch.tensor(c)
            lp_y = logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
            w = torch.exp(lp_y - o).detach()
            est = topk_kl(logp, logq, y, j["kl_topk"], w)
            if isinstance(est, tuple):
                est, out_mask = est
                outside_k += float(out_mask.sum())
            kl = kl + est.sum()
            n_tok += len(c)
        loss = loss + j["beta"] * kl / len(pairs)
        answer["tail"] = outside_k / n_tok
    loss.backward()
    grads = {}
    for name, p in policy.named_parameters():
        if p.grad is None:
            raise SystemExit(f"grpo_ref.py: parameter {name} received no gradient")
        grads[name] = p.grad.detach().float().contiguous()
    save_file(grads, j["out"])
    answer.update({"loss": float(loss), "clipped": clipped / tokens, "outside": outside / tokens})
    return answer


def main() -> int:
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)
    req = json.load(sys.stdin)
    json.dump([job(j) for j in req["jobs"]], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
