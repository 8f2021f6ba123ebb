"""Samples/s of one RLOO step with TRL's `RLOOTrainer`, the baseline of bench/rl_step.sh.

Same model folder, prompts and settings as `warp-rl` in that script: 16 prompts x 4 completions
= 64 samples per step, at most 8 new tokens, temperature 0.9, beta 0.1, Adam(W) lr 1e-4, the
verifiable reward of the built-in task ("a+b=" -> 1.0 iff the completion is str(a+b)), f32 on the
CPU with a given torch thread count. TRL's per-step work: transformers `generate` (KV cache) of
the 64 completions, a no-grad policy forward (the "old" log-probs), a no-grad forward of the
frozen reference model, the reward, RLOO advantages of r - beta * sum(log pi_old - log pi_ref),
a policy forward with grad + backward, the optimizer step. Logging, evaluation, checkpointing,
progress bars and gradient checkpointing are switched off; bf16 is off.

Prints one JSON line: the median samples/s over the steps after the first `--skip`, where a step's
time is the wall time between two consecutive `on_step_end` callbacks (so it holds all the
trainer loop's per-step work), plus the per-step figures and versions.

Runs in the venv of scripts/setup-trl.sh (TRL from scripts/requirements-trl.txt on top of the
project's torch venv), which bench/rl_step.sh sources.
"""

import argparse
import json
import re
import statistics
import sys
import tempfile
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="HF model folder (LlamaForCausalLM + tokenizer.json)")
    ap.add_argument("--prompts", required=True, help='JSONL, one {"prompt": "a+b="} per line')
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--skip", type=int, default=2, help="warm-up steps left out of the median")
    ap.add_argument("--batch", type=int, default=16, help="prompts per step")
    ap.add_argument("-n", type=int, default=4, help="completions per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=0.9)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    import datasets
    import transformers
    import trl
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()

    with open(a.prompts) as f:
        prompts = [json.loads(line)["prompt"] for line in f if line.strip()]
    # Enough rows (cycled) that one epoch covers every step: the trainer then never restarts its
    # dataloader inside the timed steps.
    need = a.steps * a.batch
    rows = [{"prompt": prompts[i % len(prompts)]} for i in range(max(need, len(prompts)))]
    ds = datasets.Dataset.from_list(rows)

    pat = re.compile(r"^\s*(\d+)\s*\+\s*(\d+)\s*=\s*$")

    seen = {"n": 0, "tokens": 0, "reward": 0.0}

    def arith(prompts, completions, completion_ids, **_):
        out = []
        seen["n"] += len(completions)
        seen["tokens"] += sum(len(c) for c in completion_ids)  # EOS included, as warp-rl counts
        for p, c in zip(prompts, completions):
            m = pat.match(p)
            out.append(1.0 if m and c.strip() == str(int(m[1]) + int(m[2])) else 0.0)
        seen["reward"] += sum(out)
        return out

    tok = PreTrainedTokenizerFast.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)

    class Timer(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())

    timer = Timer()
    out = tempfile.mkdtemp(prefix="trl-rloo-")
    cfg = RLOOConfig(
        output_dir=out,
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        per_device_train_batch_size=a.batch * a.n,  # completions per step
        num_generations=a.n,
        gradient_accumulation_steps=1,
        max_steps=a.steps,
        max_completion_length=a.max_new_tokens,
        temperature=a.temperature,
        beta=a.beta,
        learning_rate=a.lr,
        lr_scheduler_type="constant_with_warmup",  # as warp-rl: linear warm-up, then constant
        warmup_steps=10,
        optim="adamw_torch",  # weight decay 0: plain Adam, as warp-rl
        max_grad_norm=1.0,
        num_iterations=1,
        logging_strategy="no",
        logging_steps=10**9,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        log_completions=False,
        dataloader_num_workers=0,
        seed=a.seed,
    )
    trainer = RLOOTrainer(
        model=model,
        reward_funcs=arith,
        args=cfg,
        train_dataset=ds,
        processing_class=tok,
        callbacks=[timer],
    )
    # Where a step's time goes: wall time inside generation and inside the scoring forwards
    # (no-grad: old + reference log-probs; with grad: the loss), summed over the kept steps and
    # printed as shares of their wall time; the rest is reward, advantages, backward, optimizer
    # and the trainer loop.
    phase = {"generate": 0.0, "score_nograd": 0.0, "score_grad": 0.0}

    def timed(fn, name_of):
        def wrapper(*args, **kw):
            t = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                if len(timer.ends) >= a.skip:
                    phase[name_of()] += time.perf_counter() - t
        return wrapper

    trainer._generate = timed(trainer._generate, lambda: "generate")
    trainer._get_per_token_logps_and_entropies = timed(
        trainer._get_per_token_logps_and_entropies,
        lambda: "score_grad" if torch.is_grad_enabled() else "score_nograd")
    trainer.train()

    ends = [timer.t0] + timer.ends
    step_s = [b - e for e, b in zip(ends, ends[1:])]
    samples = a.batch * a.n
    sps = [samples / s for s in step_s]
    kept = sps[a.skip:]
    print(json.dumps({
        "impl": "trl",
        "samples_per_step": samples,
        "steps": len(sps),
        "skip": a.skip,
        "median_samples_per_s": statistics.median(kept) if kept else None,
        "samples_per_s": [round(x, 2) for x in sps],
        # shares of the kept steps' total wall time
        "phase_share": {k: round(v / sum(step_s[a.skip:]), 4) for k, v in phase.items()}
        if kept else None,
        "mean_completion_tokens": seen["tokens"] / max(seen["n"], 1),
        "mean_reward": seen["reward"] / max(seen["n"], 1),
        "threads": torch.get_num_threads(),
        "versions": {"trl": trl.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__},
    }))


if __name__ == "__main__":
    sys.exit(main())
