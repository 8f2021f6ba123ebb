"""A random Qwen2-shaped causal LM for the RL benchmarks (bench/rl_scale.sh), made by transformers
from a config (nothing large is committed), with a word-level tokenizer and a prompt set.

Writes OUT/model/ (config.json, model.safetensors, generation_config.json, tokenizer.json,
tokenizer_config.json) and OUT/prompts.jsonl. The vocabulary is <pad> <s> </s> <unk> then words
w4 … w{V-1}, split on whitespace; every prompt is a run of random words, its length drawn
uniformly from [--prompt-min, --prompt-max] words (BOS is added on top by the tokenizer). The
weights are transformers' own random initialisation under torch.manual_seed(--seed).

    python bench/rl_model.py -o DIR --hidden 512 --layers 6 --heads 8 --kv-heads 2 \
        --intermediate 1408 --vocab 32000 [--dtype f32|bf16] [--tied]

Prints one JSON line: the parameter count and the paths.
"""

import argparse
import json
import os
import random
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--hidden", type=int, required=True)
    ap.add_argument("--layers", type=int, required=True)
    ap.add_argument("--heads", type=int, required=True)
    ap.add_argument("--kv-heads", type=int, required=True)
    ap.add_argument("--intermediate", type=int, required=True)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--max-positions", type=int, default=512)
    ap.add_argument("--tied", action="store_true", help="tie the LM head to the embedding")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--prompts", type=int, default=256, help="lines of prompts.jsonl")
    ap.add_argument("--prompt-min", type=int, default=16)
    ap.add_argument("--prompt-max", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import Qwen2Config, Qwen2ForCausalLM

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for i in range(len(specials), a.vocab):
        vocab[f"w{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    tok.add_special_tokens(specials)

    cfg = Qwen2Config(
        vocab_size=a.vocab,
        hidden_size=a.hidden,
        intermediate_size=a.intermediate,
        num_hidden_layers=a.layers,
        num_attention_heads=a.heads,
        num_key_value_heads=a.kv_heads,
        max_position_embeddings=a.max_positions,
        tie_word_embeddings=a.tied,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        use_sliding_window=False,
    )
    torch.manual_seed(a.seed)
    model = Qwen2ForCausalLM(cfg)
    model = model.to(torch.bfloat16 if a.dtype == "bf16" else torch.float32)
    out = os.path.join(a.output, "model")
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out)
    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
                   "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
                   "model_max_length": a.max_positions}, f, indent=2)

    rng = random.Random(a.seed)
    with open(os.path.join(a.output, "prompts.jsonl"), "w") as f:
        for _ in range(a.prompts):
            n = rng.randint(a.prompt_min, a.prompt_max)
            words = " ".join(f"w{rng.randrange(len(specials), a.vocab)}" for _ in range(n))
            f.write(json.dumps({"prompt": words}) + "\n")
    print(json.dumps({"parameters": sum(p.numel() for p in model.parameters()),
                      "model": out, "prompts": os.path.join(a.output, "prompts.jsonl"),
                      "dtype": a.dtype}))


if __name__ == "__main__":
    sys.exit(main())
