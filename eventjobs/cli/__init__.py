"""The `eventjobs` command. `main` is the entry point; one module per command group."""

from eventjobs.cli.main import main

__all__ = ["main"]
