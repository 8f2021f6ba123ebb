"""warp_align's merges and inspect against the `warp` CLI: the same engine, so the same bytes;
progress through a tqdm-compatible object and logging; typed exceptions."""

import json
import logging
from pathlib import Path

import pytest

import warp_align as wa
from conftest import assert_same_tree, cli, tree


class Bar:
    """What a merge needs of tqdm: reset(total=), update(n), set_description."""

    def __init__(self):
        self.total, self.n, self.labels, self.updates = None, 0, [], 0

    def reset(self, total=None):
        self.total, self.n = total, 0

    def update(self, n):
        self.n += n
        self.updates += 1

    def set_description(self, s):
        self.labels.append(s)


def test_slerp_equals_the_cli_byte_for_byte(models, tmp_path):
    m = models
    for angle, etas in [("tensor", [0.3, 1.0]), ("layer", [0.5]), ("global", [])]:
        a, b = tmp_path / f"cli-{angle}", tmp_path / f"py-{angle}"
        ra, rb = tmp_path / f"cli-{angle}.json", tmp_path / f"py-{angle}.json"
        args = ["slerp", m["p1"], m["p2"], m["p3"], "--init", m["init"], "--angle", angle,
                "-o", a, "--report", ra, "-q"]
        for e in etas:
            args += ["--eta", e]
        out = cli(*args).stdout.split()
        r = wa.slerp([m["p1"], m["p2"], m["p3"]], m["init"], out=b, etas=etas, angle=angle,
                     report=rb)
        assert_same_tree(a, b)
        assert ra.read_bytes() == rb.read_bytes()
        # The angles as Python data: the report file's content.
        assert r.report == json.loads(ra.read_text())
        assert r.report["tensors"], "the report lists no tensor"
        assert [p.relative_to(b) for p in r.outputs] == [Path(p).relative_to(a) for p in out]
        assert len(r.outputs) == max(1, len(etas)) and all(p.is_dir() for p in r.outputs)


def test_lerp_liti_ema_and_dtype_equal_the_cli(models, tmp_path):
    m = models
    cases = [
        (["lerp", m["p1"], m["p2"], "--init", m["init"], "--weight", 0.7, "--weight", 0.4,
          "--eta", 0.5, "--eta", 1.5],
         lambda out: wa.lerp([m["p1"], m["p2"]], m["init"], weights=[0.7, 0.4], etas=[0.5, 1.5],
                             out=out)),
        (["liti", "--init", m["init"], "--merged", m["p1"], "--eta", 0.25, "--dtype", "f32"],
         lambda out: wa.liti(m["init"], m["p1"], etas=[0.25], dtype="f32", out=out)),
        (["ema", "--mu", 0.3, m["p1"], m["p2"], m["p3"], "--max-shard-size", "1MB"],
         lambda out: wa.ema([m["p1"], m["p2"], m["p3"]], 0.3, max_shard_size="1MB", out=out)),
    ]
    for i, (args, call) in enumerate(cases):
        a, b = tmp_path / f"cli-{i}", tmp_path / f"py-{i}"
        cli(*args, "-o", a, "-q")
        r = call(b)
        assert r.report is None
        assert_same_tree(a, b)
    # A control: different settings give different bytes (the comparison can fail).
    wa.liti(m["init"], m["p1"], etas=[0.26], dtype="f32", out=tmp_path / "other")
    assert tree(tmp_path / "other") != tree(tmp_path / "cli-1")


def test_inspect_equals_the_cli(models):
    got = wa.inspect(models["init"])
    want = json.loads(cli("inspect", "--json", models["init"]).stdout)
    assert got == want
    assert got["shards"] == 2 and got["parameters"] > 0


def test_progress_goes_to_a_tqdm_compatible_object_and_logging(models, tmp_path, caplog):
    bar = Bar()
    with caplog.at_level(logging.INFO, logger="warp_align"):
        wa.slerp([models["p1"], models["p2"]], models["init"], out=tmp_path / "o", progress=bar)
    assert bar.total and bar.n == bar.total and bar.updates >= 1 and bar.labels
    assert any("slerp: 3 input(s)" in r.getMessage() for r in caplog.records)


def test_real_tqdm(models, tmp_path):
    tqdm = pytest.importorskip("tqdm").tqdm
    import io

    with tqdm(file=io.StringIO(), unit="B") as t:
        wa.ema([models["p1"], models["p2"]], 0.5, out=tmp_path / "o", progress=t)
        assert t.total and t.n == t.total


def test_errors_are_typed(models, tmp_path, monkeypatch):
    m = models
    # Bad arguments: ArgumentError (exit code 2 in the CLI), before anything is written.
    with pytest.raises(wa.ArgumentError, match="exists"):
        wa.slerp([m["p1"], m["p2"]], m["init"], out=m["p3"])
    with pytest.raises(wa.ArgumentError, match="dtype"):
        wa.slerp([m["p1"], m["p2"]], m["init"], out=tmp_path / "x", dtype="int7")
    with pytest.raises(wa.ArgumentError, match="angle"):
        wa.slerp([m["p1"], m["p2"]], m["init"], out=tmp_path / "x", angle="block")
    with pytest.raises(wa.ArgumentError):
        wa.slerp([m["p1"]], m["init"], out=tmp_path / "x")
    with pytest.raises(wa.ArgumentError):
        wa.ema([m["p1"], m["p2"]], 1.5, out=tmp_path / "x")
    with pytest.raises(wa.ArgumentError, match="list"):
        wa.slerp(str(m["p1"]), m["init"], out=tmp_path / "x")
    try:
        wa.slerp([m["p1"], m["p2"]], m["init"], out=tmp_path / "x", etas=[float("nan")])
        raise AssertionError("a NaN eta was accepted")
    except wa.WarpError as e:
        assert isinstance(e, wa.ArgumentError) and e.exit_code == 2
    # A file that is not a checkpoint: FormatError naming it.
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with pytest.raises(wa.FormatError) as e:
        wa.inspect(bad)
    assert e.value.path == str(bad) and e.value.exit_code == 1
    # Inputs that cannot be combined (different shapes): FormatError.
    other = tmp_path / "other"
    cli("fixture", "--size", "3MB", "-o", other, "-q")
    with pytest.raises(wa.FormatError):
        wa.slerp([m["p1"], other], m["init"], out=tmp_path / "x")
    # A missing file: neither a path nor a hub id (the hub's typed error), naming it.
    with pytest.raises(wa.HubError, match="nothing-here") as e:
        wa.inspect(tmp_path / "nothing-here")
    assert e.value.exit_code == 2
    # The compute backend: no CUDA in this build.
    with pytest.raises(wa.BackendError):
        wa.liti(m["init"], m["p1"], etas=[0.5], device="cuda", out=tmp_path / "x")
    # The hub, offline, a model not in the (empty) cache: HubError.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(wa.HubError, match="not in the cache"):
        wa.inspect("warp-test-no-such-org/no-such-model")
    # Nothing was written by any of the failures.
    assert not (tmp_path / "x").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_every_class_derives_from_warp_error():
    for name in ("ArgumentError", "FormatError", "FileError", "HubError", "BackendError",
                 "RewardError", "StepError", "InternalError", "CancelledError"):
        assert issubclass(getattr(wa, name), wa.WarpError), name
    assert issubclass(wa.WarpError, Exception)
