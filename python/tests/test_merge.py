"""warp_align.merge(recipe) against `warp merge RECIPE -o OUT`: the same library run, so the same
bytes (the element-wise random methods included, seeded); the recipe as a path, YAML text or a
dict; dry runs; typed errors naming the key, with nothing written."""

import json
import logging
from pathlib import Path

import pytest

import warp_align as wa
from conftest import assert_same_tree, cli, tree

DARE_TIES = """\
models:
  - model: {p1}
    parameters: {{weight: 0.6, density: 0.5}}
  - model: {p2}
    parameters: {{weight: 0.4, density: 0.7}}
base_model: {init}
merge_method: dare_ties
dtype: bfloat16
"""

TIES = """\
models:
  - model: {p1}
    parameters: {{weight: 1.0, density: 0.4}}
  - model: {p2}
    parameters: {{weight: [0.2, 0.8], density: 0.6}}
  - model: {p3}
    parameters: {{weight: 0.5, density: 0.5}}
base_model: {init}
merge_method: ties
parameters: {{normalize: true}}
"""

SLICES = """\
slices:
  - sources: [{{model: {p1}, layer_range: [0, 2]}}]
  - sources: [{{model: {p2}, layer_range: [1, 2]}}]
merge_method: passthrough
"""

WARP_SLERP = """\
models: [{{model: {p1}}}, {{model: {p2}}}, {{model: {p3}}}]
base_model: {init}
merge_method: warp_slerp
parameters: {{etas: [0.3, 1.0], angle: layer}}
"""


def write(tmp_path, name, template, models):
    p = tmp_path / name
    p.write_text(template.format(**models))
    return p


def test_merge_equals_the_cli_byte_for_byte(models, tmp_path):
    """Each recipe from Python and from the CLI: the same files, the same bytes."""
    cases = [
        ("dare_ties", DARE_TIES, {"seed": 3}, ["--seed", 3]),
        ("ties", TIES, {}, []),
        ("slices", SLICES, {"max_shard_size": "1MB"}, ["--max-shard-size", "1MB"]),
        ("dtype", TIES, {"dtype": "f32"}, ["--dtype", "f32"]),
        ("warp_slerp", WARP_SLERP, {}, []),
    ]
    for name, template, kw, flags in cases:
        recipe = write(tmp_path, f"{name}.yaml", template, models)
        a, b = tmp_path / f"cli-{name}", tmp_path / f"py-{name}"
        listed = cli("merge", recipe, "-o", a, "-q", *flags).stdout.split()
        r = wa.merge(recipe, out=b, **kw)
        assert_same_tree(a, b)
        assert [p.relative_to(b) for p in r.outputs] == [Path(p).relative_to(a) for p in listed]
        assert r.plan is None
        # warp_slerp reports the angles as `warp slerp` does; the others have no report.
        assert (r.report is not None and r.report["tensors"]) if name == "warp_slerp" \
            else r.report is None
    # warp_slerp: one folder per eta, as `warp slerp`.
    assert sorted(p.name for p in (tmp_path / "py-warp_slerp").iterdir()) == \
        ["eta-0.30", "eta-1.00"]
    # Controls (the comparison can fail): another seed, or no dtype override, differ.
    recipe = tmp_path / "dare_ties.yaml"
    wa.merge(recipe, out=tmp_path / "seed-4", seed=4)
    assert tree(tmp_path / "seed-4") != tree(tmp_path / "cli-dare_ties")
    assert tree(tmp_path / "py-ties") != tree(tmp_path / "py-dtype")


def test_the_recipe_as_a_path_yaml_text_or_a_dict(models, tmp_path):
    text = DARE_TIES.format(**models)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    wa.merge(str(recipe), out=tmp_path / "from-path", seed=1)
    # YAML text: the very same output (the model card quotes the recipe's text).
    wa.merge(text, out=tmp_path / "from-text", seed=1)
    assert_same_tree(tmp_path / "from-path", tmp_path / "from-text")
    # A dict (as yaml.safe_load gives it; Path values taken as paths): the same tensors and
    # config; only the model card's quoted recipe text differs (JSON instead of YAML).
    d = {
        "models": [
            {"model": models["p1"], "parameters": {"weight": 0.6, "density": 0.5}},
            {"model": str(models["p2"]), "parameters": {"weight": 0.4, "density": 0.7}},
        ],
        "base_model": str(models["init"]),
        "merge_method": "dare_ties",
        "dtype": "bfloat16",
    }
    wa.merge(d, out=tmp_path / "from-dict", seed=1)
    a, b = tree(tmp_path / "from-path"), tree(tmp_path / "from-dict")
    assert sorted(a) == sorted(b)
    for k in a:
        if k != "README.md":
            assert a[k] == b[k], k
    assert b"merge_method" in b["README.md"]


def test_dry_run_returns_the_plan_and_writes_nothing(models, tmp_path):
    recipe = write(tmp_path, "r.yaml", TIES, models)
    want = json.loads(cli("merge", recipe, "-o", tmp_path / "o", "--dry-run", "--json").stdout)
    r = wa.merge(recipe, out=tmp_path / "o", dry_run=True)
    assert r.plan == want and r.outputs == [] and r.plan["tensors"]
    assert not (tmp_path / "o").exists()
    # The plain merges plan too (`warp slerp --dry-run --json`).
    m = models
    want = json.loads(cli("slerp", m["p1"], m["p2"], "--init", m["init"], "--eta", 0.5,
                          "--eta", 1, "-o", tmp_path / "s", "--dry-run", "--json").stdout)
    r = wa.slerp([m["p1"], m["p2"]], m["init"], etas=[0.5, 1], out=tmp_path / "s", dry_run=True)
    assert r.plan == want and r.outputs == []
    assert [p.name for p in tmp_path.iterdir()] == ["r.yaml"]


def test_progress_and_logging(models, tmp_path, caplog):
    class Bar:
        total, n = None, 0

        def reset(self, total=None):
            self.total, self.n = total, 0

        def update(self, n):
            self.n += n

    recipe = write(tmp_path, "r.yaml", TIES, models)
    bar = Bar()
    with caplog.at_level(logging.INFO, logger="warp_align"):
        wa.merge(recipe, out=tmp_path / "o", progress=bar, threads=1)
    assert bar.total and bar.n == bar.total
    assert any("ties: 4 model(s)" in r.getMessage() and "(1 threads)" in r.getMessage()
               for r in caplog.records)


def test_bad_recipes_raise_typed_errors_and_write_nothing(models, tmp_path):
    m = {k: str(v) for k, v in models.items()}
    out = tmp_path / "out"
    cases = [
        (f"models: [{{model: {m['p1']}, parameters: {{weight: 1}}}}]\n"
         "merge_method: frankenmerge\n", "<recipe>: merge_method: unknown merge method"),
        (f"models: [{{model: {m['p1']}, parameters: {{weight: 1, densty: 0.5}}}}]\n"
         "merge_method: linear\n", "<recipe>: models[0].parameters.densty: unknown parameter"),
        (f"models: [{{model: {m['p1']}}}, {{model: {m['p2']}}}]\nmerge_method: ties\n",
         "<recipe>: base_model: merge method 'ties'"),
        (f"models: [{{model: {m['p1']}}}, {{model: {m['p2']}}}]\nbase_model: {m['init']}\n"
         "merge_method: warp_slerp\nparameters: {etas: [a, b]}\n",
         "<recipe>: parameters.etas: a list of numbers"),
        ("models: [unclosed\nmerge_method: linear\n", "<recipe>: YAML"),
    ]
    for text, want in cases:
        with pytest.raises(wa.ArgumentError) as e:
            wa.merge(text, out=out)
        msg = str(e.value)
        assert msg.startswith(want) and "\n" not in msg, msg
        assert e.value.exit_code == 2
    # The file's name in the message when the recipe is a file; the same as the CLI's.
    bad = tmp_path / "bad.yaml"
    bad.write_text(cases[1][0])
    with pytest.raises(wa.ArgumentError, match="bad.yaml: models.0..parameters.densty") as e:
        wa.merge(bad, out=out)
    p = cli("merge", bad, "-o", out, check=False)
    assert p.returncode == 2 and str(e.value) in p.stderr
    # A dict with a bad key.
    with pytest.raises(wa.ArgumentError, match="<recipe>: normalise: unknown key"):
        wa.merge({"models": [{"model": m["p1"]}], "merge_method": "linear", "normalise": True},
                 out=out)
    # Arguments: a missing file (FileError naming it), the wrong type, a bad seed, CUDA, a
    # taken destination, an unknown keyword.
    with pytest.raises(wa.FileError) as e:
        wa.merge(tmp_path / "nothing.yaml", out=out)
    assert e.value.path == str(tmp_path / "nothing.yaml")
    with pytest.raises(wa.ArgumentError, match="recipe: expected"):
        wa.merge(42, out=out)
    with pytest.raises(wa.ArgumentError, match="seed"):
        wa.merge(bad, out=out, seed=-1)
    good = write(tmp_path, "good.yaml", TIES, models)
    with pytest.raises(wa.ArgumentError, match="device='cuda': recipe merges run on the CPU"):
        wa.merge(good, out=out, device="cuda")
    with pytest.raises(wa.ArgumentError, match="exists .use force=True"):
        wa.merge(good, out=tmp_path)
    with pytest.raises(TypeError, match="'dtpe'"):
        wa.merge(good, out=out, dtpe="f32")
    # Nothing was written by any of the failures: no output, no staging folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "good.yaml"]
