"""Shared fixtures of the Python package's tests (run by scripts/test-python): the `warp` CLI the
API is compared with ($WARP_BIN), synthetic checkpoints made by `warp fixture`, and a byte-for-byte
comparison of output folders."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def warp_bin() -> str:
    b = os.environ.get("WARP_BIN")
    if not b:
        raise RuntimeError("WARP_BIN is not set: run the tests through scripts/test-python")
    return b


def cli(*args, check=True) -> subprocess.CompletedProcess:
    """Runs `warp ARGS`; with `check`, a failure fails the test with its stderr."""
    p = subprocess.run([warp_bin(), *map(str, args)], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"warp {' '.join(map(str, args))} failed ({p.returncode}):\n"
                             f"{p.stderr}")
    return p


def tree(d: Path) -> dict:
    """{relative path: bytes} of every file under `d` (hidden ones included)."""
    d = Path(d)
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def assert_same_tree(a: Path, b: Path):
    ta, tb = tree(a), tree(b)
    assert sorted(ta) == sorted(tb), f"{a} and {b} hold different files"
    assert ta, f"{a} is empty"
    for k in ta:
        assert ta[k] == tb[k], f"{k} differs between {a} and {b}"


def fixture(dest: Path, size: str, seed: int, base_seed=None, dtype="bf16", shard=None) -> Path:
    args = ["fixture", "--size", size, "--seed", seed, "--dtype", dtype, "-o", dest, "-q"]
    if base_seed is not None:
        args += ["--base-seed", base_seed, "--noise", "0.01"]
    if shard:
        args += ["--max-shard-size", shard]
    cli(*args)
    return dest


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """A small init and three fine-tunes of it (bf16, ~2 MB, the init in two shards)."""
    d = tmp_path_factory.mktemp("models")
    return {
        "init": fixture(d / "init", "2MB", 0, shard="1MB"),
        "p1": fixture(d / "p1", "2MB", 1, base_seed=0),
        "p2": fixture(d / "p2", "2MB", 2, base_seed=0),
        "p3": fixture(d / "p3", "2MB", 3, base_seed=0),
    }


@pytest.fixture(scope="session")
def big(tmp_path_factory):
    """A few hundred MB: an init and a fine-tune (f32, 300 MB each), for the interruption and GIL
    tests, where a merge must run long enough to be interrupted."""
    d = tmp_path_factory.mktemp("big")
    return {
        "init": fixture(d / "init", "300MB", 0, dtype="f32"),
        "p1": fixture(d / "p1", "300MB", 1, base_seed=0, dtype="f32"),
    }
