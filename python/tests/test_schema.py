"""The RL settings are declared once, in Rust (RlConfig): the Python side (the TRL backend's entry
point, warp_align.rl_schema) reads their names, types, defaults and allowed values from the
exported schema, so a setting added in Rust appears in Python without editing Python."""

import importlib
import json

import pytest

import warp_align as wa
from conftest import ROOT, cli
from warp_align import trl_backend


def write_config(tmp_path, v):
    p = tmp_path / "config.json"
    p.write_text(json.dumps(v))
    return p


def test_the_extension_module_exports_the_same_schema_as_the_cli():
    assert wa.rl_schema() == json.loads(cli("rl", "--print-schema").stdout)


def test_every_rust_field_is_known_to_the_trl_backend_with_rusts_default(tmp_path, monkeypatch):
    monkeypatch.delenv("WARP_RL_SCHEMA", raising=False)
    fields = wa.rl_schema()["fields"]
    names = [f["name"] for f in fields]
    # The schema covers RlConfig: the flags of `warp rl` (every setting is a flag).
    help_text = cli("rl", "--help").stdout
    for f in fields:
        assert f["flag"].startswith("<") or f["flag"] in help_text, f["flag"]
    assert {"model", "dtype", "mu", "beta", "steps", "backend"} <= set(names)
    # The entry point's defaults are Rust's, field by field (one source, not a copy).
    assert trl_backend.defaults() == {f["name"]: f["default"] for f in fields}
    # Every field is accepted with its default value (a config file listing every setting),
    # and the loaded config has every field.
    cfg = {f["name"]: f["default"] for f in fields}
    cfg.update(model=str(ROOT / "fixtures/arith/model"),
               prompts=str(ROOT / "fixtures/arith/train.jsonl"), backend="trl")
    c = trl_backend.load_config(write_config(tmp_path, cfg))
    assert set(names) <= set(c)
    # Allowed values come from Rust too: an enum value Rust does not know is refused.
    for f in fields:
        if f["choices"]:
            bad = dict(cfg, **{f["name"]: "no-such-value"})
            with pytest.raises(trl_backend.UsageError, match=f"field '{f['name']}'"):
                trl_backend.load_config(write_config(tmp_path, bad))


def test_the_dtype_defaults_agree(tmp_path):
    rust = {f["name"]: f for f in json.loads(cli("rl", "--print-schema").stdout)["fields"]}
    assert rust["dtype"]["default"] == "auto"
    assert rust["dtype"]["choices"] == ["auto", "f32", "bf16"]
    minimal = {"model": str(ROOT / "fixtures/arith/model"),
               "prompts": str(ROOT / "fixtures/arith/train.jsonl")}
    c = trl_backend.load_config(write_config(tmp_path, minimal))
    assert c["dtype"] == rust["dtype"]["default"]
    # The same for every setting the Python side fills in.
    for k, f in rust.items():
        if k not in minimal and k != "backend":
            assert c[k] == f["default"], k


def test_a_setting_added_in_rust_appears_in_python(tmp_path, monkeypatch):
    """A new RlConfig field reaches the entry point through the schema alone: the schema of a
    build with one more setting (as `warp rl` passes it in $WARP_RL_SCHEMA) makes the entry
    point accept it, fill in its default and check its type, with no Python edited."""
    s = wa.rl_schema()
    s["fields"].append({"name": "new_setting", "type": "integer", "default": 7,
                        "nullable": False, "choices": [], "flag": "--new-setting", "help": ""})
    monkeypatch.setenv("WARP_RL_SCHEMA", json.dumps(s))
    be = importlib.reload(trl_backend)
    try:
        minimal = {"model": str(ROOT / "fixtures/arith/model"),
                   "prompts": str(ROOT / "fixtures/arith/train.jsonl")}
        assert be.load_config(write_config(tmp_path, minimal))["new_setting"] == 7
        assert be.load_config(write_config(tmp_path, dict(minimal, new_setting=3)))[
            "new_setting"] == 3
        with pytest.raises(be.UsageError, match="field 'new_setting' is not an integer"):
            be.load_config(write_config(tmp_path, dict(minimal, new_setting="three")))
        # Without it in the schema, the same key is unknown.
        monkeypatch.delenv("WARP_RL_SCHEMA")
        be = importlib.reload(trl_backend)
        with pytest.raises(be.UsageError, match="unknown field 'new_setting'"):
            be.load_config(write_config(tmp_path, dict(minimal, new_setting=3)))
    finally:
        monkeypatch.delenv("WARP_RL_SCHEMA", raising=False)
        importlib.reload(trl_backend)


def test_the_binary_embeds_the_package_module():
    """One source: the file `warp rl --backend trl` runs (embedded in the binary) is this
    package's module, byte for byte."""
    from conftest import warp_bin

    module = open(trl_backend.__file__, "rb").read()
    assert module == (ROOT / "python/warp_align/trl_backend.py").read_bytes()
    assert module in open(warp_bin(), "rb").read()
