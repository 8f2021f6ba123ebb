"""WARP on any TRL trainer: a TrainerCallback that keeps WARP's EMA of the policy and writes warp's
run layout, and a helper that merges finished runs (WARP's stages 2 and 3).

    from trl import RLOOTrainer
    from warp_align.warp_trl import WarpEMACallback, merge_runs

    for m in (1, 2):
        trainer = RLOOTrainer(..., callbacks=[WarpEMACallback(f"runs/run-{m}", mu=0.01)])
        trainer.train()
    merge_runs(["runs/run-1", "runs/run-2"], init="sft-model", etas=[0.3, 1.0], out="merged")

The callback keeps θ_ema in f32 beside the model (4 bytes per parameter, on the parameters'
device unless `device` says otherwise): θ_ema ← θ_0 when training begins, then
θ_ema ← (1 − μ)·θ_ema + μ·θ after every optimizer step. At every save of the trainer and at the end
it writes, staged under a hidden name and renamed when complete:

    RUN/run.json                       what wrote it (backend "trl-callback"), μ, versions
    RUN/step-NNNNNN/{policy,ema}/      at the trainer's saves (save_steps)
    RUN/final/{policy,ema}/            at the end of training

each an HF folder (f32 safetensors, config, tokenizer) that `warp slerp`, `warp liti` and
`warp_align.slerp` read. This EMA is bookkeeping for the merge; unlike `warp rl` (whose KL anchor is
the EMA) it does not change the trainer's loss: pair it with a trainer whose reference model is
synced the same way (TRL's `sync_ref_model=True, ref_model_sync_steps=1, ref_model_mixup_alpha=μ`)
to train WARP's stage 1 exactly. One process or DDP (each rank keeps the same EMA; rank 0 writes);
sharded models (FSDP, ZeRO-3) are not supported here: use `warp rl --backend trl`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import torch
from transformers import TrainerCallback

from . import __version__, slerp, liti
from .trl_backend import commit, step_name, staging, write_json_atomic

__all__ = ["WarpEMACallback", "merge_runs"]


class WarpEMACallback(TrainerCallback):
    """Keeps the policy's EMA in f32 and writes `policy`/`ema` in warp's run layout.

    output_dir: the run folder (created). mu: the EMA rate μ in (0, 1] (WARP: 0.01 per step).
    device: where θ_ema lives (default: each parameter's own device).
    """

    def __init__(self, output_dir: os.PathLike | str, mu: float, *, device: Any = None):
        if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not 0 < mu <= 1:
            raise ValueError(f"mu must be in (0, 1], got {mu!r}")
        self.out = Path(output_dir)
        self.mu = float(mu)
        self.device = device
        self.ema: dict = {}
        self.steps = 0

    # -- the EMA -----------------------------------------------------------------------------

    @staticmethod
    def _params(model):
        return [(n, p) for n, p in model.named_parameters()]

    def on_train_begin(self, args, state, control, model=None, **kw):
        if model is None:
            raise RuntimeError("WarpEMACallback: the trainer passed no model to its callbacks")
        if not self.ema:
            for n, p in self._params(model):
                if p.numel() == 0:
                    raise RuntimeError(f"WarpEMACallback: parameter {n} is sharded (FSDP or "
                                       "ZeRO-3); use `warp rl --backend trl` for sharded models")
                self.ema[n] = p.detach().to(self.device or p.device, torch.float32, copy=True)
            self.steps = state.global_step
        if state.is_world_process_zero:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.out / "run.json", self._record(model))
        return control

    def on_step_end(self, args, state, control, model=None, **kw):
        with torch.no_grad():
            for n, p in self._params(model):
                e = self.ema[n]
                e.mul_(1.0 - self.mu).add_(p.detach().to(e.device, torch.float32), alpha=self.mu)
        self.steps = state.global_step
        return control

    # -- the run layout ----------------------------------------------------------------------

    def _record(self, model):
        import transformers

        versions = {"transformers": transformers.__version__, "torch": torch.__version__,
                    "python": sys.version.split()[0]}
        try:
            import trl

            versions["trl"] = trl.__version__
        except ImportError:
            pass
        return {"warp_align": __version__, "backend": "trl-callback", "mu": self.mu,
                "model": getattr(model, "name_or_path", None), "steps": self.steps,
                "versions": versions}

    def _state_dicts(self, model):
        """(policy, ema) state dicts in f32 on the CPU; tied weights stay one tensor."""
        by_ptr = {p.data_ptr(): n for n, p in self._params(model)}
        policy, ema, seen = {}, {}, {}
        for k, v in model.state_dict().items():
            key = v.data_ptr()
            if key not in seen:
                n = by_ptr.get(key)
                pol = v.detach().to("cpu", torch.float32, copy=True).contiguous()
                e = self.ema[n].detach().to("cpu", copy=True).contiguous() if n else pol
                seen[key] = (pol, e)
            policy[k], ema[k] = seen[key]
        return policy, ema

    def _write(self, dest: Path, model, tokenizer):
        policy, ema = self._state_dicts(model)
        tmp = staging(dest)
        for which, sd in (("policy", policy), ("ema", ema)):
            d = tmp / which
            model.save_pretrained(d, state_dict=sd, safe_serialization=True)
            cj = d / "config.json"
            if cj.is_file():
                c = json.loads(cj.read_text(encoding="utf-8"))
                for key in ("torch_dtype", "dtype"):
                    if key in c:
                        c[key] = "float32"
                cj.write_text(json.dumps(c, indent=2) + "\n", encoding="utf-8")
            if tokenizer is not None:
                tokenizer.save_pretrained(d)
        commit(tmp, dest)

    def _tokenizer(self, kw):
        return kw.get("processing_class") or kw.get("tokenizer")

    def on_save(self, args, state, control, model=None, **kw):
        if state.is_world_process_zero:
            dest = self.out / step_name(state.global_step)
            if not dest.exists():
                self._write(dest, model, self._tokenizer(kw))
        return control

    def on_train_end(self, args, state, control, model=None, **kw):
        if state.is_world_process_zero:
            final = self.out / "final"
            if final.exists():
                shutil.rmtree(final)
            self._write(final, model, self._tokenizer(kw))
            write_json_atomic(self.out / "run.json", self._record(model))
        return control


def merge_runs(
    runs: Sequence[os.PathLike | str],
    init: os.PathLike | str,
    *,
    out: os.PathLike | str,
    etas: Optional[Iterable[float]] = None,
    which: str = "policy",
    method: str = "slerp",
    **kw: Any,
):
    """Merges finished runs (warp's run layout: RUN/final/{policy,ema}) — WARP's stages 2 and 3.

    method "slerp" (M >= 2 runs): SLERP of the runs' task vectors from `init`, then LITI at each
    eta (`warp_align.slerp`). method "liti" (one run): LITI of that run's model towards `init`.
    which: "policy" (WARP merges the trained policies) or "ema". Further keyword arguments go to
    `warp_align.slerp` / `warp_align.liti` (angle, dtype, progress, ...). Returns their
    MergeResult.
    """
    if which not in ("policy", "ema"):
        raise ValueError(f"which must be 'policy' or 'ema', got {which!r}")
    models = []
    for r in runs:
        d = Path(r) / "final" / which
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: no such folder (is {r} a finished run?)")
        models.append(d)
    if method == "slerp":
        return slerp(models, init, out=out, etas=etas, **kw)
    if method == "liti":
        if len(models) != 1:
            raise ValueError(f"method 'liti' takes one run, got {len(models)}")
        if etas is None:
            raise ValueError("method 'liti' needs etas")
        return liti(init, models[0], etas=etas, out=out, **kw)
    raise ValueError(f"method must be 'slerp' or 'liti', got {method!r}")
