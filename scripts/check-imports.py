#!/usr/bin/env python3
"""check-imports.py SRC...: fails if the files of a crate import each other in a cycle.

For each crate source directory, every `.rs` file is a node and every `crate::a::b` or
`super::…` path outside `#[cfg(test)]` an edge to the file that defines the longest prefix
of it. A strongly connected component of more than one file is a cycle: a file that needs
another that needs it back, which `make lint` refuses. (A `mod` declaration is not an
import: a parent that names its children is not an edge.)
"""
import os
import re
import sys
from collections import defaultdict


def module_path(src: str, path: str) -> tuple:
    parts = os.path.relpath(path, src)[:-3].split(os.sep)
    return tuple(parts[:-1] if parts[-1] in ("mod", "lib", "main") else parts)


def graph(src: str) -> tuple[dict, dict]:
    files = {}
    for root, _, names in os.walk(src):
        for name in names:
            if name.endswith(".rs"):
                path = os.path.join(root, name)
                files[module_path(src, path)] = path
    edges = defaultdict(set)
    for module, path in files.items():
        text = open(path, encoding="utf-8").read().split("#[cfg(test)]")[0]
        text = re.sub(r"//.*", "", text)
        refs = {tuple(m.group(1).strip(":").split("::")) for m in re.finditer(r"\bcrate((?:::\w+)+)", text)}
        is_root = os.path.basename(path) in ("mod.rs", "lib.rs", "main.rs")
        for m in re.finditer(r"\b((?:super::)+)(\w+(?:::\w+)*)", text):
            base = list(module) + (["_"] if is_root else [])
            base = base[: len(base) - m.group(1).count("super")]
            refs.add(tuple(base) + tuple(m.group(2).split("::")))
        for ref in refs:
            for k in range(len(ref), 0, -1):
                if ref[:k] in files and ref[:k] != module:
                    edges[module].add(ref[:k])
                    break
    return files, edges


def cycles(files: dict, edges: dict) -> list[list]:
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    sys.setrecursionlimit(10_000)
    for v in files:
        if v not in index:
            visit(v)
    return found


def main() -> int:
    bad = 0
    for src in sys.argv[1:]:
        for component in cycles(*graph(src)):
            names = " <-> ".join("/".join(m) or "lib" for m in sorted(component))
            print(f"{src}: files import each other in a cycle: {names}")
            bad = 1
    if not bad:
        print(f"imports: no cycle in {len(sys.argv) - 1} crates")
    return bad


if __name__ == "__main__":
    sys.exit(main())
