"""Type stubs of the extension module (src/python/): the public API is warp_align's wrappers."""

from typing import Any, Optional, TypedDict

__version__: str

class WarpError(Exception):
    """Base class of every error warp raises."""

    exit_code: int
    path: Optional[str]
    tensor: Optional[str]

class ArgumentError(WarpError):
    """A bad argument or setting (the CLI's exit code 2)."""

class FormatError(WarpError):
    """Not a valid checkpoint, a bad tensor, or inputs that cannot be combined."""

class FileError(WarpError):
    """An operating-system error on a named path."""

class HubError(WarpError):
    """Hugging Face hub: download, upload, protocol."""

class BackendError(WarpError):
    """The compute backend failed, or this build lacks a feature."""

class RewardError(WarpError):
    """A reward (program, model, verifier) failed."""

class StepError(WarpError):
    """A step of a pipeline failed."""

class InternalError(WarpError):
    """A bug in warp."""

class CancelledError(WarpError):
    """The operation was cancelled (nothing was left half-written)."""

# (output folders, report as JSON text, dry run's plan as JSON text)
_Merged = tuple[list[str], Optional[str], Optional[str]]

class _Options(TypedDict):
    """What warp_align._options makes of `out` and the MergeOptions keywords."""

    out: str
    force: bool
    dtype: str
    max_shard_size: str
    memory_budget: str
    device: str
    threads: Optional[int]
    allow_nonfinite: bool
    dry_run: bool
    progress: Any

def slerp(
    policies: list[str],
    init: str,
    etas: list[float],
    angle: str,
    lerp_threshold: float,
    report: Optional[str],
    options: _Options,
) -> _Merged: ...
def lerp(
    policies: list[str], init: str, weights: list[float], etas: list[float], options: _Options
) -> _Merged: ...
def liti(init: str, merged_model: str, etas: list[float], options: _Options) -> _Merged: ...
def ema(checkpoints: list[str], mu: float, options: _Options) -> _Merged: ...
def merge(
    path: Optional[str], text: Optional[str], name: str, seed: int, options: _Options
) -> _Merged: ...
def inspect(path: str, progress: Any) -> str: ...
def rl_schema() -> str: ...
