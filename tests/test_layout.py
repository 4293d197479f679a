"""The package's layout stays true (issue 19): no module imports one that imports it back, and no part imports a
part it must not (each part's ``__init__.py`` says which it may).

Imports are read with ``ast``, every one of them: at module level, inside functions (the lazy ones) and under
``TYPE_CHECKING`` — a circle a type checker sees is still a circle a reader has to untangle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "otel_segments"

#: What each part may import besides itself. The root (configure(), the pipeline, the entry points, the CLI) may
#: import every part; nothing but the root and integrations/ imports the root.
ALLOWED = {
    "settings": set(),
    "runtime": {"settings"},
    "spans": {"settings", "runtime"},
    "segments": {"settings", "runtime", "spans"},
    "sinks": {"settings", "runtime", "spans", "segments"},
    "job": {"settings", "runtime", "spans", "segments", "sinks"},
    "integrations": {"settings", "runtime", "spans", "root"},
}

#: At most this many lines in a module (STYLE.md: a module past ~300 lines is split by job).
MAX_LINES = 320


def module_name(path: Path, package: Path) -> str:
    parts = [package.name, *path.relative_to(package).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, package: Path, modules: set[str]) -> set[str]:
    """The package's own modules (or packages) that ``path`` imports, wherever in the file the import is."""
    name = module_name(path, package)
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            if source not in modules:
                continue
            for alias in node.names:  # `from . import native` imports the module native, not the package
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source)
    found.discard(name)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    paths = {module_name(path, package): path for path in package.rglob("*.py")}
    return {name: imports(path, package, set(paths)) for name, path in paths.items()}


def part(module: str) -> str:
    names = module.split(".")
    return names[1] if len(names) > 1 and names[1] in ALLOWED else "root"


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def forbidden_edges(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        source = part(module)
        if source == "root":
            continue
        for target in sorted(targets):
            dest = part(target)
            if dest != source and dest not in ALLOWED[source]:
                bad.append(f"{module} ({source}/) imports {target} ({dest})")
    return bad


def test_no_module_imports_one_that_imports_it_back() -> None:
    assert circles(import_graph()) == []


def test_no_part_imports_a_part_it_must_not() -> None:
    assert forbidden_edges(import_graph()) == []


def test_every_part_says_what_it_may_import() -> None:
    for name in ALLOWED:
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text())) or ""
        assert "May import" in doc, name


def test_no_module_is_past_the_split_line() -> None:
    lines = {str(path.relative_to(PACKAGE)): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in lines.items() if n > MAX_LINES} == {}


@pytest.mark.parametrize(
    ("files", "expected_circles", "expected_forbidden"),
    [
        # the shape of the three pairs this test was written against: a TYPE_CHECKING import and a lazy one count
        (
            {
                "settings/__init__.py": "",
                "settings/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n",
                "settings/b.py": "from .a import A\n",
                "spans/__init__.py": "",
                "spans/cache.py": "def f():\n    from ..segments import rules\n",
                "segments/__init__.py": "",
                "segments/rules.py": "from .. import spans\n",
            },
            [["pkg.settings.a", "pkg.settings.b"]],
            ["pkg.spans.cache (spans/) imports pkg.segments.rules (segments)"],
        ),
        # a clean tree: a submodule importing its own package's names, the root importing every part
        (
            {
                "__init__.py": "from .spans import cache\n",
                "spans/__init__.py": "X = 1\n",
                "spans/cache.py": "from . import X\nfrom ..settings.values import V\n",
                "settings/__init__.py": "",
                "settings/values.py": "V = 1\n",
            },
            [],
            [],
        ),
    ],
)
def test_the_checks_catch_what_they_are_for(tmp_path: Path, files: dict[str, str], expected_circles, expected_forbidden) -> None:
    package = tmp_path / "pkg"
    for relative, text in files.items():
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        (package / relative).write_text(text)
    (package / "__init__.py").touch()
    graph = import_graph(package)
    assert circles(graph) == expected_circles
    assert forbidden_edges(graph) == expected_forbidden
