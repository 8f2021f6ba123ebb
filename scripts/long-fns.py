#!/usr/bin/env python3
"""Lists Rust functions longer than a limit (default 100 lines), longest first.

    scripts/long-fns.py [--limit N] [--count] [--check] [FILE ...]
                                                  (default: every tracked *.rs file)

With --check (scripts/test) it fails (exit 1) when a long function has no reason beside it: a
`// long fn: WHY` comment among the comment and attribute lines right above its `fn` line.

A function's length runs from the line of its `fn` keyword to the line of its closing brace.
Braces inside strings, chars and comments are skipped by a small lexer, so the count does not
depend on formatting tricks; declarations without a body (trait methods, extern fns) are ignored.
"""
import re
import subprocess
import sys


def strip(src):
    """The source with comments, strings and char literals blanked (newlines kept)."""
    out, i, n = [], 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif src.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif src.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", src[i:j]))
            i = j
        elif re.match(r'b?r#*"', src[i:i + 40]) and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")):
            m = re.match(r'(b?r)(#*)"', src[i:])
            end = '"' + m.group(2)
            j = src.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            out.append(re.sub(r"[^\n]", " ", src[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            j += 1
            out.append(re.sub(r"[^\n]", " ", src[i:j]))
            i = j
        elif c == "'":
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'", src[i:])
            if m:
                out.append(" " * m.end())
                i += m.end()
            else:  # a lifetime
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def functions(path):
    src = strip(open(path, encoding="utf-8").read())
    lines = src.split("\n")
    starts = [0]
    for l in lines:
        starts.append(starts[-1] + len(l) + 1)

    def line_of(pos):
        lo, hi = 0, len(starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if starts[mid] <= pos:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1

    for m in re.finditer(r"\bfn\s+([A-Za-z_][A-Za-z0-9_]*)", src):
        # The body starts at the first `{` or ends at a `;` (no body), at nesting depth 0 of
        # the signature's brackets.
        depth, j = 0, m.end()
        while j < len(src):
            ch = src[j]
            if ch in "(<[":
                depth += 1
            elif ch in ")>]":
                depth -= 1
            elif ch == ";" and depth <= 0:
                j = -1
                break
            elif ch == "{" and depth <= 0:
                break
            j += 1
        if j < 0 or j >= len(src):
            continue
        level, k = 0, j
        while k < len(src):
            if src[k] == "{":
                level += 1
            elif src[k] == "}":
                level -= 1
                if level == 0:
                    break
            k += 1
        a, b = line_of(m.start()), line_of(k)
        yield m.group(1), a, b - a + 1


def has_reason(path, line):
    """Whether a `// long fn:` comment sits among the comments/attributes above line `line`."""
    lines = open(path, encoding="utf-8").read().split("\n")
    i = line - 2
    while i >= 0:
        t = lines[i].strip()
        if re.match(r"//\s*long fn:\s*\S", t):
            return True
        if not (t.startswith("//") or t.startswith("#[") or t.startswith("#![")):
            return False
        i -= 1
    return False


def main():
    args = sys.argv[1:]
    limit, count_only, check = 100, False, False
    if "--check" in args:
        args.remove("--check")
        check = True
    if "--limit" in args:
        i = args.index("--limit")
        limit = int(args[i + 1])
        del args[i:i + 2]
    if "--count" in args:
        args.remove("--count")
        count_only = True
    files = args or subprocess.run(
        ["git", "ls-files", "*.rs"], capture_output=True, text=True, check=True
    ).stdout.split()
    long = []
    for f in files:
        for name, line, length in functions(f):
            if length > limit:
                long.append((length, f, line, name))
    long.sort(reverse=True)
    if not count_only:
        for length, f, line, name in long:
            print(f"{length:5}  {f}:{line}  {name}")
    print(f"{len(long)} function(s) over {limit} lines")
    if check:
        bare = [(f, line, name) for _, f, line, name in long if not has_reason(f, line)]
        for f, line, name in bare:
            print(f"{f}:{line}: {name} is over {limit} lines with no `// long fn: WHY` beside it",
                  file=sys.stderr)
        if bare:
            sys.exit(1)


if __name__ == "__main__":
    main()
