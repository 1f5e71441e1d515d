"""The house stays in its rooms (issue 24): no module of the package over 500 lines, no function
body over 80, no import circle among its modules (lazy and type-checking imports included), the
records import nothing above them, and every package says what it owns in a docstring."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gradinspect"


def _modules() -> dict[str, Path]:
    found = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = f
    return found


def _imports(f: Path, known: dict[str, Path], module: str = "") -> set[str]:
    """The package modules ``f`` imports, and the packages whose ``__init__`` those imports
    run first: importing ``a.b.c`` from outside ``a.b`` runs ``a.b``'s ``__init__`` (the
    package root excepted: it is always first)."""
    targets: set[str] = set()
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and \
                node.module.startswith("gradinspect"):
            targets.add(node.module)
            targets.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            targets.update(a.name for a in node.names if a.name.startswith("gradinspect"))
    parents = {".".join(t.split(".")[:k]) for t in targets for k in range(2, t.count(".") + 1)}
    targets |= {p for p in parents if not module.startswith(p + ".")}
    return {t for t in targets if t in known}


def test_modules_and_functions_are_small() -> None:
    big, long_ = [], []
    for f in _modules().values():
        text = f.read_text()
        if len(text.splitlines()) > 500:
            big.append(f.name)
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno is not None
                if node.end_lineno - node.body[0].lineno + 1 > 80:
                    long_.append(f"{f.name}:{node.name}")
    assert big == []
    assert long_ == []


def test_no_import_circle() -> None:
    modules = _modules()
    graph = {m: _imports(f, modules, m) - {m} for m, f in modules.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            assert state.get(n) != 1, " -> ".join([*path, m, n])
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_records_import_nothing_above_them() -> None:
    modules = _modules()
    for name in ("gradinspect.records", "gradinspect.report"):
        assert _imports(modules[name], modules) <= {"gradinspect.records"}, name


def test_every_package_says_what_it_owns() -> None:
    for f in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(f.read_text()))
        assert doc, f
        assert len(doc) > 80, f


def test_every_rule_family_declares_the_figures_it_reads_and_the_codes_it_emits() -> None:
    """``READS`` is every field of ``LayerFigures``/``RunFigures`` a family's module reads as an
    attribute (a superset: the field names, on any object), and ``CODES`` every code its
    ``Finding``s carry; ``diagnose.CODES`` is their union."""
    import importlib

    from gradinspect.diagnose import CODES
    from gradinspect.diagnose.figures import LayerFigures, RunFigures

    fields = set(LayerFigures.__dataclass_fields__) | set(RunFigures.__dataclass_fields__)
    emitted: dict[str, str] = {}
    for f in sorted((PACKAGE / "diagnose" / "rules").glob("*.py")):
        if f.name == "__init__.py":
            continue
        module = importlib.import_module(f"gradinspect.diagnose.rules.{f.stem}")
        tree = ast.parse(f.read_text())
        read = {n.attr for n in ast.walk(tree)
                if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                and n.attr in fields}
        assert read == module.READS, f.name
        codes = {n.args[0].value for n in ast.walk(tree)
                 if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "Finding"
                 and n.args and isinstance(n.args[0], ast.Constant)}
        codes |= {t[0] for t in getattr(module, "NONFINITE_GRADIENT", ())}
        assert codes == set(getattr(module, "CODES", {})), f.name
        emitted.update(getattr(module, "CODES", {}))
    assert emitted == CODES
