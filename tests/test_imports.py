"""hpt's modules import each other without cycles, and no source file is over MAX_LINES lines.

Every `import` and `from ... import` of an hpt module is an edge of the graph: at the top of a module, inside a
function (a lazy import hides a cycle, it does not remove it) and under `if TYPE_CHECKING:` (a cycle of types is
still two modules that cannot be understood one without the other). `from hpt.x import name` is an edge to the
module hpt.x.name where there is one, else to hpt.x; a package is not an edge of its own submodules.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "hpt"
CLI = "hpt.cli"
#: Import cycles outside hpt.cli that exist today, each as the modules of one strongly connected component of the
#: graph. Each is to be removed, and then its line here: the test fails on any cycle not listed, on any cycle that
#: involves hpt.cli, and on a listed one that is gone.
KNOWN_CYCLES: tuple[frozenset[str], ...] = ()
MAX_LINES = 400
#: Source files over MAX_LINES lines today (paths from the repository root), each to be split and then removed here.
KNOWN_LONG_FILES: frozenset[str] = frozenset()


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Every module of `package` under `root` by its dotted name (a package by its own name)."""
    files = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def import_graph(root: Path, package: str) -> dict[str, dict[str, int]]:
    """module -> {imported module of the package: line of the first import of it}, wherever the import stands."""
    files = module_files(root, package)
    graph: dict[str, dict[str, int]] = {}
    for name, path in files.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [_deepest_module(alias.name, files) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else _deepest_module(base, files)
                           for alias in node.names]
            for target in targets:
                if target is not None and target != name:
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def _deepest_module(dotted: str, files: dict[str, Path]) -> str | None:
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in files:
            return ".".join(parts[:end])
    return None


def cycles(graph: dict[str, dict[str, int]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def describe_cycle(graph: dict[str, dict[str, int]], component: frozenset[str], root: Path) -> str:
    """One cycle through the component, each import with its file and line: 'a (a.py:3) -> b (b.py:9) -> a'."""
    start = min(component)
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:  # shortest way back to the start within the component
        node = queue.popleft()
        for child in sorted(graph[node]):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                path.reverse()
                steps = [f"{a} ({_file(a, root)}:{graph[a][b]})" for a, b in zip(path, path[1:] + [start])]
                return " -> ".join([*steps, start]) + f"   [all modules of the cycle: {', '.join(sorted(component))}]"
            if child in component and child not in previous and child != start:
                previous[child] = node
                queue.append(child)
    raise AssertionError(f"no cycle through {start}")


def _file(module: str, root: Path) -> str:
    return str(module_files(root, PACKAGE)[module].relative_to(root.parent))


def test_no_import_cycles_but_the_known_ones() -> None:
    assert not any(m == CLI or m.startswith(CLI + ".") for known in KNOWN_CYCLES for m in known), \
        "a cycle that involves hpt.cli is never known: the group module imports the commands, never the reverse"
    graph = import_graph(SRC, PACKAGE)
    new = [c for c in cycles(graph) if c not in KNOWN_CYCLES]
    assert not new, "import cycles:\n" + "\n".join(describe_cycle(graph, c, SRC) for c in new)


def test_known_cycles_are_still_there() -> None:
    gone = [sorted(c) for c in KNOWN_CYCLES if c not in cycles(import_graph(SRC, PACKAGE))]
    assert not gone, f"these cycles are gone (or changed): remove them from KNOWN_CYCLES: {gone}"


def test_the_graph_sees_lazy_relative_and_type_only_imports(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def f():\n    from .sub.c import g\n    return g\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n")
    (package / "d.py").write_text("import pkg.sub\nfrom pkg.sub import c\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.b"] == {"pkg.sub.c": 2} and graph["pkg.d"] == {"pkg.sub": 1, "pkg.sub.c": 2}
    assert cycles(graph) == [frozenset({"pkg.a", "pkg.b", "pkg.sub.c"})]


def _long_files() -> dict[str, int]:
    root = SRC.parent
    lengths = {str(p.relative_to(root)): len(p.read_text(encoding="utf-8").splitlines())
               for p in sorted((SRC / PACKAGE).rglob("*.py"))}
    return {path: n for path, n in lengths.items() if n > MAX_LINES}


def test_no_source_file_over_the_line_limit_but_the_known_ones() -> None:
    new = {path: n for path, n in _long_files().items() if path not in KNOWN_LONG_FILES}
    assert not new, f"files over {MAX_LINES} lines (split them by what they do): {new}"


def test_known_long_files_are_still_long() -> None:
    gone = sorted(KNOWN_LONG_FILES - set(_long_files()))
    assert not gone, f"gone or within {MAX_LINES} lines: remove them from KNOWN_LONG_FILES: {gone}"
