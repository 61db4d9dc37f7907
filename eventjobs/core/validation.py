"""A pydantic validation error in words: one line, `field: message; ...`, none of pydantic's boilerplate.

pydantic's own text spans several lines with a URL per problem; a reason in a log line, a refused
record or an exception wants each problem as the field it is about and what is wrong with it.
Every place that words a validation error does it here (`issues` for those that add more, such
as the value given).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import ValidationError


class Issue(NamedTuple):
    """One problem: the dotted path of its field ("" for the whole value), what is wrong (a
    validator's own words without pydantic's "Value error, " in front), the value given, and
    pydantic's type of the problem (`missing`, `json_invalid` ...)."""

    where: str
    message: str
    given: Any
    kind: str


def issues(error: ValidationError) -> list[Issue]:
    return [
        Issue(".".join(str(part) for part in issue["loc"]), issue["msg"].removeprefix("Value error, "),
              issue.get("input"), issue["type"])
        for issue in error.errors(include_url=False)
    ]


def worded(error: ValidationError, *, limit: int | None = None, root: str = "") -> str:
    """`field: message; ...` of the first `limit` problems (all if None), then `; and N more`; a
    problem of the whole value is named `root` (nothing: its message alone)."""
    found = issues(error)
    shown = found if limit is None else found[:limit]
    parts = [f"{issue.where or root}: {issue.message}" if issue.where or root else issue.message for issue in shown]
    more = len(found) - len(shown)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
