"""The package's import graph: top-level imports between its modules form no cycle.

Read with `ast` (nothing is imported): every `from hyperstyle_jax... import` and
`import hyperstyle_jax...` statement at module level is an edge; those inside functions
are listed too but do not count, as they run only when called. A package's own
`__init__`, run first when one of its modules is imported, is not an edge.
"""
from __future__ import annotations

import ast
import pathlib

PACKAGE = "hyperstyle_jax"
ROOT = pathlib.Path(__file__).resolve().parents[1] / PACKAGE


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(node: ast.AST, module: str, is_package: bool, names: set[str]) -> list[str]:
    """Package modules an Import/ImportFrom node loads (`from a import b` loads a.b if it is
    a module, else a)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == PACKAGE]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = module.split(".")
        base = base[:len(base) - node.level + (1 if is_package else 0)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source.split(".")[0] != PACKAGE:
        return []
    out = []
    for alias in node.names:
        sub = f"{source}.{alias.name}"
        out.append(sub if sub in names else source)
    return out


def _import_nodes(body: list[ast.stmt], in_function: bool):
    """(import node, inside a function or an `if TYPE_CHECKING:`) for every import."""
    for stmt in body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            yield stmt, in_function
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _import_nodes(stmt.body, True)
        elif isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
            yield from _import_nodes(stmt.body, True)
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                yield from _import_nodes(getattr(stmt, field, []) or [], in_function)


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(top-level edges, function-level edges): module -> package modules it imports."""
    files = sorted(ROOT.rglob("*.py"))
    names = {module_name(p) for p in files}
    top: dict[str, set[str]] = {}
    inner: dict[str, set[str]] = {}
    for path in files:
        module = module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        top[module], inner[module] = set(), set()
        for node, in_function in _import_nodes(tree.body, False):
            targets = [t for t in imported_modules(node, module, is_package, names) if t in names]
            (inner if in_function else top)[module].update(targets)
    return top, inner


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    colour = dict.fromkeys(graph, 0)
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        colour[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if colour.get(d, 0) == 1:
                return stack[stack.index(d):] + [d]
            if colour.get(d, 0) == 0 and d in graph:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        colour[m] = 2
        return None

    for m in sorted(graph):
        if colour[m] == 0:
            found = visit(m)
            if found:
                return found
    return None


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_import_graph_reads_both_levels():
    top, inner = import_graph()
    assert "hyperstyle_jax.data.pipeline" in top
    assert "hyperstyle_jax.data.config" in top["hyperstyle_jax.data.pipeline"]
    assert all(isinstance(v, set) for v in inner.values())


def test_no_import_cycle():
    top, _ = import_graph()
    cycle = find_cycle(top)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
