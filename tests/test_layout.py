"""The package's shape, which the linter cannot see: no module over 400 lines, `Editor` at most 320, and no import
cycle between modules (imports inside functions count; those under `if TYPE_CHECKING:` do not, as they never run)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
MAX_LINES = 400
MAX_EDITOR_LINES = 320


def modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


class Imports(ast.NodeVisitor):
    """The modules of the package that one module imports, anywhere but under `if TYPE_CHECKING:`."""

    def __init__(self, name: str, path: Path, known: dict[str, Path]) -> None:
        self.package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        self.known, self.found = known, set()

    def visit_If(self, node: ast.If) -> None:
        if "TYPE_CHECKING" not in ast.unparse(node.test):
            self.generic_visit(node)
        else:
            for child in node.orelse:
                self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.update(alias.name for alias in node.names if alias.name in self.known)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self.package.split(".")[: len(self.package.split(".")) - node.level + 1] if node.level else []
        target = ".".join(base + ([node.module] if node.module else []))
        for alias in node.names:
            full = f"{target}.{alias.name}"
            self.found.add(full if full in self.known else target)


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph = {}
    for name, path in known.items():
        visitor = Imports(name, path, known)
        visitor.visit(ast.parse(path.read_text()))
        graph[name] = {m for m in visitor.found if m in known and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_is_over_the_line_limit():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_editor_class_stays_small():
    tree = ast.parse((SRC / "sola" / "editor.py").read_text())
    editor = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Editor")
    assert editor.end_lineno - editor.lineno + 1 <= MAX_EDITOR_LINES


def test_no_import_cycle_between_modules():
    graph = import_graph()
    assert graph["sola.cli"] >= {"sola.cli_common", "sola.cli_serve"}  # the graph sees relative imports
    assert "sola.editor" in graph["sola.methods.sola"]
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_editor_provides_what_its_helper_modules_ask_of_it(make_editor):
    """batching, replay, planning and adapters are typed against `EditorCore`; a real editor has every member."""
    from sola.parts import EditorCore

    assert isinstance(make_editor(), EditorCore)
