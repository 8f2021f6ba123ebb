"""TRL's `RLOOTrainer` on the models of bench/rl_scale.sh: the baseline that `warp-rl` is measured
against there (same model folder, prompts, reward program and settings).

One optimizer step = `--batch` prompts × `-n` completions, generated at once (transformers
`generate` with its KV cache; `generation_batch_size` = batch × n), scored and back-propagated in
micro-batches of `--micro-batch` sequences (`per_device_train_batch_size`; gradient accumulation
over batch × n / micro-batch of them), as `warp-rl --micro-batch`. The reward is the same program
as warp-rl's `cmd:` reward, run the same way: one process per batch, JSONL {prompt, completion}
on stdin, one number per line back. β, temperature, Adam lr with 10 warm-up steps, gradient clip
1, no weight decay, `num_iterations` 1; logging, evaluation, checkpoints and gradient
checkpointing off. `--device cuda --bf16` trains in bf16 autocast on the GPU (TRL's own mixed
precision: f32 weights and optimizer).

Prints one JSON line: per-step samples/s (wall time between consecutive `on_step_end` callbacks),
the shares of the kept steps' time spent in generation and in the scoring forwards, generated
tokens/s inside `generate`, peak GPU memory (CUDA), versions. Peak RSS is measured from outside
(/usr/bin/time). Runs in the TRL venv (scripts/setup-trl.sh, or the one bench/rl_step.sh makes).
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="HF model folder (with tokenizer.json)")
    ap.add_argument("--prompts", required=True, help='JSONL, one {"prompt": …} per line')
    ap.add_argument("--reward", required=True, help="reward program and its arguments")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--skip", type=int, default=1, help="warm-up steps left out of the median")
    ap.add_argument("--batch", type=int, default=16, help="prompts per step")
    ap.add_argument("-n", type=int, default=4, help="completions per prompt")
    ap.add_argument("--micro-batch", type=int, default=64, help="sequences per backward pass")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.9)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    samples = a.batch * a.n
    if samples % a.micro_batch:
        sys.exit(f"--micro-batch {a.micro_batch} must divide {samples} samples per step")

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
    # Enough rows (cycled) for every step, so the dataloader never restarts inside the run.
    need = a.steps * a.batch
    rows = [{"prompt": prompts[i % len(prompts)]} for i in range(max(need, len(prompts)))]
    ds = datasets.Dataset.from_list(rows)

    program = a.reward.split()
    seen = {"n": 0, "tokens": 0}

    def reward(prompts, completions, completion_ids, **_):
        seen["n"] += len(completions)
        seen["tokens"] += sum(len(c) for c in completion_ids)
        lines = "".join(json.dumps({"prompt": p, "completion": c}) + "\n"
                        for p, c in zip(prompts, completions))
        out = subprocess.run(program, input=lines, capture_output=True, text=True, check=True)
        return [float(x) for x in out.stdout.split()]

    tok = PreTrainedTokenizerFast.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)

    class Timer(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if a.device == "cuda":
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

    timer = Timer()
    cfg = RLOOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-scale-"),
        use_cpu=a.device == "cpu",
        bf16=a.bf16,
        fp16=False,
        gradient_checkpointing=False,
        per_device_train_batch_size=a.micro_batch,
        gradient_accumulation_steps=samples // a.micro_batch,
        num_generations=a.n,
        max_steps=a.steps,
        max_completion_length=a.max_new_tokens,
        temperature=a.temperature,
        beta=a.beta,
        learning_rate=a.lr,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=10,
        optim="adamw_torch",
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
    trainer = RLOOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=ds,
                          processing_class=tok, callbacks=[timer])

    phase = {"generate": 0.0, "score_nograd": 0.0, "score_grad": 0.0}
    gen_tokens = [0]

    def timed(fn, name_of, count_tokens=False):
        def wrapper(*args, **kw):
            if a.device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            try:
                out = fn(*args, **kw)
                return out
            finally:
                if a.device == "cuda":
                    torch.cuda.synchronize()
                if len(timer.ends) >= a.skip:
                    phase[name_of()] += time.perf_counter() - t
                    if count_tokens:
                        gen_tokens[0] += samples * a.max_new_tokens
        return wrapper

    trainer._generate = timed(trainer._generate, lambda: "generate", count_tokens=True)
    trainer._get_per_token_logps_and_entropies = timed(
        trainer._get_per_token_logps_and_entropies,
        lambda: "score_grad" if torch.is_grad_enabled() else "score_nograd")
    if a.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()

    ends = [timer.t0] + timer.ends
    step_s = [b - e for e, b in zip(ends, ends[1:])]
    sps = [samples / s for s in step_s]
    kept = sps[a.skip:]
    kept_s = sum(step_s[a.skip:])
    print(json.dumps({
        "impl": "trl",
        "samples_per_step": samples,
        "micro_batch": a.micro_batch,
        "median_samples_per_s": statistics.median(kept) if kept else None,
        "samples_per_s": [round(x, 3) for x in sps],
        "phase_share": {k: round(v / kept_s, 4) for k, v in phase.items()} if kept else None,
        # Upper bound: every sequence counted at max_new_tokens (random models rarely stop).
        "generate_tokens_per_s": gen_tokens[0] / phase["generate"] if phase["generate"] else None,
        "mean_completion_tokens": seen["tokens"] / max(seen["n"], 1),
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if a.device == "cuda" else None,
        "threads": torch.get_num_threads(),
        "versions": {"trl": trl.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__},
    }))


if __name__ == "__main__":
    sys.exit(main())
