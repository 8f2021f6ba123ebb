"""A merge from Python releases the GIL while it works, and stops cleanly on KeyboardInterrupt:
nothing is left at the destination (the same cleanup as SIGINT in the CLI), and the next call
runs normally."""

import _thread
import logging
import threading

import pytest

import warp_align as wa
from conftest import assert_same_tree, cli


class Trigger:
    """A progress object that sets `started` at the first bytes merged."""

    def __init__(self):
        self.started = threading.Event()
        self.n = 0
        self.total = None

    def reset(self, total=None):
        self.total = total

    def update(self, n):
        self.n += n
        self.started.set()


def leftovers(d):
    return sorted(p.name for p in d.iterdir())


INTERRUPTED = r"""
import _thread, signal, sys
import warp_align as wa

# Python's own Ctrl-C handler, as in a terminal: a process started in the background by a
# non-interactive shell inherits SIGINT ignored, and then interrupt_main() does nothing.
signal.signal(signal.SIGINT, signal.default_int_handler)

class Interrupt:
    # Simulates Ctrl-C (_thread.interrupt_main) when the merge phase starts (reset(total=...)):
    # byte counts are delivered coalesced, so on a warm page cache the first update() may come
    # with the last chunk; the start comes before any byte is written.
    n = 0
    total = None
    def reset(self, total=None):
        self.total = total
        _thread.interrupt_main()
    def update(self, n):
        self.n += n

bar = Interrupt()
a, b, out, call = sys.argv[1:]
try:
    if call == "liti":
        wa.liti(a, b, etas=[0.3, 0.7], out=out, memory_budget="32MiB", threads=1, progress=bar)
    else:  # a recipe (warp merge), element-wise
        recipe = {"models": [{"model": a, "parameters": {"weight": 0.5}},
                             {"model": b, "parameters": {"weight": 0.5}}],
                  "merge_method": "linear"}
        wa.merge(recipe, out=out, memory_budget="32MiB", threads=1, progress=bar)
    print("finished", bar.n, bar.total)
except KeyboardInterrupt:
    print("KeyboardInterrupt", bar.n, bar.total)
"""


@pytest.mark.parametrize("call", ["liti", "merge"])
def test_keyboard_interrupt_during_a_merge_leaves_nothing(big, tmp_path, call):
    # In a fresh interpreter (as a user's script or notebook kernel runs it).
    import subprocess
    import sys

    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-c", INTERRUPTED, str(big["init"]), str(big["p1"]),
                        str(out), call], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    what, n, total = r.stdout.split()
    assert what == "KeyboardInterrupt", r.stdout
    assert int(n) < int(total), r.stdout
    # No output folder, no staging folder beside it.
    assert leftovers(tmp_path) == []
    if call != "liti":
        return
    # The next merge runs (the cancellation was forgotten) and equals the CLI's.
    wa.liti(big["init"], big["p1"], etas=[0.3], out=out, memory_budget="32MiB")
    cli("liti", "--init", big["init"], "--merged", big["p1"], "--eta", 0.3, "-o",
        tmp_path / "cli", "-q")
    assert_same_tree(out, tmp_path / "cli")


def test_an_exception_in_the_progress_object_cancels_the_merge(big, tmp_path):
    class Boom(Trigger):
        def update(self, n):
            raise ValueError("stop here")

    with pytest.raises(ValueError, match="stop here"):
        wa.ema([big["init"], big["p1"]], 0.5, out=tmp_path / "out", memory_budget="32MiB",
               progress=Boom())
    assert leftovers(tmp_path) == []


def test_the_gil_is_released_during_a_merge(big, tmp_path):
    """A Python thread started when the merge begins (its first log line) does a fixed amount of
    pure-Python work (a few tenths of a second) and finishes before the merge does. It could
    not if the merge held the GIL: without a progress object the caller's thread runs no Python
    code until the merge ends (checked: with the GIL held, this test fails)."""
    started = threading.Event()
    state = {"counted": 0, "merge_done": False, "merge_done_when_counted": None}

    class Started(logging.Handler):
        def emit(self, record):
            started.set()

    def count():
        started.wait(60)
        n = 0
        for _ in range(3_000_000):
            n += 1
        state["counted"] = n
        state["merge_done_when_counted"] = state["merge_done"]

    log = logging.getLogger("warp_align")
    handler = Started()
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.INFO)
    t = threading.Thread(target=count)
    t.start()
    try:
        wa.liti(big["init"], big["p1"], etas=[0.3, 0.7], out=tmp_path / "out",
                memory_budget="32MiB", threads=1)
        state["merge_done"] = True
    finally:
        started.set()
        t.join()
        log.removeHandler(handler)
        log.setLevel(old_level)
    assert state["counted"] == 3_000_000
    assert state["merge_done_when_counted"] is False, \
        "the counting thread could not run while the merge ran"
