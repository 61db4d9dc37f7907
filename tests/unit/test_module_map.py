"""The module map in docs/architecture.md is the tree: every package is listed once with what it
may import, and no module imports more than its row allows. The core imports nothing outside it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "eventjobs"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
_ROW = re.compile(r"^\| `eventjobs/([a-z_]+)(?:/|\.py)` \| (?P<job>[^|]+) \| (?P<may>[^|]+) \|$")


def _unit(path: Path) -> str:
    """`core` for eventjobs/core/fold.py, `app` for eventjobs/app.py (`eventjobs`: the package's own
    `__init__`, the public API)."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else path.stem


def _imported_units(path: Path) -> set[str]:
    units: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "eventjobs":  # `from eventjobs import App`: the public API
                units.add("eventjobs")
                continue
            modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if parts[0] == "eventjobs" and len(parts) > 1:
                units.add(parts[1])
    return units


def _module_map() -> dict[str, set[str] | None]:
    """unit -> the units it may import (None: any)."""
    rows: dict[str, set[str] | None] = {}
    for line in ARCHITECTURE.read_text().splitlines():
        match = _ROW.match(line.strip())
        if not match:
            continue
        unit = match.group(1)
        assert unit not in rows, f"{unit} is listed twice in the module map"
        may = match.group("may").strip()
        # each entry is a unit name, optionally followed by a remark: "eventjobs (the public API)"
        rows[unit] = None if may == "anything" else {
            entry.split()[0].strip("`") for entry in may.split(",") if entry.strip(" `-")
        }
    return rows


def _units_in_tree() -> set[str]:
    return {_unit(path) for path in PACKAGE.rglob("*.py") if path.name != "__init__.py" or path.parent != PACKAGE}


def test_every_package_is_in_the_module_map_and_nothing_else() -> None:
    listed = set(_module_map())
    assert listed, "docs/architecture.md has no module map rows"
    assert listed == _units_in_tree(), f"not listed: {_units_in_tree() - listed}; not in the tree: {listed - _units_in_tree()}"


def test_no_module_imports_more_than_its_row_allows() -> None:
    allowed = _module_map()
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = _unit(path)
        if unit == "__init__" or allowed.get(unit) is None:
            continue
        extra = _imported_units(path) - allowed[unit] - {unit}  # type: ignore[operator]
        if extra:
            wrong.append(f"{path.relative_to(ROOT)} imports {sorted(extra)}")
    assert not wrong, "; ".join(wrong)


def test_the_core_imports_nothing_outside_it() -> None:
    outside = {
        str(path.relative_to(ROOT)): sorted(_imported_units(path) - {"core"})
        for path in (PACKAGE / "core").rglob("*.py")
    }
    assert not {path: units for path, units in outside.items() if units}


def _module_of(path: Path) -> str:
    """`eventjobs.core.fold` for eventjobs/core/fold.py, `eventjobs.core` for its `__init__`."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """module -> the modules of the package it imports, wherever the import stands: at the top, in a
    function (a lazy import runs at some point, and then the circle is there), under TYPE_CHECKING.
    `from eventjobs.core import fold` imports `eventjobs.core.fold` (a module) or `eventjobs.core`
    (a name defined there)."""
    modules = {_module_of(path): path for path in PACKAGE.rglob("*.py")}

    def known(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.split(".")[0] == "eventjobs":
                    imported |= {known(f"{node.module}.{alias.name}") for alias in node.names}
            elif isinstance(node, ast.Import):
                imported |= {known(alias.name) for alias in node.names if alias.name.split(".")[0] == "eventjobs"}
        graph[module] = imported - {module}
    return graph


def _a_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports in `graph` (its first node repeated at the end), or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_path:
                return [*path[path.index(nxt):], nxt]
            if nxt not in done and (found := visit(nxt)) is not None:
                return found
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done and (found := visit(start)) is not None:
            return found
    return None


def test_the_cycle_finder_finds_a_circle_and_only_a_circle() -> None:
    assert _a_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _a_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_module_imports_itself_through_others() -> None:
    """No circle of imports between modules, lazy ones included: each module can be read and
    tested on top of the ones it imports."""
    cycle = _a_cycle(_import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_package_imports_itself_through_others() -> None:
    """No circle between the rows of the module map either (`eventjobs`: the public API): the
    packages stack, so none needs another that needs it."""
    units: dict[str, set[str]] = {}
    for module, imported in _import_graph().items():
        unit = _package_unit(module)
        units.setdefault(unit, set()).update(_package_unit(other) for other in imported)
    cycle = _a_cycle({unit: imported - {unit} for unit, imported in units.items()})
    assert cycle is None, "package cycle: " + " -> ".join(cycle)


def _package_unit(module: str) -> str:
    """The module map's row of a module: `core` for eventjobs.core.fold, `app` for eventjobs.app,
    `eventjobs` for the package's own `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "eventjobs"
