"""Compares two checkpoints tensor by tensor (bf16/f16/f32): max and distribution of the ulp
distance, and the max relative difference. Used to check warp-slerp against mergekit's nuslerp.

    python3 bench/compare_bf16.py OURS THEIRS
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "ref"))
import st  # noqa: E402  (the independent reader)


def ordered(bits):
    b = bits.astype(np.int32)
    return np.where(b & 0x8000, -(b & 0x7FFF), b)


def main():
    a = st.load_checkpoint(sys.argv[1], raw=True)
    b = st.load_checkpoint(sys.argv[2], raw=True)
    assert a.keys() == b.keys(), set(a) ^ set(b)
    hist = {0: 0, 1: 0, 2: 0, "more": 0}
    worst, worst_rel, n = 0, 0.0, 0
    for k, (dt, x) in a.items():
        dt2, y = b[k]
        assert dt == dt2 and x.shape == y.shape, (k, dt, dt2)
        if dt in ("BF16", "F16"):
            d = np.abs(ordered(x.view(np.uint16)) - ordered(y.view(np.uint16))).ravel()
            for u in (0, 1, 2):
                hist[u] += int((d == u).sum())
            hist["more"] += int((d > 2).sum())
            worst = max(worst, int(d.max(initial=0)))
        xf, yf = st.to_float64(dt, x), st.to_float64(dt, y)
        scale = max(float(np.sqrt(np.mean(yf ** 2))), 1e-30)
        worst_rel = max(worst_rel, float(np.max(np.abs(xf - yf) / np.maximum(np.abs(yf), scale), initial=0)))
        n += x.size
    print(f"{n} values; ulp distance histogram {hist}; max {worst} ulp; max relative difference {worst_rel:.2e}")


main()
