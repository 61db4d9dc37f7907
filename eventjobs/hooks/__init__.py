"""Hooks: observe the worker's attempts and the app's enqueues (`Hook`, the chain `Hooks`), and the
worker's Prometheus metrics as one such hook (`MetricsHook`). See docs/hooks.md."""

from eventjobs.hooks.base import (
    HOOK_POINTS,
    AttemptInfo,
    AttemptOutcome,
    Hook,
    Hooks,
    InvalidHook,
    Quarantined,
    WorkerInfo,
)

__all__ = ["HOOK_POINTS", "AttemptInfo", "AttemptOutcome", "Hook", "Hooks", "InvalidHook", "Quarantined", "WorkerInfo"]
