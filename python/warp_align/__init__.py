"""warp from Python: WARP's merges over Hugging Face safetensors checkpoints on warp's Rust engine.

WARP (Weight Averaged Rewarded Policies) aligns a model in three stages: RL with a KL penalty
towards the policy's own exponential moving average (EMA), SLERP of the task vectors of several
such runs, and LITI, an interpolation back towards the init. This package runs stages 2 and 3
(and the offline EMA) with the same streaming engine as the `warp` command line, byte for byte:

    import warp_align as wa
    r = wa.slerp(["run-1/final/policy", "run-2/final/policy"], init="sft",
                 etas=[0.3, 0.5, 1.0], out="merged")
    r.outputs            # [Path('merged/eta-0.30'), Path('merged/eta-0.50'), Path('merged/eta-1.00')]
    r.report["tensors"]  # the task vectors' norms and angles, as `warp slerp --report`

Every call releases the GIL while it works, reports progress to a tqdm-compatible object
(`progress=tqdm(unit="B", unit_scale=True)`) and its log lines to the `warp_align` logger, stops
cleanly on KeyboardInterrupt (nothing is left at the destination), and raises a subclass of
`WarpError`. Stage 1 on TRL: `warp_align.warp_trl` (needs transformers; not imported here).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

from . import _native
from ._native import (
    ArgumentError,
    BackendError,
    CancelledError,
    FileError,
    FormatError,
    HubError,
    InternalError,
    RewardError,
    StepError,
    WarpError,
)

__version__: str = _native.__version__

__all__ = [
    "ArgumentError",
    "BackendError",
    "CancelledError",
    "FileError",
    "FormatError",
    "HubError",
    "InternalError",
    "MergeResult",
    "RewardError",
    "StepError",
    "WarpError",
    "ema",
    "inspect",
    "lerp",
    "liti",
    "rl_schema",
    "slerp",
]

PathLike = Union[str, "os.PathLike[str]"]
Size = Union[int, str]


@dataclass(frozen=True)
class MergeResult:
    """What a merge wrote.

    outputs: the output folders (one per η with several etas; else `out` itself).
    report: SLERP only: per-tensor and per-group task-vector norms, cosines and angles, and the
        coefficients used (the same JSON as `warp slerp --report FILE`); None for the others.
    """

    outputs: list
    report: Optional[dict]


def _one(name: str, x: Any) -> str:
    if not isinstance(x, (str, os.PathLike)):
        raise ArgumentError(f"{name}: expected a path or hub id, got {type(x).__name__}")
    return os.fspath(x)


def _many(name: str, xs: Any) -> list:
    if isinstance(xs, (str, bytes, os.PathLike)):
        raise ArgumentError(f"{name}: expected a list of paths or hub ids, not one")
    return [_one(name, x) for x in xs]


def _floats(name: str, xs: Optional[Iterable[float]]) -> list:
    if xs is None:
        return []
    if isinstance(xs, (int, float)):
        return [float(xs)]
    return [float(x) for x in xs]


def _common(out, force, dtype, max_shard_size, memory_budget, device, threads, allow_nonfinite,
            progress) -> dict:
    return dict(
        out=_one("out", out),
        force=bool(force),
        dtype=str(dtype),
        max_shard_size=str(max_shard_size),
        memory_budget=str(memory_budget),
        device=str(device),
        threads=threads,
        allow_nonfinite=bool(allow_nonfinite),
        progress=progress,
    )


def _result(r) -> MergeResult:
    outputs, report = r
    return MergeResult([Path(p) for p in outputs], None if report is None else json.loads(report))


def slerp(
    policies: Sequence[PathLike],
    init: PathLike,
    *,
    out: PathLike,
    etas: Optional[Iterable[float]] = None,
    angle: str = "tensor",
    lerp_threshold: float = 0.9995,
    report: Optional[PathLike] = None,
    dtype: str = "same",
    force: bool = False,
    max_shard_size: Size = "5GB",
    memory_budget: Size = "1GiB",
    device: str = "auto",
    threads: Optional[int] = None,
    allow_nonfinite: bool = False,
    progress: Any = None,
) -> MergeResult:
    """SLERP of M >= 2 task vectors from one init, with fused LITI exports (`warp slerp`).

    Merges policies fine-tuned from the same `init` by spherical interpolation of their task
    vectors (WARP Sec. 3.2; M > 2 merged iteratively with lambda = 1/m), then, for each eta,
    (1 - eta) * init + eta * slerp (LITI). Several etas are written in one pass to
    out/eta-0.30/, ...; none (the default) or one writes the merge to `out` itself.

    policies, init: HF folders, .safetensors files, or hub ids org/name[@revision].
    angle: "tensor" (one angle per tensor), "layer" (per transformer block) or "global".
    lerp_threshold: LERP instead of SLERP where |cos(angle)| exceeds it (or a task vector is 0).
    report: also write the norms and angles (JSON) to this file, as `--report`.
    dtype: "same" (each tensor keeps the init's dtype), "bf16", "f16", "f32" or "f64".
    force: replace an existing `out` (swapped out only after everything new is written).
    max_shard_size, memory_budget: bytes, or "5GB", "2GiB", ...
    device: "auto", "cpu", "cuda" or "cuda:N". threads: CPU threads (default: all cores).
    progress: a tqdm-compatible object (update(n), reset(total=...)) for the bytes processed.

    Returns the output folders and the report (norms, angles) as Python data.
    """
    return _result(_native.slerp(
        _many("policies", policies), _one("init", init),
        etas=_floats("etas", etas), angle=str(angle), lerp_threshold=float(lerp_threshold),
        report=None if report is None else _one("report", report),
        **_common(out, force, dtype, max_shard_size, memory_budget, device, threads,
                  allow_nonfinite, progress)))


def lerp(
    policies: Sequence[PathLike],
    init: PathLike,
    *,
    out: PathLike,
    weights: Optional[Iterable[float]] = None,
    etas: Optional[Iterable[float]] = None,
    dtype: str = "same",
    force: bool = False,
    max_shard_size: Size = "5GB",
    memory_budget: Size = "1GiB",
    device: str = "auto",
    threads: Optional[int] = None,
    allow_nonfinite: bool = False,
    progress: Any = None,
) -> MergeResult:
    """LERP (task arithmetic) of task vectors from one init, with fused LITI (`warp lerp`).

    init + sum_m weights[m] * (policies[m] - init), weights 1/M each by default; with etas, also
    (1 - eta) * init + eta * lerp for each eta (several written in one pass). Other arguments as
    in `slerp`.
    """
    return _result(_native.lerp(
        _many("policies", policies), _one("init", init),
        weights=_floats("weights", weights), etas=_floats("etas", etas),
        **_common(out, force, dtype, max_shard_size, memory_budget, device, threads,
                  allow_nonfinite, progress)))


def liti(
    init: PathLike,
    merged: PathLike,
    *,
    etas: Iterable[float],
    out: PathLike,
    dtype: str = "same",
    force: bool = False,
    max_shard_size: Size = "5GB",
    memory_budget: Size = "1GiB",
    device: str = "auto",
    threads: Optional[int] = None,
    allow_nonfinite: bool = False,
    progress: Any = None,
) -> MergeResult:
    """LITI: (1 - eta) * init + eta * merged for each eta (`warp liti`; WARP Sec. 3.3).

    eta traces the KL-reward Pareto front; eta > 1 extrapolates. Several etas are written in one
    pass to out/eta-0.30/, ...; a single eta to `out` itself. Other arguments as in `slerp`.
    """
    return _result(_native.liti(
        _one("init", init), _one("merged", merged), etas=_floats("etas", etas),
        **_common(out, force, dtype, max_shard_size, memory_budget, device, threads,
                  allow_nonfinite, progress)))


def ema(
    checkpoints: Sequence[PathLike],
    mu: float,
    *,
    out: PathLike,
    dtype: str = "same",
    force: bool = False,
    max_shard_size: Size = "5GB",
    memory_budget: Size = "1GiB",
    device: str = "auto",
    threads: Optional[int] = None,
    allow_nonfinite: bool = False,
    progress: Any = None,
) -> MergeResult:
    """Exponential moving average of checkpoints, oldest first (`warp ema`).

    ema <- checkpoints[0], then ema <- (1 - mu) * ema + mu * c for each next one, in one pass.
    Other arguments as in `slerp`.
    """
    return _result(_native.ema(
        _many("checkpoints", checkpoints), float(mu),
        **_common(out, force, dtype, max_shard_size, memory_budget, device, threads,
                  allow_nonfinite, progress)))


def inspect(path: PathLike, *, progress: Any = None) -> dict:
    """Validates a checkpoint completely and describes it (`warp inspect --json`).

    Checks every shard header and offset, the index against the shards, and every float value
    (no NaN or Inf); raises FormatError naming the file and tensor otherwise. Returns
    {"path", "layout", "shards", "tensors": [{"name", "dtype", "shape", "bytes", "shard"}],
    "total_bytes", "parameters", "metadata", "warnings"}.
    """
    return json.loads(_native.inspect(_one("path", path), progress=progress))


def rl_schema() -> dict:
    """The RL settings' schema, from Rust's RlConfig (`warp rl --print-schema`).

    {"name": "RlConfig", "version", "fields": [{"name", "type", "default", "nullable",
    "choices", "flag", "help"}, ...]}: what `warp rl`, its config files and the TRL backend accept.
    """
    return json.loads(_native.rl_schema())
