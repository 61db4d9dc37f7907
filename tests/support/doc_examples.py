"""The runnable examples of a docs page: each ```python block whose first line is `# example: <name>`."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
EXAMPLE = re.compile(r"```python\n# example: (?P<name>[\w-]+)\n(?P<code>.*?)```", re.S)


def doc_examples(page: str) -> dict[str, str]:
    """The examples of docs/`page` by name: the code after each block's `# example:` line."""
    return {m["name"]: m["code"] for m in EXAMPLE.finditer((DOCS / page).read_text())}
