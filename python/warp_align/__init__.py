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
    wa.merge("ties.yaml", out="ties", seed=1)  # a mergekit recipe, as `warp merge`

Every merge takes the keywords of `MergeOptions` (dtype, force, memory_budget, threads, dry_run,
progress, ...) besides its own. Every call releases the GIL while it works, reports progress to a tqdm-compatible object
(`progress=tqdm(unit="B", unit_scale=True)`) and its log lines to the `warp_align` logger, stops
cleanly on KeyboardInterrupt (nothing is left at the destination), and raises a subclass of
`WarpError`. Stage 1 on TRL: `warp_align.warp_trl` (needs transformers; not imported here).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence, TypedDict, Union

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

if TYPE_CHECKING:  # PEP 692 (typing.Unpack from Python 3.11); annotations only, not run.
    from typing_extensions import Unpack

__version__: str = _native.__version__

__all__ = [
    "ArgumentError",
    "BackendError",
    "CancelledError",
    "FileError",
    "FormatError",
    "HubError",
    "InternalError",
    "MergeOptions",
    "MergeResult",
    "RewardError",
    "StepError",
    "WarpError",
    "ema",
    "inspect",
    "lerp",
    "liti",
    "merge",
    "rl_schema",
    "slerp",
]

PathLike = Union[str, "os.PathLike[str]"]
Size = Union[int, str]


class MergeOptions(TypedDict, total=False):
    """The keywords every merge takes besides `out` (`**options`), with their defaults:

    dtype: "same" (each tensor keeps the init's dtype), "bf16", "f16", "f32" or "f64".
    force: False. True replaces an existing `out` (swapped out only after everything new is
        written).
    max_shard_size: "5GB". memory_budget: "1GiB". Bytes, or "5GB", "2GiB", ...
    device: "auto", "cpu", "cuda" or "cuda:N" ("auto").
    threads: CPU threads of this call (None: all cores).
    allow_nonfinite: False. True merges inputs holding NaN or Inf (else a FormatError naming
        the tensor).
    dry_run: False. True plans only: reads the headers, writes nothing, and returns the plan
        (`warp ... --dry-run --json`) as `MergeResult.plan`.
    progress: None, or a tqdm-compatible object (update(n), reset(total=...)) for the bytes
        processed.
    """

    dtype: str
    force: bool
    max_shard_size: Size
    memory_budget: Size
    device: str
    threads: Optional[int]
    allow_nonfinite: bool
    dry_run: bool
    progress: Any


@dataclass(frozen=True)
class MergeResult:
    """What a merge wrote.

    outputs: the output folders (one per eta with several etas; else `out` itself); empty for a
        dry run.
    report: SLERP only: per-tensor and per-group task-vector norms, cosines and angles, and the
        coefficients used (the same JSON as `warp slerp --report FILE`); None for the others.
    plan: a dry run's plan (tensors, bytes to read and write, memory), as `--dry-run --json`;
        None otherwise.
    """

    outputs: list
    report: Optional[dict]
    plan: Optional[dict] = None


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


def _options(out, dtype="same", force=False, max_shard_size="5GB", memory_budget="1GiB",
             device="auto", threads=None, allow_nonfinite=False, dry_run=False,
             progress=None) -> dict:
    return dict(
        out=_one("out", out),
        force=bool(force),
        dtype=str(dtype),
        max_shard_size=str(max_shard_size),
        memory_budget=str(memory_budget),
        device=str(device),
        threads=threads,
        allow_nonfinite=bool(allow_nonfinite),
        dry_run=bool(dry_run),
        progress=progress,
    )


def _run(native, *args, out, options: dict) -> MergeResult:
    """Calls `native(*args, {out and the options})`: every merge's one way in."""
    for k in options:
        if k not in MergeOptions.__annotations__:
            name = native.__name__
            raise TypeError(f"{name}() got an unexpected keyword argument {k!r}")
    outputs, report, plan = native(*args, _options(out, **options))
    return MergeResult([Path(p) for p in outputs],
                       None if report is None else json.loads(report),
                       None if plan is None else json.loads(plan))


def slerp(
    policies: Sequence[PathLike],
    init: PathLike,
    *,
    out: PathLike,
    etas: Optional[Iterable[float]] = None,
    angle: str = "tensor",
    lerp_threshold: float = 0.9995,
    report: Optional[PathLike] = None,
    **options: Unpack[MergeOptions],
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
    options: dtype, force, max_shard_size, memory_budget, device, threads, allow_nonfinite,
        dry_run, progress: see `MergeOptions`.

    Returns the output folders and the report (norms, angles) as Python data.
    """
    return _run(_native.slerp, _many("policies", policies), _one("init", init),
                _floats("etas", etas), str(angle), float(lerp_threshold),
                None if report is None else _one("report", report), out=out, options=options)


def lerp(
    policies: Sequence[PathLike],
    init: PathLike,
    *,
    out: PathLike,
    weights: Optional[Iterable[float]] = None,
    etas: Optional[Iterable[float]] = None,
    **options: Unpack[MergeOptions],
) -> MergeResult:
    """LERP (task arithmetic) of task vectors from one init, with fused LITI (`warp lerp`).

    init + sum_m weights[m] * (policies[m] - init), weights 1/M each by default; with etas, also
    (1 - eta) * init + eta * lerp for each eta (several written in one pass). Other arguments as
    in `slerp`; options: see `MergeOptions`.
    """
    return _run(_native.lerp, _many("policies", policies), _one("init", init),
                _floats("weights", weights), _floats("etas", etas), out=out, options=options)


def liti(
    init: PathLike,
    merged: PathLike,
    *,
    etas: Iterable[float],
    out: PathLike,
    **options: Unpack[MergeOptions],
) -> MergeResult:
    """LITI: (1 - eta) * init + eta * merged for each eta (`warp liti`; WARP Sec. 3.3).

    eta traces the KL-reward Pareto front; eta > 1 extrapolates. Several etas are written in one
    pass to out/eta-0.30/, ...; a single eta to `out` itself. Options: see `MergeOptions`.
    """
    return _run(_native.liti, _one("init", init), _one("merged", merged),
                _floats("etas", etas), out=out, options=options)


def ema(
    checkpoints: Sequence[PathLike],
    mu: float,
    *,
    out: PathLike,
    **options: Unpack[MergeOptions],
) -> MergeResult:
    """Exponential moving average of checkpoints, oldest first (`warp ema`).

    ema <- checkpoints[0], then ema <- (1 - mu) * ema + mu * c for each next one, in one pass.
    Options: see `MergeOptions`.
    """
    return _run(_native.ema, _many("checkpoints", checkpoints), float(mu), out=out,
                options=options)


def _path_default(x):
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    raise ArgumentError(f"recipe: {type(x).__name__} is not a recipe value")


def merge(
    recipe: Union[PathLike, Mapping[str, Any]],
    *,
    out: PathLike,
    seed: int = 0,
    **options: Unpack[MergeOptions],
) -> MergeResult:
    """Merges models as a mergekit recipe says (`warp merge RECIPE.yaml -o OUT`).

    TIES, DARE (dare_ties, dare_linear), breadcrumbs, della, SLERP, NuSLERP, model stock,
    task arithmetic, linear, passthrough slices (depth up-scaling), ... and warp_slerp (WARP's
    SLERP of M task vectors with LITI etas), streamed tensor by tensor within the memory budget;
    mergekit's configuration language as of mergekit 0.1.5 (docs/RECIPES.md). The output is the
    same, byte for byte, as the command line's (a full checkpoint: `warp merge --as full` where
    the models are LoRA adapters of one base).

    recipe: the recipe as
        - a path (str or os.PathLike) to the YAML file;
        - YAML text: a str holding a line break (e.g. a triple-quoted string);
        - a dict, as yaml.safe_load gives it (os.PathLike values are taken as paths).
        Model names in it are HF folders, .safetensors files or hub ids org/name[@revision];
        relative paths are relative to the working directory.
    seed: seed of the random methods (dare_ties, dare_linear): each keep/drop decision is a
        function of (seed, tensor, model, element), whatever the threads, budget or chunking.
    options: dtype (overrides the recipe's `dtype`/`out_dtype` unless "same"), force,
        max_shard_size, memory_budget, device ("cuda" is refused: recipe kernels run on the
        CPU), threads, allow_nonfinite, dry_run, progress: see `MergeOptions`.

    A bad recipe raises ArgumentError with one line naming the file (or "<recipe>") and the key,
    e.g. "<recipe>: models[0].parameters.densty: unknown parameter"; nothing is written.
    """
    path = text = None
    name = "<recipe>"
    if isinstance(recipe, Mapping):
        text = json.dumps(recipe, indent=2, default=_path_default) + "\n"
    elif isinstance(recipe, str) and "\n" in recipe:
        text = recipe
    elif isinstance(recipe, (str, os.PathLike)):
        path = os.fspath(recipe)
        name = path
    else:
        raise ArgumentError(
            f"recipe: expected a path, YAML text or a dict, got {type(recipe).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ArgumentError(f"seed: expected a whole number from 0 to 2**64 - 1, got {seed!r}")
    return _run(_native.merge, path, text, name, seed, out=out, options=options)


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
