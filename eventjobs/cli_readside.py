"""CLI commands of the read side (projections, queries, replay); registered on the main app."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the read-side commands to the `eventjobs` app."""
