#!/usr/bin/env python3
"""Reference chat-template renderings from Hugging Face `transformers` for tests/rl_chat.rs.

    python chat_ref.py < request.json > response.json

request {"cmd": "make", ...} builds a tokenizer folder the way a model ships one:
    {"cmd": "make", "dir": DIR, "kind": "bytelevel" | "metaspace", "corpus": [str, ...],
     "specials": [str, ...], "bos": str | null, "eos": str, "pad": str | null,
     "bos_postprocess": bool, "templates": {"default": FILE, NAME: FILE, ...},
     "store": "jinja" | "config" | "list" | "none"}
  A BPE tokenizer trained (tokenizers' BpeTrainer, 400 tokens) on the corpus: "bytelevel" is
  GPT-2-style byte-level BPE (the Llama-3 / Qwen kind), "metaspace" SentencePiece-style with "▁"
  for spaces (the Gemma kind). The special tokens are added tokens; with "bos_postprocess" the
  post-processor puts BOS in front of every encoding (as Llama's and Gemma's do). It is saved with
  transformers' `PreTrainedTokenizerFast(...).save_pretrained(DIR)`, then the templates are stored
  as "store" says: "jinja" chat_template.jinja (+ additional_chat_templates/NAME.jinja for the
  others), "config" the default template as the string `chat_template` of tokenizer_config.json,
  "list" every template as tokenizer_config.json's list [{"name", "template"}], "none" no template.
  Response: {"files": [names in DIR]}.

request {"cmd": "apply", "dir": DIR, "cases": [...], "plain": [str, ...]}:
    each case {"messages": [...], "add_generation_prompt": bool, "chat_template": NAME | null}
  loads DIR with `AutoTokenizer.from_pretrained` and returns, per case,
  {"ids": apply_chat_template(..., tokenize=True)["input_ids"],
   "text": apply_chat_template(..., tokenize=False)} or {"error": message} when transformers
  raises; and for each plain text its ids with special tokens (`tokenizer(text)["input_ids"]`).
  Response: {"cases": [...], "plain": [[...], ...], "transformers": version}.

request {"cmd": "model", "dir": DIR, "seed": int, "eos_tokens": [str, ...]}:
  puts a random tiny `LlamaForCausalLM` into the tokenizer folder DIR (vocabulary = the
  tokenizer's, hidden 64, 2 layers, 4 heads / 2 KV heads, 256 positions, weights from
  `torch.manual_seed(seed)` with std 0.2 so that greedy choices are clear-cut), saved with
  `save_pretrained` (f32 safetensors); generation_config.json's eos_token_id holds the ids of
  "eos_tokens", config.json's the first of them. Response: {"eos_ids": [...]}.

request {"cmd": "generate", "dir": DIR, "prompts": [{"prompt": str} | {"messages": [...]}],
         "max_new_tokens": n}:
  transformers' greedy `generate` (f32, eager attention, do_sample=False), each prompt alone
  (no padding): a conversation encoded by `apply_chat_template(add_generation_prompt=True)`, a
  plain prompt by `tokenizer(text)`; stops at generation_config's EOS ids. Response:
  {"prompt_ids": [[...], ...], "new_ids": [[...], ...]} (new tokens, EOS included).

request {"cmd": "batch", "requests": [request, ...]}: runs them in order in this one process
  (transformers is imported once). Response: {"responses": [response, ...]}.

Needs the venv of scripts/setup-torch.sh (torch, transformers, tokenizers, jinja2).
"""
import json
import shutil
import sys
from pathlib import Path

try:
    import transformers
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging
except ImportError as e:  # pragma: no cover - environment problem, reported clearly
    sys.stderr.write(
        f"chat_ref.py: cannot import transformers/tokenizers ({e}); "
        "run `source scripts/setup-torch.sh` first (it exports WARP_TORCH_PYTHON)\n"
    )
    sys.exit(3)


def build_tokenizer(req):
    specials = req["specials"]
    if req["kind"] == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    elif req["kind"] == "metaspace":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = sorted(set("".join(req["corpus"]).replace(" ", "▁")) | {"▁"})
        if "<unk>" not in specials:
            specials = specials + ["<unk>"]
    else:
        raise SystemExit(f"unknown tokenizer kind {req['kind']!r}")
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(req["corpus"], trainer)
    bos = req.get("bos")
    if req.get("bos_postprocess") and bos:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    elif req["kind"] == "bytelevel":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def make(req):
    out = Path(req["dir"])
    if out.exists():
        shutil.rmtree(out)
    tok = build_tokenizer(req)
    kwargs = {"eos_token": req["eos"]}
    if req.get("bos"):
        kwargs["bos_token"] = req["bos"]
    if req.get("pad"):
        kwargs["pad_token"] = req["pad"]
    if req["kind"] == "metaspace":
        kwargs["unk_token"] = "<unk>"
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    hf.save_pretrained(str(out))
    # Store the templates as the request says (whatever save_pretrained wrote is replaced).
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("chat_template", None)
    for stale in [out / "chat_template.jinja", out / "additional_chat_templates"]:
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    templates = {name: Path(f).read_text() for name, f in req.get("templates", {}).items()}
    store = req["store"]
    if store == "jinja":
        for name, text in templates.items():
            if name == "default":
                (out / "chat_template.jinja").write_text(text)
            else:
                (out / "additional_chat_templates").mkdir(exist_ok=True)
                (out / "additional_chat_templates" / f"{name}.jinja").write_text(text)
    elif store == "config":
        cfg["chat_template"] = templates["default"]
    elif store == "list":
        cfg["chat_template"] = [{"name": n, "template": t} for n, t in templates.items()]
    elif store != "none":
        raise SystemExit(f"unknown store {store!r}")
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    return {"files": sorted(p.name for p in out.iterdir())}


def apply(req):
    tok = AutoTokenizer.from_pretrained(req["dir"])
    cases = []
    for case in req.get("cases", []):
        kw = {"add_generation_prompt": case.get("add_generation_prompt", False)}
        if case.get("chat_template") is not None:
            kw["chat_template"] = case["chat_template"]
        try:
            text = tok.apply_chat_template(case["messages"], tokenize=False, **kw)
            ids = tok.apply_chat_template(case["messages"], tokenize=True, **kw)["input_ids"]
            cases.append({"ids": list(ids), "text": text})
        except Exception as e:  # the error is the result: the test checks we fail too
            cases.append({"error": f"{type(e).__name__}: {e}"})
    plain = [list(tok(t)["input_ids"]) for t in req.get("plain", [])]
    return {"cases": cases, "plain": plain, "transformers": transformers.__version__}


def model(req):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(req["dir"])
    eos = [tok.convert_tokens_to_ids(t) for t in req["eos_tokens"]]
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=eos[0],
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(req["seed"])
    m = LlamaForCausalLM(cfg).eval()
    m.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=eos, pad_token_id=tok.pad_token_id
    )
    m.save_pretrained(req["dir"], safe_serialization=True)
    return {"eos_ids": eos}


def generate(req):
    import torch
    from transformers import AutoModelForCausalLM

    tok = AutoTokenizer.from_pretrained(req["dir"])
    m = AutoModelForCausalLM.from_pretrained(
        req["dir"], dtype=torch.float32, attn_implementation="eager"
    ).eval()
    prompt_ids, new_ids = [], []
    for p in req["prompts"]:
        if "messages" in p:
            ids = tok.apply_chat_template(p["messages"], add_generation_prompt=True)["input_ids"]
        else:
            ids = tok(p["prompt"])["input_ids"]
        x = torch.tensor([ids])
        with torch.no_grad():
            out = m.generate(
                x,
                attention_mask=torch.ones_like(x),
                do_sample=False,
                max_new_tokens=req["max_new_tokens"],
            )
        prompt_ids.append(list(ids))
        new_ids.append(out[0, len(ids):].tolist())
    return {"prompt_ids": prompt_ids, "new_ids": new_ids}


def run(req):
    if req["cmd"] == "batch":
        return {"responses": [run(r) for r in req["requests"]]}
    if req["cmd"] == "make":
        resp = make(req)
    elif req["cmd"] == "apply":
        resp = apply(req)
    elif req["cmd"] == "model":
        resp = model(req)
    elif req["cmd"] == "generate":
        resp = generate(req)
    else:
        raise SystemExit(f"unknown cmd {req['cmd']!r}")
    return resp


def main():
    hf_logging.set_verbosity_error()
    json.dump(run(json.load(sys.stdin)), sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
