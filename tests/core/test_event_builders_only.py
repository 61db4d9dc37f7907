"""Only the core builds events: every writer goes through its builders.

The shell (worker, timer service, app, CLI...) appends events but must not fill their fields by
hand, or two writers of the same event drift apart (as the lease rule once did). This test reads
every module of the package outside ``eventjobs/core/`` and fails on a call of an event class,
or of ``model_validate`` / ``model_validate_json`` / ``model_construct`` on one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import eventjobs
from eventjobs.core.events import EVENT_TYPES

PACKAGE = Path(eventjobs.__file__).parent
CORE = PACKAGE / "core"
EVENT_CLASSES = frozenset(cls.__name__ for cls in EVENT_TYPES.values())
CLASS_METHOD_CONSTRUCTORS = frozenset({"model_validate", "model_validate_json", "model_construct"})


def _event_class_aliases(tree: ast.Module) -> set[str]:
    """Local names bound to event classes by ``from ... import X [as Y]``."""
    return {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.name in EVENT_CLASSES
    }


def _names_event_class(node: ast.expr, aliases: set[str]) -> bool:
    """``ClaimedEvent`` (or an alias of it) or ``anything.ClaimedEvent``."""
    if isinstance(node, ast.Name):
        return node.id in aliases or node.id in EVENT_CLASSES
    return isinstance(node, ast.Attribute) and node.attr in EVENT_CLASSES


def _builds_an_event(call: ast.Call, aliases: set[str]) -> bool:
    func = call.func
    if _names_event_class(func, aliases):
        return True
    return (
        isinstance(func, ast.Attribute)
        and func.attr in CLASS_METHOD_CONSTRUCTORS
        and _names_event_class(func.value, aliases)
    )


def event_constructions(source: str) -> list[int]:
    """Line numbers of every event built by hand in one module's source."""
    tree = ast.parse(source)
    aliases = _event_class_aliases(tree)
    return sorted(node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call) and _builds_an_event(node, aliases))


def test_the_scan_recognises_a_hand_built_event() -> None:
    source = (
        "from eventjobs.core.events import ClaimedEvent as C, DueEvent\n"
        "from eventjobs.core import events\n"
        "C(job_id='j')\n"
        "events.HeartbeatEvent(job_id='j')\n"
        "DueEvent.model_validate({})\n"
        "events.ExpiredEvent.model_construct()\n"
        "isinstance(x, DueEvent)\n"
    )
    assert event_constructions(source) == [3, 4, 5, 6]


def test_no_module_outside_the_core_builds_an_event_by_hand() -> None:
    modules = [path for path in sorted(PACKAGE.rglob("*.py")) if CORE not in path.parents]
    assert modules, "no modules found outside eventjobs/core"
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}" for path in modules for line in event_constructions(path.read_text())
    ]
    assert found == [], "events built outside eventjobs/core (use eventjobs.core.commands): " + ", ".join(found)
