#!/usr/bin/env python3
"""warp's RL stage (WARP stage 1) on TRL's RLOOTrainer or GRPOTrainer, for models beyond one device.

    accelerate launch [--config_file python/accelerate/fsdp.yaml] python/warp_align/trl_backend.py \\
        train CONFIG.json -o OUT [--threads N] [--trl-args JSON] [--callback FILE.py] [-q]
    accelerate launch ... python/warp_align/trl_backend.py resume OUT [--steps T]
    python python/warp_align/trl_backend.py score SPEC [--timeout S] < pairs.jsonl     (one reward per line)

CONFIG.json holds warp's RL settings, the object `warp-rl` records under "config" in run.json
(a whole run.json is accepted too): model, prompts, reward, steps, batch, n, beta, mu, temperature,
max_new_tokens, lr, warmup, grad_clip, baseline, anchor, length_penalty, seed, save_every, dtype,
device, reward_timeout, updates_per_batch, clip_eps. Same meaning as in `warp-rl` (docs/RL.md);
docs/SCALE.md says what maps to what in TRL: baseline rloo runs RLOOTrainer, grpo and dr-grpo
GRPOTrainer (algorithm_args); updates_per_batch K and clip_eps are TRL's num_iterations and
epsilon. WARP's EMA anchor is TRL's reference model with sync_ref_model=True,
ref_model_sync_steps=1, ref_model_mixup_alpha=mu: after every optimizer step
ref <- (1 - mu) * ref + mu * policy (trl.trainer.callbacks.SyncRefModelCallback). With lora R
(lora_alpha, lora_targets, rslora) the policy is a PEFT LoRA adapter on the frozen init and the EMA
of its A and B is TRL's "ref" adapter, the reference log-probabilities' (see lora_policy).

OUT gets warp's run layout: run.json, metrics.jsonl, step-NNNNNN/{policy,ema,trainer}/ every
save_every steps and at the end, final/{policy,ema}/ (HF folders in f32, PEFT adapter folders
with lora; `ema` is TRL's reference model; `trainer` is TRL's own checkpoint, kept for the newest
step only). Every folder is written
under a hidden temporary name and renamed into place when complete.

Exit status: 0 done, 2 bad settings or input, 1 any other failure; one line on stderr says why.
"""

import argparse
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

PROG = "warp-trl"


class WarpError(Exception):
    """A failure explained in one line (exit status 1)."""

    code = 1


class UsageError(WarpError):
    """Bad settings or input (exit status 2)."""

    code = 2


# ---------------------------------------------------------------------------------------------
# Settings: warp's RlConfig. Their names, types, defaults and allowed values are declared once, in
# Rust (src/rl/settings.rs), and read here from its schema (src/rl/schema.rs); only what the TRL
# backend adds (its own restrictions, the range checks) is written below.

# Paths, not the built-in task's `builtin:` specs (`warp rl` resolves those before launching).
REQUIRED = ("model", "prompts")
# Accepted as a JSON object as well as its text.
OBJECT_OR_TEXT = ("trl_args",)
# LoRA (`warp rl --lora R --lora-alpha A --lora-targets NAMES --rslora`): declared in Rust with the
# rest; a warp whose schema predates them gets these defaults (LoRA off).
LORA_DEFAULTS = {"lora": None, "lora_alpha": None, "lora_targets": "all-linear", "rslora": False}
_SCHEMA = None


def rl_schema():
    """warp's RL settings' schema (`warp rl --print-schema`): from $WARP_RL_SCHEMA (set by
    `warp rl --backend trl` when it launches this file), else the warp_align package's extension
    module, else the `warp` program ($WARP_BIN, or on PATH)."""
    global _SCHEMA
    if _SCHEMA is not None:
        return _SCHEMA
    text = os.environ.get("WARP_RL_SCHEMA")
    origin = "$WARP_RL_SCHEMA"
    if not text:
        try:
            from warp_align._native import rl_schema as native
            text, origin = native(), "warp_align._native.rl_schema()"
        except ImportError:
            exe = os.environ.get("WARP_BIN") or shutil.which("warp")
            if not exe:
                raise WarpError("cannot find warp's RL settings schema: launch this through "
                                "`warp rl --backend trl`, install the warp_align package, or put "
                                "`warp` on PATH (or set WARP_BIN)") from None
            origin = f"{exe} rl --print-schema"
            try:
                text = subprocess.run([exe, "rl", "--print-schema"], capture_output=True,
                                      text=True, check=True).stdout
            except (OSError, subprocess.CalledProcessError) as e:
                raise WarpError(f"{origin}: {e}") from None
    try:
        v = json.loads(text)
        _SCHEMA = {f["name"]: f for f in v["fields"]}
    except (ValueError, KeyError, TypeError) as e:
        raise WarpError(f"{origin}: not warp's RL settings schema: {e}") from None
    return _SCHEMA


def defaults():
    """The settings' defaults (those of `warp rl`), by name."""
    return {k: f["default"] for k, f in rl_schema().items()}


def _type_ok(f, x):
    if x is None:
        return f["nullable"]
    t = f["type"]
    if t == "integer":
        return isinstance(x, int) and not isinstance(x, bool)
    if t == "number":
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    if t == "boolean":
        return isinstance(x, bool)
    return isinstance(x, str)


_TYPE_WORDS = {"integer": "an integer", "number": "a finite number", "boolean": "true or false",
               "string": "a string"}


# warp's baseline -> the TRL trainer that computes it.
TRAINERS = {"rloo": "RLOO", "grpo": "GRPO", "dr-grpo": "GRPO"}

# RLOOConfig / GRPOConfig fields that define WARP's algorithm: --trl-args may not change them.
FIXED_TRL_ARGS = (
    "beta", "num_generations", "sync_ref_model", "ref_model_sync_steps", "ref_model_mixup_alpha",
    "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_completion_length",
    "learning_rate", "max_steps", "seed", "output_dir", "num_iterations", "normalize_advantages",
    "reward_weights", "max_grad_norm", "save_steps", "save_strategy", "logging_steps",
    "logging_strategy", "per_device_train_batch_size", "generation_batch_size",
    "steps_per_generation", "lr_scheduler_type", "warmup_steps", "weight_decay",
    "mask_truncated_completions", "reward_clip_range", "epsilon", "epsilon_high", "delta",
    "loss_type", "scale_rewards", "importance_sampling_level", "top_entropy_quantile",
    "use_bias_correction_kl", "off_policy_mask_threshold", "entropy_coef", "use_adaptive_entropy",
    "multi_objective_aggregation", "adam_epsilon",
)


def load_config(path):
    """warp's RL settings from `path` (a config object or a run.json), checked and completed."""
    try:
        with open(path, encoding="utf-8") as f:
            v = json.load(f)
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror}") from None
    except ValueError as e:
        raise UsageError(f"{path}: not valid JSON: {e}") from None
    if isinstance(v, dict) and isinstance(v.get("config"), dict):
        v = v["config"]
    if not isinstance(v, dict):
        raise UsageError(f"{path}: not a JSON object")
    schema = rl_schema()
    known = set(schema) | set(LORA_DEFAULTS)
    for k in v:
        if k not in known:
            raise UsageError(f"{path}: unknown field '{k}' (known: {', '.join(sorted(known))})")
    for k in REQUIRED:
        if k not in v:
            raise UsageError(f"{path}: missing field '{k}'")
    c = {**LORA_DEFAULTS, **defaults()}
    # This entry point is the trl backend, whatever warp's default trainer is.
    c["backend"] = "trl"
    c.update(v)

    def bad(k, what):
        return UsageError(f"{path}: field '{k}' {what}, got {json.dumps(c[k])}")

    for k, f in schema.items():
        if k in OBJECT_OR_TEXT and isinstance(c[k], dict):
            continue
        if not _type_ok(f, c[k]):
            raise bad(k, f"is not {_TYPE_WORDS.get(f['type'], f['type'])}")
        if f["type"] == "number" and c[k] is not None:
            c[k] = float(c[k])
        if f["choices"] and c[k] is not None and c[k] not in f["choices"]:
            raise bad(k, f"must be one of {', '.join(f['choices'])}")
    for k in ("steps", "batch", "n", "max_new_tokens", "save_every"):
        if c[k] <= 0:
            raise bad(k, "must be > 0")
    for k in ("warmup", "seed"):
        if c[k] < 0:
            raise bad(k, "must be >= 0")
    if c["seed"] >= 2**32:
        raise bad("seed", "must be < 2^32 (numpy's seed range, which TRL seeds)")
    for k in ("beta", "lr", "grad_clip", "length_penalty"):
        if c[k] < 0:
            raise bad(k, "must be >= 0")
    if not 0 < c["mu"] <= 1:
        raise bad("mu", "must be in (0, 1]")
    if c["temperature"] <= 0:
        raise bad("temperature", "must be > 0")
    if c["reward_timeout"] <= 0:
        raise bad("reward_timeout", "must be > 0 seconds")
    if c["baseline"] not in TRAINERS:
        raise bad("baseline", "must be rloo (RLOOTrainer), grpo or dr-grpo (GRPOTrainer) with the "
                  "trl backend ('none', plain REINFORCE, needs warp's own trainer)")
    if c["n"] < 2:
        raise bad("n", f"must be >= 2 (the {c['baseline']} baseline needs 2 completions per "
                  "prompt)")
    if not 1 <= c["updates_per_batch"] <= 64:
        raise bad("updates_per_batch", "must be in 1..=64")
    if not 0 < c["clip_eps"] < 1:
        raise bad("clip_eps", "must be in (0, 1)")
    if c.get("kl_estimator", "sampled") != "sampled":
        raise bad("kl_estimator", "topk needs warp's own trainer (TRL computes its own sampled KL)")
    if c["anchor"] == "ema" and c["beta"] == 0:
        raise bad("beta", "must be > 0 with anchor 'ema' (TRL builds no reference model, hence no "
                  "EMA, when beta is 0)")
    check_lora(c, bad)
    if c["chat_template"] == "":
        raise bad("chat_template", "must be auto, none or a Jinja file")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", c["device"]):
        raise bad("device", "must be auto, cpu, cuda or cuda:N")
    if c["backend"] != "trl":
        raise bad("backend", "must be 'trl' for this entry point")
    t = c.get("trl_args")
    if isinstance(t, str):
        c["trl_args"] = parse_trl_args(t, f"{path}: field 'trl_args'")
    elif t is not None and not isinstance(t, dict):
        raise bad("trl_args", "is not a JSON object")
    elif isinstance(t, dict):
        parse_trl_args(json.dumps(t), f"{path}: field 'trl_args'")
    return c


def settings_record(c):
    """The settings as run.json records them: what warp's schema declares (`warp rl --resume`
    reads them back and refuses unknown fields), plus LoRA settings given to a warp whose schema
    lacks them."""
    schema = rl_schema()
    return {k: v for k, v in c.items()
            if k in schema or (k in LORA_DEFAULTS and v != LORA_DEFAULTS[k])}


def check_lora(c, bad):
    """The LoRA settings' types and ranges (src/rl/settings.rs check_lora, for a schema that
    lacks them)."""
    r = c["lora"]
    if r is None:
        for k, off in (("lora_alpha", None), ("rslora", False), ("lora_targets", "all-linear")):
            if c[k] is not off and c[k] != off:
                raise bad(k, "applies to LoRA runs only (lora R)")
        return
    if not (isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= 65536):
        raise bad("lora", "must be a rank in 1..=65536")
    a = c["lora_alpha"]
    if a is not None and not (_type_ok({"type": "number", "nullable": False}, a) and a > 0):
        raise bad("lora_alpha", "must be a finite number > 0")
    if not isinstance(c["rslora"], bool):
        raise bad("rslora", "is not true or false")
    if not isinstance(c["lora_targets"], str) or not lora_targets(c):
        raise bad("lora_targets", "must name modules (e.g. q_proj,v_proj) or be all-linear")


def lora_targets(c):
    """PEFT's target_modules: "all-linear" as itself, else the comma-separated names."""
    names = [x.strip() for x in c["lora_targets"].split(",") if x.strip()]
    return "all-linear" if names == ["all-linear"] else names


def read_prompts(path, with_lines=False):
    """Prompt records of a JSONL file: {"prompt": text} or {"messages": [{role, content}, ...]}
    per line; a message list becomes TRL's conversational prompt. Errors name file and line.
    With `with_lines`, (line number, prompt) pairs."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8: {e}") from None
    out = []
    for i, line in enumerate(lines):
        line = line.strip()
        if not line:
            continue

        def at(msg):
            return UsageError(f"{path}: line {i + 1}: {msg}")

        try:
            v = json.loads(line)
        except ValueError as e:
            raise at(f"not JSON: {e}") from None
        if not isinstance(v, dict):
            raise at("not a JSON object")
        if "messages" in v and "prompt" not in v:
            m = v["messages"]
            if not isinstance(m, list) or not m:
                raise at("\"messages\" is not a non-empty list")
            for msg in m:
                if not (isinstance(msg, dict) and isinstance(msg.get("role"), str)
                        and isinstance(msg.get("content"), str)):
                    raise at("each message needs a string \"role\" and \"content\"")
            out.append((i + 1, m))
            continue
        p = v.get("prompt")
        if p is None:
            raise at("no \"prompt\" field")
        if not isinstance(p, str):
            raise at("\"prompt\" is not a string")
        if not p:
            raise at("the prompt is empty")
        out.append((i + 1, p))
    if not out:
        raise UsageError(f"{path}: no prompts in the file")
    if len({isinstance(p, list) for _, p in out}) > 1:
        raise UsageError(f"{path}: mixes \"prompt\" and \"messages\" lines (use one kind per file)")
    return out if with_lines else [p for _, p in out]


# ---------------------------------------------------------------------------------------------
# Rewards: the same specs and semantics as warp (src/rl/reward*.rs).

# Rust's char::is_whitespace (Unicode White_Space), which `str::trim` uses: Python's str.strip()
# also strips U+001C..U+001F, so the set is spelled out.
_WS = "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) \
    + "\u2028\u2029\u202f\u205f\u3000"


def rust_trim(s):
    return s.strip(_WS)


def parse_arith_prompt(prompt):
    """The operands of a prompt ending in "a+b=" (src/rl/task.rs parse_prompt)."""
    body = prompt.rstrip(_WS)
    if not body.endswith("="):
        return None
    body = body[:-1]
    start = 0
    for i in range(len(body) - 1, -1, -1):
        ch = body[i]
        if not (ch in "0123456789+"):
            start = i + 1
            break
    tail = body[start:]
    if "+" not in tail:
        return None
    a, b = tail.split("+", 1)

    def digits(s):
        return 0 < len(s) <= 6 and all(ch in "0123456789" for ch in s)

    if not digits(a) or not digits(b):
        return None
    return int(a), int(b)


def arith_reward(prompt, completion):
    """1 when the completion (whitespace trimmed) is exactly the sum, else 0 (task.rs)."""
    ab = parse_arith_prompt(prompt)
    if ab is None:
        return 0.0
    return 1.0 if rust_trim(completion) == str(ab[0] + ab[1]) else 0.0


def prompt_text(prompt):
    """The text a verifier reads: the prompt, or the last user message of a conversation."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else ""


class VerifyArith:
    name = "verify:arith"

    def score(self, prompts, completions):
        return [arith_reward(prompt_text(p), c) for p, c in zip(prompts, completions)]


# Rust's f64::from_str grammar (no underscores, no non-ASCII digits, unlike Python's float()).
_RUST_FLOAT = re.compile(
    r"[+-]?(?:inf|infinity|nan|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)", re.IGNORECASE)
STDERR_TAIL = 4096


class CmdReward:
    """`cmd:PROGRAM [ARG...]`: one run per batch, JSONL {"prompt", "completion"} on stdin (a
    conversation is sent as "messages"), one finite number per line on stdout, exit status 0,
    within the timeout (then the program's process group is killed). src/rl/reward_cmd.rs."""

    def __init__(self, command, timeout):
        self.name = f"cmd:{command}"
        self.argv = command.split()
        if not self.argv:
            raise UsageError(f"reward {self.name}: no program given")
        prog = self.argv[0]
        found = os.path.isfile(prog) if "/" in prog else shutil.which(prog) is not None
        if not found:
            raise UsageError(
                f"reward {self.name}: program '{prog}' not found (neither a file nor on PATH)")
        self.timeout = timeout

    def err(self, msg):
        return WarpError(f"reward {self.name}: {msg}")

    def score(self, prompts, completions):
        if not prompts:
            return []
        lines = []
        for p, c in zip(prompts, completions):
            rec = {"prompt": p, "completion": c} if isinstance(p, str) else \
                {"messages": p, "completion": c}
            lines.append(json.dumps(rec, ensure_ascii=False))
        data = ("\n".join(lines) + "\n").encode("utf-8")
        try:
            proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except OSError as e:
            raise self.err(f"cannot start '{self.argv[0]}': {e.strerror}") from None
        try:
            out, errb = proc.communicate(data, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out, errb = proc.communicate()
            raise self.err(f"did not finish within the timeout of {self.timeout:g} s for "
                           f"{len(prompts)} pairs; killed it{self._tail(errb)}") from None
        if proc.returncode != 0:
            how = f"exited with status {proc.returncode}" if proc.returncode > 0 else \
                f"was killed by signal {-proc.returncode}"
            raise self.err(how + self._tail(errb))
        text = out.decode("utf-8", errors="replace")
        body = text[:-1] if text.endswith("\n") else text
        rows = body.split("\n") if text else []
        rewards = []
        for i, line in enumerate(rows):
            s = rust_trim(line[:-1] if line.endswith("\r") else line)
            if not _RUST_FLOAT.fullmatch(s):
                raise self.err(f"line {i + 1} of its output, {json.dumps(line)}, is not a number "
                               "(one number per line expected)")
            x = float(s)
            if not math.isfinite(x):
                raise self.err(f"line {i + 1} of its output, {json.dumps(line)}, is not a finite "
                               "number")
            rewards.append(x)
        if len(rewards) != len(prompts):
            raise self.err(f"printed {len(rewards)} lines for {len(prompts)} pairs (one number per "
                           "pair expected)")
        return rewards

    @staticmethod
    def _tail(errb):
        t = errb[-STDERR_TAIL:].decode("utf-8", errors="replace").strip()
        return f"; its stderr ends with: {t}" if t else ""


class ModelReward:
    """`model:PATH`: a sequence-classification checkpoint with one label, scored as warp does
    (src/rl/reward_model.rs): the prompt tokenized with its special tokens, then the completion
    without, pooled at the rightmost token whose id is not config.json's pad_token_id (the last
    token when there is none). A conversation is rendered with the reward model's own chat
    template plus an assistant message holding the completion."""

    def __init__(self, path, device, batch_size=64):
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        self.name = f"model:{path}"
        cfg_path = os.path.join(path, "config.json")
        if not os.path.isfile(cfg_path):
            raise UsageError(f"reward {self.name}: {cfg_path}: no such file")
        try:
            config = AutoConfig.from_pretrained(path)
        except Exception as e:  # noqa: BLE001 - transformers raises many kinds
            raise UsageError(f"reward {self.name}: {cfg_path}: {one_line(e)}") from None
        if config.num_labels != 1:
            raise UsageError(f"reward {self.name}: {cfg_path}: the model has {config.num_labels} "
                             "labels (id2label / num_labels): a reward model has exactly one")
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, dtype=torch.float32, output_loading_info=True)
        except Exception as e:  # noqa: BLE001
            raise UsageError(f"reward {self.name}: cannot load: {one_line(e)}") from None
        missing = [k for k in info.get("missing_keys", []) if k.startswith("score.")]
        if missing:
            raise UsageError(
                f"reward {self.name}: tensor '{missing[0]}' is missing: not a reward model (a "
                "sequence-classification checkpoint with a head 'score.weight' [1, hidden])")
        self.model = model.to(device).eval()
        self.tok = AutoTokenizer.from_pretrained(path)
        self.pad_id = config.pad_token_id
        self.max_pos = getattr(config, "max_position_embeddings", None)
        self.device = device
        self.batch_size = batch_size

    def encode(self, prompt, completion):
        if isinstance(prompt, str):
            ids = self.tok(prompt, add_special_tokens=True)["input_ids"]
            return list(ids) + list(self.tok(completion, add_special_tokens=False)["input_ids"])
        conv = list(prompt) + [{"role": "assistant", "content": completion}]
        out = self.tok.apply_chat_template(conv, tokenize=True, add_generation_prompt=False)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    def score(self, prompts, completions):
        import torch

        seqs = [self.encode(p, c) for p, c in zip(prompts, completions)]
        for i, s in enumerate(seqs):
            if not s:
                raise WarpError(f"reward {self.name}: pair {i} has no tokens")
            if self.max_pos is not None and len(s) > self.max_pos:
                raise WarpError(f"reward {self.name}: pair {i} has {len(s)} tokens, more than the "
                                f"reward model's max_position_embeddings {self.max_pos}")
        # Without a pad id transformers pools the last token of a batch of one only.
        bs = self.batch_size if self.pad_id is not None else 1
        pad = self.pad_id if self.pad_id is not None else 0
        rewards = [0.0] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        for k in range(0, len(order), bs):
            chunk = order[k:k + bs]
            w = max(len(seqs[i]) for i in chunk)
            ids = torch.full((len(chunk), w), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), w), dtype=torch.long)
            for r, i in enumerate(chunk):
                ids[r, :len(seqs[i])] = torch.tensor(seqs[i])
                mask[r, :len(seqs[i])] = 1
            with torch.inference_mode():
                logits = self.model(input_ids=ids.to(self.device),
                                    attention_mask=mask.to(self.device)).logits[:, 0]
            for i, x in zip(chunk, logits.double().cpu().tolist()):
                if not math.isfinite(x):
                    raise WarpError(f"reward {self.name}: scored pair {i} {x}, not a finite number")
                rewards[i] = x
        return rewards


def make_reward(spec, timeout, device="cpu"):
    kind, _, rest = spec.partition(":")
    if kind == "verify" and rest == "arith":
        return VerifyArith()
    if kind == "verify":
        raise UsageError(f"unknown verifier '{rest}' in reward {spec} (known: verify:arith)")
    if kind == "model" and rest:
        return ModelReward(rest, device)
    if kind == "cmd" and rest.strip():
        return CmdReward(rest, timeout)
    raise UsageError(f"unknown reward '{spec}' (use verify:arith, model:PATH or cmd:PROGRAM)")


def checked(reward, rewards, n):
    if len(rewards) != n:
        raise WarpError(f"reward {reward.name} returned {len(rewards)} values for {n} completions")
    for i, x in enumerate(rewards):
        if not math.isfinite(x):
            raise WarpError(f"reward {reward.name} returned {x} for completion {i}")
    return rewards


def one_line(e):
    s = " ".join(str(e).split())
    return s if s else type(e).__name__


# ---------------------------------------------------------------------------------------------
# Run folder: atomic folders, run.json, metrics.jsonl.

COMPANION_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "tokenizer.model", "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
    "chat_template.jinja", "chat_template.json",
)


def step_name(step):
    return f"step-{step:06d}"


def staging(dest):
    """A fresh hidden folder beside `dest` (warp's naming: resume removes such leftovers)."""
    tmp = dest.parent / f".{dest.name}.warp-tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp, dest):
    if dest.exists():
        raise WarpError(f"{dest}: exists already; not replaced")
    os.replace(tmp, dest)
    fsync_dir(dest.parent)


def fsync_dir(d):
    try:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def write_json_atomic(path, value):
    tmp = path.parent / f".{path.name}.warp-tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(value, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def versions():
    import accelerate
    import datasets
    import torch
    import transformers
    import trl

    return {"trl": trl.__version__, "transformers": transformers.__version__,
            "torch": torch.__version__, "accelerate": accelerate.__version__,
            "datasets": datasets.__version__, "python": sys.version.split()[0]}


# ---------------------------------------------------------------------------------------------
# Training.

def choose_chat_template(tok, choice, model_path):
    """Applies warp's --chat-template to `tok`, as warp's own trainer reads it: auto keeps the
    model's template, none removes it (conversations are refused), anything else is a Jinja file
    or the name of one of the model's named templates."""
    if choice == "auto":
        return
    if choice == "none":
        tok.chat_template = None
        return
    if os.path.isfile(choice):
        try:
            with open(choice, encoding="utf-8") as f:
                tok.chat_template = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"chat template {choice}: cannot read: {e}") from None
        return
    named = tok.chat_template if isinstance(tok.chat_template, dict) else {}
    if choice in named:
        tok.chat_template = named[choice]
        return
    raise UsageError(f"chat template {choice}: no such file, and {model_path} has no named "
                     f"template of that name")


def lr_factor(step, warmup):
    """warp's schedule (src/rl/optim.rs): optimizer step `step` (1-based) uses lr * step / warmup
    during warm-up, then lr."""
    return min(1.0, step / warmup) if warmup > 0 else 1.0


def build_trainer(cfg, out, model_path, opts, accel_state):
    import datasets
    import torch
    import transformers
    from torch.optim.lr_scheduler import LambdaLR
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    import trl

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", category=FutureWarning)

    numbered = read_prompts(cfg["prompts"], with_lines=True)
    prompts = [p for _, p in numbered]
    tok = AutoTokenizer.from_pretrained(model_path, padding_side="left", truncation_side="left")
    choose_chat_template(tok, cfg["chat_template"], model_path)
    max_pos = getattr(transformers.AutoConfig.from_pretrained(model_path),
                      "max_position_embeddings", None)
    for line, p in numbered:
        if isinstance(p, str):
            n_tok = len(tok(p)["input_ids"])
        else:
            if not tok.chat_template:
                why = ("--chat-template none refuses conversations"
                       if cfg["chat_template"] == "none"
                       else f"the tokenizer of {model_path} has none")
                raise UsageError(f"{cfg['prompts']}: line {line}: a \"messages\" line needs a chat "
                                 f"template, and {why}")
            r = tok.apply_chat_template(p, tokenize=True, add_generation_prompt=True)
            n_tok = len(r["input_ids"] if hasattr(r, "keys") else r)
        if max_pos is not None and n_tok + cfg["max_new_tokens"] > max_pos:
            raise UsageError(f"{cfg['prompts']}: line {line}: prompt of {n_tok} tokens + "
                             f"max_new_tokens {cfg['max_new_tokens']} exceeds the model's "
                             f"max_position_embeddings {max_pos}")

    world = accel_state.num_processes
    accum = opts.get("gradient_accumulation_steps", 1)
    total = cfg["batch"] * cfg["n"]
    k = cfg["updates_per_batch"]
    if total % (world * accum) != 0:
        raise UsageError(f"batch x n = {total} completions per step is not divisible by "
                         f"{world} processes x {accum} accumulation steps")
    # Enough rows that every step's batch holds `batch` prompts (TRL's sampler drops a partial
    # batch); warp-rl draws prompts with replacement, TRL shuffles them once per epoch.
    rows = [{"prompt": prompts[i % len(prompts)]}
            for i in range(max(len(prompts), cfg["batch"]))]
    dataset = datasets.Dataset.from_list(rows)

    device = cfg["device"]
    args = dict(
        output_dir=str(out / ".trl"),
        use_cpu=device == "cpu",
        # "auto": bf16 on a GPU, f32 on the CPU (as warp's own trainer).
        bf16=cfg["dtype"] == "bf16" or (cfg["dtype"] == "auto" and device != "cpu"
                                         and torch.cuda.is_available()),
        fp16=False,
        model_init_kwargs={"dtype": torch.float32},
        per_device_train_batch_size=total // (world * accum),
        gradient_accumulation_steps=accum,
        num_generations=cfg["n"],
        # warp's --steps counts batches, each making K = updates_per_batch optimizer steps; TRL's
        # steps are optimizer steps (it reuses a generation batch num_iterations times).
        max_steps=cfg["steps"] * k,
        max_completion_length=cfg["max_new_tokens"],
        temperature=cfg["temperature"],
        top_p=1.0,
        top_k=0,
        beta=cfg["beta"],
        learning_rate=cfg["lr"],
        warmup_steps=cfg["warmup"],
        weight_decay=0.0,
        optim="adamw_torch",
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        max_grad_norm=cfg["grad_clip"],
        num_iterations=k,
        epsilon=cfg["clip_eps"],
        disable_dropout=True,
        sync_ref_model=cfg["anchor"] == "ema",
        ref_model_sync_steps=1,
        ref_model_mixup_alpha=cfg["mu"],
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="steps",
        save_steps=cfg["save_every"] * k,
        report_to="none",
        disable_tqdm=True,
        log_completions=False,
        dataloader_num_workers=0,
        seed=cfg["seed"],
        data_seed=cfg["seed"],
    )
    args.update(algorithm_args(cfg))
    args.update(opts)
    model = model_path
    if cfg["lora"]:
        model = lora_policy(cfg, model_path, args.pop("model_init_kwargs", None), accel_state)
        # TRL's own sync refuses PEFT models: the EMA of the adapter is EmaAdapter's.
        args["sync_ref_model"] = False
    kind = TRAINERS[cfg["baseline"]]
    Config, Trainer = getattr(trl, f"{kind}Config"), getattr(trl, f"{kind}Trainer")
    try:
        trl_args = Config(**args)
    except (TypeError, ValueError) as e:
        raise UsageError(f"TRL settings: {one_line(e)}") from None

    reward = make_reward(cfg["reward"], cfg["reward_timeout"], device=str(accel_state.device))

    def warp_reward(prompts, completions, **_):
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        return checked(reward, reward.score(prompts, texts), len(prompts))

    funcs = [warp_reward]
    if cfg["length_penalty"] > 0:
        lp = cfg["length_penalty"]

        def length_penalty(completion_ids, **_):
            return [-lp * len(ids) for ids in completion_ids]

        funcs.append(length_penalty)

    class WarpTrainer(Trainer):
        def create_scheduler(self, num_training_steps, optimizer=None):
            if self.lr_scheduler is None:
                w = cfg["warmup"]
                self.lr_scheduler = LambdaLR(optimizer or self.optimizer,
                                             lambda k: lr_factor(k + 1, w))
                self._created_lr_scheduler = True
            return self.lr_scheduler

    trainer = WarpTrainer(model=model, reward_funcs=funcs, args=trl_args,
                          train_dataset=dataset, processing_class=tok)
    # Our metrics line replaces the log dict the printer would put on stdout.
    trainer.remove_callback(PrinterCallback)
    if cfg["lora"]:
        ref_adapter_pairs(trainer)  # fails clearly if TRL made no "ref" adapter
        if cfg["anchor"] == "ema":
            # Before the checkpoint callbacks (train() adds them): step N's EMA is saved.
            trainer.add_callback(ema_adapter_callback(TrainerCallback, trainer, cfg["mu"]))
    return trainer, reward, TrainerCallback


# ---------------------------------------------------------------------------------------------
# LoRA: TRL with a PEFT model. Given a PeftModel (not a peft_config), RLOOTrainer and GRPOTrainer
# copy its "default" adapter into a second adapter named "ref" and compute the reference
# log-probabilities with that adapter active (trl 1.16.0: GRPOTrainer.__init__ "model.add_adapter(
# 'ref', default_config)", _generate_and_score_completions "use_adapter(model, adapter_name='ref'
# if 'ref' in model.peft_config else None)"). With B = 0 at the start, "ref" is the init; after
# every optimizer step EmaAdapter sets ref <- (1 - mu) ref + mu default for every A and B: WARP's
# EMA anchor over the adapter parameters, as warp-rl --lora keeps it (the EMA of A and B, not of
# B.A: docs/RL.md). TRL's SyncRefModelCallback refuses PEFT models (sync_ref_model=False here).

def lora_policy(cfg, model_path, init_kwargs, accel_state):
    """The init with fresh LoRA adapters (PEFT's initialisation: A Kaiming-uniform, B = 0),
    seeded as TRL seeds it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, set_seed

    sharded = str(getattr(accel_state.distributed_type, "value", accel_state.distributed_type))
    if sharded.upper() in ("FSDP", "DEEPSPEED"):
        raise UsageError(f"lora: the trl backend keeps the EMA adapter beside the policy's in one "
                         f"process or data-parallel processes only, not under {sharded} (use one "
                         f"GPU, several with DDP, or full fine-tuning)")
    kwargs = dict(init_kwargs or {})
    try:
        base = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds
        raise UsageError(f"model {model_path}: cannot load: {one_line(e)}") from None
    r = cfg["lora"]
    config = LoraConfig(
        r=r, lora_alpha=cfg["lora_alpha"] if cfg["lora_alpha"] is not None else r,
        use_rslora=cfg["rslora"], target_modules=lora_targets(cfg), lora_dropout=0.0,
        bias="none", task_type="CAUSAL_LM")
    set_seed(cfg["seed"])
    try:
        return get_peft_model(base, config)
    except ValueError as e:
        raise UsageError(f"lora_targets {cfg['lora_targets']}: {one_line(e)}") from None


def ref_adapter_pairs(trainer):
    """(ema, policy) parameter pairs: TRL's "ref" adapter and the trained "default" one."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if "ref" not in getattr(model, "peft_config", {}):
        raise WarpError("TRL made no \"ref\" adapter for the PEFT policy (its reference would "
                        "be the base model, not the EMA): this TRL/PEFT pair is not supported")
    params = dict(model.named_parameters())
    pairs = [(params[n.replace(".default.", ".ref.")], p) for n, p in params.items()
             if ".default." in n]
    if not pairs:
        raise WarpError("the PEFT policy has no \"default\" adapter parameters")
    return pairs


def ema_adapter_callback(TrainerCallback, trainer, mu):
    pairs = ref_adapter_pairs(trainer)

    class EmaAdapter(TrainerCallback):
        """ref <- (1 - mu) ref + mu default after every optimizer step (SyncRefModelCallback's
        update, on the adapter)."""

        def on_step_end(self, args, state, control, **kw):
            import torch

            with torch.no_grad():
                for ema, p in pairs:
                    ema.mul_(1.0 - mu).add_(p.detach(), alpha=mu)
            return control

    return EmaAdapter()


def adapter_state(trainer, name):
    """The adapter `name` ("default": the policy, "ref": the EMA) in PEFT's file format (keys
    without the adapter name), f32 on the CPU."""
    from peft import get_peft_model_state_dict

    model = trainer.accelerator.unwrap_model(trainer.model)
    sd = get_peft_model_state_dict(model, adapter_name=name)
    return {k: v.detach().float().cpu().contiguous() for k, v in sd.items()}


def load_ema_adapter(trainer, folder):
    """Resume: the saved EMA adapter back into TRL's "ref" adapter."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    f = folder / "adapter_model.safetensors"
    if not f.is_file():
        raise WarpError(f"{f}: no such file (the EMA adapter to resume from)")
    model = trainer.accelerator.unwrap_model(trainer.model)
    with torch.no_grad():
        res = set_peft_model_state_dict(model, load_file(str(f)), adapter_name="ref")
    missing = [k for k in getattr(res, "missing_keys", []) if ".ref." in k]
    if missing:
        raise WarpError(f"{f}: tensor for {missing[0]} is missing")


def save_adapters(trainer, cfg, tmp, parts, step):
    """tmp/{policy,ema} as PEFT adapter folders: adapter_config.json (base_model_name_or_path =
    the init) and adapter_model.safetensors in f32, the tokenizer, a model card."""
    from safetensors.torch import save_file

    model = trainer.accelerator.unwrap_model(trainer.model)
    for which in parts:
        d = tmp / which
        d.mkdir()
        sd = adapter_state(trainer, "default" if which == "policy" else "ref")
        save_file(sd, str(d / "adapter_model.safetensors"), metadata={"format": "pt"})
        config = model.peft_config["default"]
        config.save_pretrained(str(d))
        cj = d / "adapter_config.json"
        c = json.loads(cj.read_text(encoding="utf-8"))
        # A local base as an absolute path (as warp-rl writes it): the folder is then usable
        # from anywhere, not only from the directory the run was started in.
        base = Path(cfg["model"])
        c["base_model_name_or_path"] = str(base.resolve()) if base.is_dir() else cfg["model"]
        c["inference_mode"] = True
        if isinstance(c.get("target_modules"), list):
            c["target_modules"] = sorted(c["target_modules"])  # PEFT keeps a set: stable bytes
        cj.write_text(json.dumps(c, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        trainer.processing_class.save_pretrained(d)
        (d / "README.md").write_text(model_card(cfg, which, step), encoding="utf-8")


def algorithm_args(cfg):
    """The settings of the chosen TRL trainer that make it compute warp's baseline.

    rloo: RLOOTrainer, the leave-one-out baseline, advantages not normalised, the KL to the
    reference (the EMA) subtracted from the reward as in warp-rl.

    grpo / dr-grpo: GRPOTrainer, the group mean (and, for grpo, the group's unbiased standard
    deviation + 1e-4: scale_rewards "group"; dr-grpo: "none") as in warp-rl, the token-level
    clipped ratio with epsilon = clip_eps. Its loss_type "dr_grpo" sums over tokens (no length
    normalisation, as warp-rl) but divides by B * max_completion_length where warp divides by B:
    a constant factor L = max_new_tokens, so the clip threshold and Adam's epsilon are divided by
    L too, which makes the Adam step the one of warp's normalisation (clip(g/L, c/L) = clip(g, c)/L
    and m/(sqrt(v) + eps) is unchanged when g, m, sqrt(v) and eps all scale by 1/L). Where TRL's
    GRPO differs from warp-rl's, and cannot be told otherwise: the KL to the reference is a loss
    term (beta times TRL's k3 estimator exp(r) - r - 1, r = log pi_ref - log pi, per token), not a
    part of the reward before the group normalisation (docs/SCALE.md)."""
    if TRAINERS[cfg["baseline"]] == "RLOO":
        return {"normalize_advantages": False}
    length = cfg["max_new_tokens"]
    return {
        "loss_type": "dr_grpo",
        "scale_rewards": "group" if cfg["baseline"] == "grpo" else "none",
        "max_grad_norm": cfg["grad_clip"] / length,
        "adam_epsilon": 1e-8 / length,
        "importance_sampling_level": "token",
        "epsilon_high": None,
        "delta": None,
        "top_entropy_quantile": 1.0,
        "use_bias_correction_kl": False,
        "off_policy_mask_threshold": None,
        "entropy_coef": 0.0,
        "use_adaptive_entropy": False,
        "mask_truncated_completions": False,
        "multi_objective_aggregation": "sum_then_normalize",
    }


def loss_scale(cfg):
    """The factor from TRL's logged loss and gradient norm to warp's (algorithm_args)."""
    return 1.0 if TRAINERS[cfg["baseline"]] == "RLOO" else float(cfg["max_new_tokens"])


def check_reference_f32(trainer):
    """TRL's reference model is WARP's EMA: its update ref <- (1 - mu) ref + mu policy must be
    computed on f32 weights (in bf16, mu * (policy - ref) rounds away below half a bf16 step, the
    failure python/accelerate/zero3.yaml warns about). Refuses to start when any of its
    parameters is held in another dtype, whatever wrapped it: plain accelerate and FSDP keep the
    f32 weights TRL loads (model_init_kwargs dtype float32), DeepSpeed's bf16 engine may cast
    them (its partitions, `ds_tensor` under ZeRO-3, are then checked)."""
    import torch

    ref = getattr(trainer, "ref_model", None)
    policy = trainer.accelerator.unwrap_model(trainer.model)
    if ref is not None:
        named = list(ref.named_parameters())
    elif "ref" in (getattr(policy, "peft_config", None) or {}):
        # LoRA: the EMA is TRL's "ref" adapter (ref_adapter_pairs); the frozen base is not.
        named = [(n, p) for n, p in policy.named_parameters() if ".ref." in n]
    else:
        return
    for name, p in named:
        held = getattr(p, "ds_tensor", None)
        dtype = (held if held is not None else p).dtype
        if dtype != torch.float32:
            raise WarpError(
                f"TRL's reference model (the EMA) holds parameter {name} in {dtype}, not "
                f"torch.float32: the EMA update would round away (set bf16 off for the reference, "
                f"e.g. a DeepSpeed config without bf16, or use --dtype f32)")


def full_state_dict(trainer, which):
    """Full state dict of the policy or the reference model (collective: every rank calls it;
    rank 0 gets the tensors under FSDP / ZeRO-3)."""
    acc = trainer.accelerator
    model = trainer.model_wrapped if which == "policy" else trainer.ref_model
    return acc.get_state_dict(model, unwrap=True), acc.unwrap_model(model)


def save_folders(trainer, cfg, dest, step, init_dir, with_ema):
    """dest/{policy,ema} as HF folders (f32 safetensors, the init's companion files, a model
    card), staged and renamed: all ranks call it, rank 0 writes."""
    acc = trainer.accelerator
    if cfg["lora"]:
        if acc.is_main_process:
            tmp = staging(dest)
            save_adapters(trainer, cfg, tmp, ["policy"] + (["ema"] if with_ema else []), step)
            commit(tmp, dest)
        acc.wait_for_everyone()
        return
    parts = [("policy",)] + ([("ema",)] if with_ema else [])
    states = [(w[0],) + full_state_dict(trainer, w[0]) for w in parts]
    if acc.is_main_process:
        tmp = staging(dest)
        for which, sd, module in states:
            d = tmp / which
            sd = {k: v.detach().float().cpu().contiguous() for k, v in sd.items()}
            module.save_pretrained(d, state_dict=sd, safe_serialization=True)
            if init_dir is not None:
                for name in COMPANION_FILES:
                    src = init_dir / name
                    if src.is_file():
                        shutil.copyfile(src, d / name)
                cj = d / "config.json"
                if cj.is_file():
                    c = json.loads(cj.read_text(encoding="utf-8"))
                    for key in ("torch_dtype", "dtype"):
                        if key in c:
                            c[key] = "float32"
                    cj.write_text(json.dumps(c, indent=2) + "\n", encoding="utf-8")
            else:
                trainer.processing_class.save_pretrained(d)
            (d / "README.md").write_text(model_card(cfg, which, step), encoding="utf-8")
        commit(tmp, dest)
    acc.wait_for_everyone()


def model_card(cfg, which, step):
    recipe = json.dumps({"method": "warp-rl", "backend": "trl", "which": which, "step": step,
                         "config": settings_record(cfg)})
    what = "the exponential moving average of the policy (TRL's reference model)" \
        if which == "ema" else "the trained policy"
    return (f"---\nbase_model: {json.dumps(cfg['model'])}\ntags:\n- warp\n- rl\n- trl\n"
            f"warp_recipe: {recipe}\n---\n# warp rl (trl backend) {which} at step {step}\n\n"
            f"RL fine-tuning with TRL's {TRAINERS[cfg['baseline']]}Trainer ({cfg['baseline']} "
            f"baseline, {cfg['updates_per_batch']} update(s) per batch) and a KL penalty "
            f"beta = {cfg['beta']} towards the {cfg['anchor']} anchor; EMA rate mu = {cfg['mu']}. "
            f"`{which}` is {what}.\n")


def make_callbacks(TrainerCallback, trainer, cfg, out, init_dir, quiet):
    total = cfg["batch"] * cfg["n"]
    # TRL counts optimizer steps, warp batches: K = updates_per_batch optimizer steps per batch.
    k = cfg["updates_per_batch"]
    acc = trainer.accelerator

    class Checkpoints(TrainerCallback):
        """step-N/{policy,ema} after the reference sync of batch N's last update, and TRL's
        checkpoint (optimizer step N*K) moved into step-N/trainer once complete. Registered after
        the reference's sync callback, so the EMA saved at step N includes step N's updates."""

        def on_step_end(self, args, state, control, **kw):
            g = state.global_step
            if g % k:
                return control
            s = g // k
            if s % cfg["save_every"] == 0 or s == cfg["steps"]:
                save_folders(trainer, cfg, out / step_name(s), s, init_dir, cfg["anchor"] == "ema")
                control.should_save = True
            return control

        def on_save(self, args, state, control, **kw):
            acc.wait_for_everyone()
            if acc.is_main_process and state.global_step % k == 0:
                s = state.global_step // k
                src = out / ".trl" / f"checkpoint-{state.global_step}"
                dest = out / step_name(s) / "trainer"
                if src.is_dir() and (out / step_name(s)).is_dir() and not dest.exists():
                    os.replace(src, dest)
                    fsync_dir(dest.parent)
                    # Only the newest trainer state is needed to resume (each holds the optimizer
                    # moments: several times the model).
                    for d in sorted(out.glob("step-*")):
                        if d.name != step_name(s) and (d / "trainer").is_dir():
                            shutil.rmtree(d / "trainer")
            acc.wait_for_everyone()
            return control

    class Metrics(TrainerCallback):
        """One metrics.jsonl line per batch with warp's names (docs/SCALE.md has the mapping):
        the rewards, loss, gradient norm, KL and entropy of the batch's first (on-policy)
        update, as warp-rl reports them; clip_frac over the later ones when K > 1."""

        def __init__(self):
            self.last = None
            self.batch = []

        def on_train_begin(self, args, state, control, **kw):
            self.last = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or "loss" not in logs or not acc.is_main_process:
                return
            g = state.global_step
            self.batch.append(dict(logs))
            if g % k:
                return
            first, later = self.batch[0], self.batch[1:]
            self.batch = []
            now = time.perf_counter()
            elapsed = now - (self.last if self.last is not None else now)
            self.last = now
            s = g // k
            scale = loss_scale(cfg)
            length = first.get("completions/mean_length", float("nan"))
            std = first.get("rewards/warp_reward/std")

            def scaled(key):
                x = first.get(key)
                return x * scale if x is not None else None

            m = {
                "step": s,
                "reward_mean": first.get("rewards/warp_reward/mean"),
                # TRL logs the sample standard deviation; warp the population one.
                "reward_std": std * math.sqrt((total - 1) / total) if std is not None else None,
                "completion_len": length,
                "lr": cfg["lr"] * lr_factor((s - 1) * k + 1, cfg["warmup"]),
                "grad_norm": scaled("grad_norm"),
                "loss": scaled("loss"),
                "entropy": first.get("entropy"),
                "samples_per_s": total / elapsed if elapsed > 0 else None,
            }
            if first.get("kl") is not None:
                # TRL's kl: mean over completion tokens of its estimate of KL(pi || pi_ref) per
                # token (RLOO: log pi/pi_ref at the sampled tokens, what enters the reward; GRPO:
                # its k3 estimator, what enters the loss). Times the mean length: per sequence.
                m["kl_anchor"] = first["kl"] * length
            if k > 1:
                fracs = [x["clip_ratio/region_mean"] for x in later
                         if x.get("clip_ratio/region_mean") is not None]
                m["clip_frac"] = sum(fracs) / len(fracs) if fracs else None
            m["trl"] = {key: v for key, v in first.items() if isinstance(v, (int, float))}
            with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(m) + "\n")
            if not quiet:
                kl = m.get("kl_anchor")
                print(f"{PROG}: step {s}/{cfg['steps']}  reward {m['reward_mean']:.3f}"
                      + (f"  KL(anchor) {kl:.3f}" if kl is not None else ""),
                      file=sys.stderr, flush=True)

    return [Checkpoints(), Metrics()]


def load_user_callbacks(files, trainer):
    cbs = []
    for i, f in enumerate(files):
        spec = importlib.util.spec_from_file_location(f"warp_trl_callback_{i}", f)
        if spec is None or spec.loader is None:
            raise UsageError(f"{f}: not a Python file")
        mod = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(mod)
        except OSError as e:
            raise UsageError(f"{f}: cannot read: {e.strerror}") from None
        if not hasattr(mod, "callback"):
            raise UsageError(f"{f}: defines no function callback(trainer)")
        cbs.append(mod.callback(trainer))
    return cbs


def latest_resumable(out):
    """The newest step whose folders and TRL checkpoint are complete."""
    best = None
    for d in out.glob("step-*"):
        m = re.fullmatch(r"step-(\d+)", d.name)
        if m and (d / "trainer" / "trainer_state.json").is_file() and (d / "policy").is_dir():
            s = int(m.group(1))
            best = s if best is None or s > best else best
    return best


def train(a):
    if a.threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    trl_opts = parse_trl_args(a.trl_args)
    if a.command == "resume":
        out = Path(a.run)
        run_json = out / "run.json"
        if not run_json.is_file():
            raise UsageError(f"{run_json}: no such file (not a warp run folder)")
        cfg = load_config(run_json)
        try:
            recorded = json.loads(run_json.read_text(encoding="utf-8"))
        except ValueError as e:
            raise UsageError(f"{run_json}: not valid JSON: {e}") from None
        if recorded.get("backend") != "trl":
            raise UsageError(f"{run_json}: not a run of the trl backend (resume it with warp-rl)")
        trl_opts = trl_opts or recorded.get("trl_args", {})
        if a.steps is not None:
            if a.steps <= 0:
                raise UsageError(f"steps must be > 0, got {a.steps}")
            cfg["steps"] = a.steps
    else:
        out = Path(a.output)
        cfg = load_config(a.config)
        read_prompts(cfg["prompts"])
        trl_opts = {**(cfg.get("trl_args") or {}), **trl_opts}
    if cfg["device"].startswith("cuda:"):
        os.environ["CUDA_VISIBLE_DEVICES"] = cfg["device"].split(":")[1]

    import torch
    from accelerate import PartialState

    if a.threads:
        torch.set_num_threads(a.threads)
    state = PartialState(cpu=cfg["device"] == "cpu")
    model_src = cfg["model"]
    init_dir = Path(model_src) if Path(model_src).is_dir() else None
    if init_dir is None and (os.sep in model_src or model_src.startswith(".")):
        raise UsageError(f"model {model_src}: no such folder")
    if init_dir is not None and not (init_dir / "config.json").is_file():
        raise UsageError(f"model {model_src}: {init_dir / 'config.json'}: no such file")

    resume_from = None
    if a.command == "resume":
        if (out / "final").exists():
            raise UsageError(f"{out}: the run is complete (final/ exists)")
        step = latest_resumable(out)
        if step is not None:
            resume_from = out / step_name(step) / "trainer"
        state.wait_for_everyone()
        if state.is_main_process:
            clean_for_resume(out, step or 0)
        state.wait_for_everyone()
    else:
        # warp holds the folder's lock file (.warp-run.lock) while this runs.
        if out.exists() and any(p.name != ".warp-run.lock" for p in out.iterdir()):
            raise UsageError(f"run folder {out} exists and is not empty (continue it with: resume "
                             f"{out})")
        state.wait_for_everyone()

    # The reference model is built from the model the trainer is given; on resume with an EMA
    # anchor that is the saved EMA (the policy then comes from TRL's checkpoint).
    # (LoRA: the init is the base, the saved EMA adapter goes into TRL's "ref" adapter.)
    model_path = model_src
    if resume_from is not None and cfg["anchor"] == "ema" and not cfg["lora"]:
        model_path = str(resume_from.parent / "ema")
    trainer, _, TrainerCallback = build_trainer(cfg, out, model_path, trl_opts, state)
    if resume_from is not None and cfg["anchor"] == "ema" and cfg["lora"]:
        load_ema_adapter(trainer, resume_from.parent / "ema")
    check_reference_f32(trainer)
    if state.is_main_process and a.command == "train":
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "run.json", {
            "backend": "trl",
            "config": settings_record(cfg),
            "trl_args": trl_opts,
            "versions": versions(),
            "world_size": state.num_processes,
            "distributed_type": getattr(state.distributed_type, "value",
                                        str(state.distributed_type)),
        })
        (out / "metrics.jsonl").touch()
    state.wait_for_everyone()
    # After TRL's SyncRefModelCallback (added in the trainer's constructor): order matters.
    for cb in make_callbacks(TrainerCallback, trainer, cfg, out, init_dir, a.quiet):
        trainer.add_callback(cb)
    for cb in load_user_callbacks(a.callback, trainer):
        trainer.add_callback(cb)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    last = out / step_name(cfg["steps"])
    if state.is_main_process:
        tmp = staging(out / "final")
        for which in ("policy", "ema"):
            if (last / which).is_dir():
                shutil.copytree(last / which, tmp / which)
        commit(tmp, out / "final")
        shutil.rmtree(out / ".trl", ignore_errors=True)
        if not a.quiet:
            print(f"{PROG}: done: {out / 'final'}", file=sys.stderr)
        print(out / "final")
    state.wait_for_everyone()


def clean_for_resume(out, step):
    """Leftovers of an interrupted run: staging folders, TRL's unfinished checkpoints, step
    folders past the resumed step (they are redone), their metrics lines."""
    for d in out.iterdir():
        if d.name.startswith(".") and ".warp-tmp-" in d.name:
            shutil.rmtree(d) if d.is_dir() else d.unlink()
    shutil.rmtree(out / ".trl", ignore_errors=True)
    for d in out.glob("step-*"):
        m = re.fullmatch(r"step-(\d+)", d.name)
        if m and int(m.group(1)) > step:
            shutil.rmtree(d)
    mpath = out / "metrics.jsonl"
    if mpath.is_file():
        kept = [line for line in mpath.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        mpath.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def parse_trl_args(text, what="--trl-args"):
    if not text:
        return {}
    try:
        v = json.loads(text)
    except ValueError as e:
        raise UsageError(f"{what}: not valid JSON: {e}") from None
    if not isinstance(v, dict):
        raise UsageError(f"{what}: not a JSON object")
    for k in v:
        if k in FIXED_TRL_ARGS:
            raise UsageError(f"{what}: '{k}' is set from warp's settings and cannot be "
                             "overridden")
    return v


def score(a):
    reward = make_reward(a.spec, a.timeout)
    prompts, completions = [], []
    for i, line in enumerate(sys.stdin):
        if not line.strip():
            continue
        try:
            v = json.loads(line)
            p = v["messages"] if "messages" in v else v["prompt"]
            prompts.append(p)
            completions.append(v["completion"])
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"stdin: line {i + 1}: not a JSON object with \"prompt\" (or "
                             "\"messages\") and \"completion\"") from None
    for x in checked(reward, reward.score(prompts, completions), len(prompts)):
        print(repr(x))


def main(argv=None):
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("train", "resume"):
        p = sub.add_parser(name)
        if name == "train":
            p.add_argument("config", help="warp's RL settings (JSON object, or a run.json)")
            p.add_argument("-o", "--output", required=True, help="run folder (new or empty)")
        else:
            p.add_argument("run", help="run folder to continue from its last complete checkpoint")
            p.add_argument("--steps", type=int, help="extend the run to this many steps")
        p.add_argument("--threads", type=int, help="torch intra-op threads per process")
        p.add_argument("--trl-args", help="JSON object of further RLOOConfig / GRPOConfig settings "
                       "(e.g. gradient_checkpointing, gradient_accumulation_steps)")
        p.add_argument("--callback", action="append", default=[],
                       help="Python file defining callback(trainer) -> TrainerCallback")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p = sub.add_parser("score", help="score JSONL {prompt, completion} from stdin")
    p.add_argument("spec", help="verify:arith, model:PATH or cmd:PROGRAM")
    p.add_argument("--timeout", type=float, default=60.0, help="cmd: seconds per call")
    a = ap.parse_args(argv)
    try:
        if a.command == "score":
            score(a)
        else:
            train(a)
    except WarpError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line for whatever TRL/transformers raise
        if os.environ.get("WARP_TRL_TRACEBACK"):
            raise
        print(f"{PROG}: error: {type(e).__name__}: {one_line(e)} (set WARP_TRL_TRACEBACK=1 for "
              "the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # Run as a file from the package folder, that folder is sys.path[0]: dropped, so that the
    # package's own modules cannot shadow the libraries imported later (trl, transformers, ...).
    if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)
    sys.exit(main())
