"""`pip install` of the repository into a fresh venv, with only what the README asks for (Python
with pip, a Rust toolchain; maturin comes from PyPI into pip's build environment), then
`import warp_align` there. The import's wall time is measured and printed (the README quotes it);
what keeps it small is asserted: importing the package loads no heavy module (torch,
transformers, numpy) and runs no subprocess."""

import os
import subprocess
import sys
import venv

from conftest import ROOT

MEASURE = r"""
import sys, time
t = time.perf_counter()
import warp_align
dt = time.perf_counter() - t
heavy = sorted(m for m in ("torch", "transformers", "numpy", "trl", "subprocess")
               if m in sys.modules)
print(dt, ",".join(heavy), warp_align.__file__)
"""


def test_pip_install_into_a_fresh_venv_and_import(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    py = env_dir / "bin" / "python"
    env = dict(os.environ)
    # The project's target dir: the crate's dependencies are not compiled again.
    env.setdefault("CARGO_TARGET_DIR", str(ROOT / "target"))
    for k in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(k, None)
    p = subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        str(ROOT)], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-4000:]
    times = []
    for _ in range(5):
        r = subprocess.run([str(py), "-c", MEASURE], env=env, capture_output=True, text=True,
                           cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        dt, heavy, where = r.stdout.split(" ", 2)
        times.append(float(dt))
        assert heavy == "", f"import warp_align loaded {heavy}"
        assert where.strip().startswith(str(env_dir)), where
    times.sort()
    print(f"import warp_align in a fresh venv: median {times[2] * 1000:.1f} ms, "
          f"min {times[0] * 1000:.1f} ms over 5 runs", file=sys.stderr)
    # The package works there: its schema call and a typed error.
    r = subprocess.run([str(py), "-c",
                        "import warp_align as w, json\n"
                        "assert w.rl_schema()['name'] == 'RlConfig'\n"
                        "try:\n    w.inspect('/nonexistent/x.safetensors')\n"
                        "except w.WarpError as e:\n    print(type(e).__name__)\n"],
                       env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "HubError"
