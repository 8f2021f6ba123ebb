"""Generated tokens/s of transformers' `generate` on the CPU (f32): the reference for
`examples/gen_bench.rs`, with the same prompts, settings and output format. `bench/generate.sh`
runs both interleaved.

    python bench/hf_generate.py MODEL_DIR [--batch 1] [--n 1] [--prompt-len 16] [--new-tokens 64] \
        [--reps 5] [--threads N] [--seed 0] [--attn sdpa|eager]

`--n N`: N samples of each prompt (`num_return_sequences`, as TRL's trainers sample).

Pure sampling (temperature 1, top-k off, top-p 1) with EOS stopping switched off, so every row
yields exactly --new-tokens tokens, as ours with `eos_ids` empty. One untimed warm-up call, then
one JSON line per timed call and a last line with the median.
"""

import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM


def prompt_ids(batch, length, vocab):
    # Same formula as `prompt_ids` in examples/gen_bench.rs (ids 0-2 avoided).
    return [[3 + (i * 131 + j * 17) % (vocab - 3) for j in range(length)] for i in range(batch)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attn", help="attn_implementation (default: transformers' choice)")
    a = p.parse_args()

    if a.threads is not None:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    kw = {"attn_implementation": a.attn} if a.attn else {}
    # `dtype`: transformers 5 spelling of the deprecated `torch_dtype`.
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, **kw).eval()
    n = a.new_tokens
    # No EOS: no stopping criterion and no min-length processor, the same work per step as ours
    # with `eos_ids` empty; min_new_tokens=n stays as a guard.
    model.generation_config.eos_token_id = None
    ids = torch.tensor(prompt_ids(a.batch, a.prompt_len, model.config.vocab_size))
    mask = torch.ones_like(ids)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0

    def run():
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=n,
                min_new_tokens=n,
                use_cache=True,
                pad_token_id=pad,
                num_return_sequences=a.n,
            )
        if out.shape != (a.batch * a.n, a.prompt_len + n):
            raise SystemExit(f"expected {a.batch * a.n}x{a.prompt_len + n} tokens, got {tuple(out.shape)}")

    header = {
        "impl": "transformers",
        "model": a.model,
        "batch": a.batch,
        "n": a.n,
        "prompt_len": a.prompt_len,
        "new_tokens": n,
        "threads": torch.get_num_threads(),
        "attn": model.config._attn_implementation,
    }
    run()  # warm-up, untimed
    rates = []
    for rep in range(a.reps):
        start = time.perf_counter()
        run()
        secs = time.perf_counter() - start
        rates.append(a.batch * a.n * n / secs)
        print(json.dumps({**header, "rep": rep, "seconds": round(secs, 6), "tokens_per_s": round(rates[-1], 2)}))
    print(json.dumps({**header, "reps": a.reps, "median_tokens_per_s": round(statistics.median(rates), 2)}))


if __name__ == "__main__":
    main()
