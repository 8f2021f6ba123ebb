#!/usr/bin/env python3
"""The crate's module import graph: which top-level module of src/ names which other one.

    scripts/import-graph.py [--root TREE] [--edges] [--lines]

Every `crate::a::…` path in a module's files (use statements, grouped `use crate::{a, b::c}`
included, and paths in code) is an edge from that module to `a`; comments and strings are skipped
(the lexer of scripts/long-fns.py). Prints the cycles (strongly connected components of more
than one module), the upward edges (from a lower layer to a higher one, by LAYERS below), and,
with --edges, every edge with its count of references; with --lines, the lines per module.
Exits 0 either way: it measures, the test is what it prints.
"""
import argparse
import importlib.util
import os
import re
import sys
from collections import defaultdict

# The intended layering, lowest first: a module may use those of its own or a lower layer.
LAYERS = [
    # `cancel` is the name `interrupt` had before.
    ["error", "rng", "progress", "device", "interrupt", "cancel"],
    ["io", "merge"],
    ["engine", "stats", "layout"],
    ["hub", "tasks", "builtin"],
    ["rl"],
    ["slurm"],
    ["pipeline"],
    ["plot", "report"],
    ["cli"],
]


def lexer():
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location("long_fns", os.path.join(here, "long-fns.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.strip


def top_module(rel):
    """`rl` for src/rl/trainer.rs, `plot` for src/plot.rs, None for src/lib.rs."""
    parts = rel.split(os.sep)
    if len(parts) == 1:
        name = parts[0][:-3]
        return None if name in ("lib", "main") else name
    return parts[0]


def grouped_targets(body):
    """Top-level names of `{a, b::c, d::{e, f}}` (the braces' outermost items)."""
    out, depth, cur = [], 0, ""
    for ch in body:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if depth == 0 and ch == ",":
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    names = []
    for item in out:
        m = re.match(r"\s*(\w+)", item)
        if m and m.group(1) != "self":
            names.append(m.group(1))
    return names


def edges_of(text):
    refs = defaultdict(int)
    for m in re.finditer(r"\bcrate::(\w+)", text):
        refs[m.group(1)] += 1
    for m in re.finditer(r"\bcrate::\{", text):
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        for name in grouped_targets(text[m.end():j - 1]):
            refs[name] += 1
    return refs


def sccs(nodes, adj):
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in adj.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    ap.add_argument("--edges", action="store_true")
    ap.add_argument("--lines", action="store_true")
    a = ap.parse_args()
    strip = lexer()
    src = os.path.join(a.root, "src")
    edges = defaultdict(lambda: defaultdict(int))
    lines = defaultdict(int)
    modules = set()
    for d, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(d, f)
            rel = os.path.relpath(path, src)
            mod = top_module(rel)
            if mod is None:
                continue
            modules.add(mod)
            with open(path, encoding="utf-8") as fh:
                raw = fh.read()
            lines[mod] += raw.count("\n")
            for target, n in edges_of(strip(raw)).items():
                if target != mod:
                    edges[mod][target] += n
    known = {m for layer in LAYERS for m in layer}
    layer = {m: i for i, layer_ in enumerate(LAYERS) for m in layer_}
    for m in sorted(modules - known):
        print(f"note: module {m} has no layer in LAYERS", file=sys.stderr)
    adj = {m: [t for t in ts if t in modules] for m, ts in edges.items()}
    cycles = [c for c in sccs(modules, adj) if len(c) > 1]
    print(f"modules: {len(modules)}")
    print(f"cycles: {len(cycles)}")
    for c in cycles:
        print("  cycle: " + " <-> ".join(c))
    up = [
        (m, t, n)
        for m, ts in sorted(edges.items())
        for t, n in sorted(ts.items())
        if t in modules and m in layer and t in layer and layer[t] > layer[m]
    ]
    print(f"upward edges: {len(up)}")
    for m, t, n in up:
        print(f"  {m} -> {t} ({n} refs)")
    if a.edges:
        total = sum(1 for ts in edges.values() for t in ts if t in modules)
        print(f"edges: {total}")
        for m, ts in sorted(edges.items()):
            print(f"  {m} -> " + ", ".join(f"{t}({n})" for t, n in sorted(ts.items()) if t in modules))
    if a.lines:
        print("lines per module:")
        for m, n in sorted(lines.items(), key=lambda kv: -kv[1]):
            print(f"  {m:10} {n:6}")


if __name__ == "__main__":
    main()
