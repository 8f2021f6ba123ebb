#!/usr/bin/env python3
"""Lists Rust functions longer than a limit (default 100 lines), longest first.

    scripts/long-functions.py [--limit N] [PATH ...]     # default: src bin examples

A function's length counts from its `fn` line to the line of its closing brace, both included.
Braces inside string/char literals and comments are ignored (a small lexer, not a parser), so
the count is what a reader scrolls through, not a token count.
"""
import argparse
import os
import re
import sys

FN = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:const\s+)?(?:async\s+)?(?:unsafe\s+)?"
                r"(?:extern\s+\"[^\"]*\"\s+)?fn\s+(\w+)")


def strip(line, state):
    """The line without comments and literals; `state` carries an open block comment or
    a raw/plain string across lines."""
    out = []
    i = 0
    n = len(line)
    while i < n:
        if state["block"]:
            j = line.find("*/", i)
            if j < 0:
                return "".join(out)
            state["block"] -= 1
            i = j + 2
            continue
        if state["str"] is not None:
            end = state["str"]
            if end == '"':
                while i < n:
                    if line[i] == "\\":
                        i += 2
                        continue
                    if line[i] == '"':
                        break
                    i += 1
                if i >= n:
                    return "".join(out)
                i += 1
            else:
                j = line.find(end, i)
                if j < 0:
                    return "".join(out)
                i = j + len(end)
            state["str"] = None
            continue
        c = line[i]
        if line.startswith("//", i):
            break
        if line.startswith("/*", i):
            state["block"] += 1
            i += 2
            continue
        m = re.match(r'b?r(#*)"', line[i:])
        if m and (i == 0 or not (line[i - 1].isalnum() or line[i - 1] == "_")):
            state["str"] = '"' + m.group(1)
            i += m.end()
            continue
        if c == '"':
            state["str"] = '"'
            i += 1
            continue
        if c == "'":
            # A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            m = re.match(r"'(\\.[^']*|[^\\'])'", line[i:])
            if m:
                i += m.end()
                continue
        out.append(c)
        i += 1
    return "".join(out)


def functions(path):
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    state = {"block": 0, "str": None}
    stack = []  # (name, start line, brace depth at which its body opened)
    depth = 0
    pending = None  # a fn header seen, body brace not yet
    for no, raw in enumerate(lines, 1):
        m = FN.match(raw) if state["block"] == 0 and state["str"] is None else None
        code = strip(raw, state)
        if m:
            pending = (m.group(1), no)
        for c in code:
            if c == "{":
                depth += 1
                if pending:
                    stack.append((pending[0], pending[1], depth))
                    pending = None
            elif c == "}":
                if stack and stack[-1][2] == depth:
                    name, start, _ = stack.pop()
                    yield name, start, no - start + 1
                depth -= 1
            elif c == ";" and pending and depth >= 0:
                # A declaration without a body (trait method, extern fn).
                pending = None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("paths", nargs="*", default=["src", "bin", "examples"])
    a = ap.parse_args()
    found = []
    for p in a.paths:
        files = [p] if os.path.isfile(p) else [
            os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs if f.endswith(".rs")]
        for f in sorted(files):
            for name, start, length in functions(f):
                if length > a.limit:
                    found.append((length, f, start, name))
    for length, f, start, name in sorted(found, reverse=True):
        print(f"{length:5d}  {f}:{start}  {name}")
    print(f"{len(found)} function(s) over {a.limit} lines", file=sys.stderr)


if __name__ == "__main__":
    main()
