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
