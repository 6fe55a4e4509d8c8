#!/usr/bin/env python3
"""Fails when a source file of the library names, through its `crate::` and
`super::` paths, a file that names it back — directly or around a circle —
and when a source file outside the tests is longer than 600 lines.

    python3 scripts/import_cycles.py [--graph]

A file's module is its path (`src/driver/op/mod.rs` is `driver::op`); a
path names the deepest module file it reaches (`crate::driver::op::Op` is
`driver/op/mod.rs`, `crate::session::Service` is `session/mod.rs`, which
re-exports it — so a re-export through a `mod.rs` is an edge to that
`mod.rs`). A `mod.rs` that declares its children, or re-exports them
without using what it re-exports, names none of them; one that uses a
child's item (`use kind::OpKind`, then `OpKind` in its own code, or
`spare::take_spare()`) names that child. `use super::*` names the parent.
Unit-test modules (`tests.rs`, `#[cfg(test)]` and `#[cfg(all(test, ...))]`
blocks) and loom models are left out: they may reach anywhere.

What it cannot see: which file defines a method it calls. A child file
may add an `impl` block to its parent's type, as `session/connection/
send.rs` and `recv.rs` do to `Session`: the child names the parent, and
the parent calling the child's methods is not counted — one type kept in
several files, not two layers.
"""

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "crates" / "overlapped" / "src"
LINE_LIMIT = 600
# Files outside the library held to the line limit too.
OTHER_SOURCES = [ROOT / "crates" / "overlapped-cli" / "src"]

PATH = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
GLOB = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\*")
GROUP = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^;]*?)\}", re.S)


def module_of(path):
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return parts


def file_of(parts, modules):
    """The deepest module file `parts` reaches."""
    for n in range(len(parts), -1, -1):
        if tuple(parts[:n]) in modules:
            return modules[tuple(parts[:n])]
    return None


def strip_tests(text):
    """The text without `#[cfg(test)]` / `#[cfg(loom)]` items and comments."""
    text = re.sub(r"//[^\n]*", "", text)
    out, i = [], 0
    marker = re.compile(r"#\[cfg\((?:test|loom|all\(test[^\]]*)\)\]")
    while True:
        m = marker.search(text, i)
        if not m:
            out.append(text[i:])
            break
        out.append(text[i:m.start()])
        # Skip the item: to the end of its braces, or of its line.
        j = m.end()
        brace = text.find("{", j)
        semi = text.find(";", j)
        if semi != -1 and (brace == -1 or semi < brace):
            i = semi + 1
            continue
        depth, k = 0, brace
        while k < len(text):
            if text[k] == "{":
                depth += 1
            elif text[k] == "}":
                depth -= 1
                if depth == 0:
                    break
            k += 1
        i = k + 1
    return "".join(out)


def references(path, text, modules):
    # A `mod.rs` re-exporting its children declares them; what else it
    # names of them is a dependency like any other.
    reexported = set()
    named = set()
    if path.name in ("mod.rs", "lib.rs"):
        body = DECLARATION.sub("", REEXPORT.sub("", text))
        for m in REEXPORT.finditer(text):
            targets = references_in(path, m.group(0), modules)
            # A re-exported name the module uses itself is a dependency.
            if any(re.search(rf"\b{name}\b", body) for name in reexported_names(m.group(0))):
                named |= targets
            else:
                reexported |= targets
        text = body
    named |= references_in(path, text, modules)
    return {t for t in named | reexported if not (t in reexported and t not in named and is_own_child(path, t))}


def reexported_names(statement):
    """The names a `pub use` statement brings in (the last segment, or the alias)."""
    inner = statement.split("use", 1)[1].rstrip(";")
    names = []
    for item in re.split(r"[,{}]", inner):
        item = item.strip()
        if not item or item.endswith("::"):
            continue
        name = item.split(" as ")[-1].split("::")[-1].strip()
        if name and name not in ("self", "*"):
            names.append(name)
    return names


def references_in(path, text, modules):
    here = module_of(path)
    # `super` of a `mod.rs` is its parent; of `a/b.rs` it is `a`.
    parent = here[:-1]
    names = set()

    def resolve(root, rest):
        parts = [p for p in rest.split("::") if p]
        base = [] if root == "crate" else list(parent)
        while parts and parts[0] == "super":
            base = base[:-1]
            parts = parts[1:]
        return base + parts

    for m in GROUP.finditer(text):
        prefix = resolve(m.group(1), m.group(2))
        for item in re.split(r",", m.group(3)):
            item = item.strip().split(" as ")[0].strip()
            item = re.sub(r"[{}\s]", "", item)
            if item and item != "self":
                names.add(tuple(prefix + item.split("::")[:1]))
            elif item == "self":
                names.add(tuple(prefix))
    for m in PATH.finditer(GROUP.sub("", text)):
        names.add(tuple(resolve(m.group(1), m.group(2))))
    # `use super::*;`: everything of that module.
    for m in GLOB.finditer(text):
        names.add(tuple(resolve(m.group(1), m.group(2))))
    # Paths from this module's own children (`use lanes::Next`,
    # `op::Op::new`) and `self::`.
    if path.name in ("mod.rs", "lib.rs"):
        children = {parts[len(here)] for parts in modules if len(parts) == len(here) + 1 and list(parts[:len(here)]) == here}
        for m in CHILD.finditer(text):
            first = m.group(1)
            if first == "self":
                first = m.group(2).split("::")[1]
            if first in children:
                names.add(tuple(here + [first]))
    files = set()
    for parts in names:
        target = file_of(list(parts), modules)
        if target and target != path:
            files.add(target)
    return files


def is_own_child(path, target):
    """Whether `target` is one of the modules under `path` (a `mod.rs`)."""
    if path.name not in ("mod.rs", "lib.rs"):
        return False
    return target.parent == path.parent or path.parent in target.parents


CHILD = re.compile(r"(?<![:\w])([a-z_][a-z0-9_]*)((?:::[A-Za-z_][A-Za-z0-9_]*)+|::\{)")
DECLARATION = re.compile(r"^\s*(?:#\[[^\]]*\]\s*)*pub(?:\([^)]*\))?\s+mod\s+\w+;|^\s*mod\s+\w+;", re.M)
REEXPORT = re.compile(r"^\s*pub(?:\([^)]*\))?\s+use\s[^;]*;", re.M)


def cycles(graph):
    """The strongly connected components of more than one file (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def is_test_file(path):
    return path.name in ("tests.rs",) or "loom" in path.stem


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graph", action="store_true", help="print every file's edges")
    opts = parser.parse_args()
    files = [p for p in SRC.rglob("*.rs") if not is_test_file(p)]
    modules = {tuple(module_of(p)): p for p in files}
    graph = {}
    for path in files:
        text = strip_tests(path.read_text())
        graph[path] = sorted(references(path, text, modules))
    if opts.graph:
        for path, edges in sorted(graph.items()):
            print(path.relative_to(SRC), "->", ", ".join(str(e.relative_to(SRC)) for e in edges))
    failed = False
    for component in cycles(graph):
        failed = True
        names = [str(p.relative_to(SRC)) for p in component]
        print(f"import circle among {len(names)} files: " + ", ".join(names))
        for p in component:
            inside = [str(e.relative_to(SRC)) for e in graph[p] if e in component]
            print(f"  {p.relative_to(SRC)} -> {', '.join(inside)}")
    for source in [SRC] + OTHER_SOURCES:
        for path in source.rglob("*.rs"):
            if is_test_file(path):
                continue
            lines = len(strip_tests(path.read_text()).splitlines())
            if lines > LINE_LIMIT:
                failed = True
                print(f"{path.relative_to(ROOT)}: {lines} lines without its tests (the limit is {LINE_LIMIT})")
    if failed:
        sys.exit(1)
    print(f"no import circle among {len(files)} files; none over {LINE_LIMIT} lines")


if __name__ == "__main__":
    main()
