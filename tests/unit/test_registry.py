"""define(): the handler's shape is checked once, at registration; UnknownJob names what exists."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest

from eventjobs.core.options import JobOptions
from eventjobs.registry import JobDefinition, UnknownJob, define

OPTIONS = JobOptions(queue="emails", max_attempts=3)


def sync_args(args):  # type: ignore[no-untyped-def]
    return {"n": args["n"] + 1}


def sync_args_ctx(args, ctx):  # type: ignore[no-untyped-def]
    return {"n": args["n"], "ctx": ctx}


async def async_args(args):  # type: ignore[no-untyped-def]
    return {"n": args["n"] * 2}


async def async_args_ctx(args, ctx):  # type: ignore[no-untyped-def]
    return {"ctx": ctx}


@pytest.mark.parametrize(
    ("handler", "is_async", "takes_context"),
    [
        (sync_args, False, False),
        (sync_args_ctx, False, True),
        (async_args, True, False),
        (async_args_ctx, True, True),
        (lambda args: None, False, False),
        (lambda args, ctx: None, False, True),
    ],
)
def test_define_accepts_args_and_args_ctx_sync_and_async(handler: Any, is_async: bool, takes_context: bool) -> None:
    definition = define("job.x", handler, OPTIONS)
    assert definition == JobDefinition(
        name="job.x", handler=handler, options=OPTIONS, is_async=is_async, takes_context=takes_context
    )


def test_defined_handlers_are_called_the_way_the_flags_say() -> None:
    """The worker calls handler(args) or handler(args, ctx), awaiting when is_async: the flags must fit."""
    results = []
    for handler in (sync_args, sync_args_ctx, async_args, async_args_ctx):
        d = define(handler.__name__, handler, OPTIONS)
        call = d.handler({"n": 2}, "CTX") if d.takes_context else d.handler({"n": 2})
        results.append(asyncio.run(call) if d.is_async else call)
    assert results == [{"n": 3}, {"n": 2, "ctx": "CTX"}, {"n": 4}, {"ctx": "CTX"}]


def test_defaults_and_keyword_only_parameters() -> None:
    def ctx_optional(args, ctx=None):  # type: ignore[no-untyped-def]
        return None

    def keyword_flag(args, *, verbose=False):  # type: ignore[no-untyped-def]
        return None

    assert define("a", ctx_optional, OPTIONS).takes_context is True
    assert define("b", keyword_flag, OPTIONS).takes_context is False  # keyword-only does not take ctx


def test_methods_partials_and_callable_objects() -> None:
    class Mailer:
        def send(self, args):  # type: ignore[no-untyped-def]
            return None

        async def send_with_ctx(self, args, ctx):  # type: ignore[no-untyped-def]
            return None

        def __call__(self, args, ctx):  # type: ignore[no-untyped-def]
            return None

    def with_client(client, args):  # type: ignore[no-untyped-def]
        return None

    async def async_with_client(client, args, ctx):  # type: ignore[no-untyped-def]
        return None

    def flags(handler: Any) -> tuple[bool, bool]:
        definition = define("j", handler, OPTIONS)
        return definition.takes_context, definition.is_async

    mailer = Mailer()
    assert flags(mailer.send) == (False, False)  # self is bound, not counted
    assert flags(mailer.send_with_ctx) == (True, True)
    assert flags(mailer) == (True, False)  # __call__(self, args, ctx)
    assert flags(functools.partial(with_client, "c")) == (False, False)
    assert flags(functools.partial(async_with_client, "c")) == (True, True)


def test_callable_object_with_async_call_is_async() -> None:
    class AsyncHandler:
        async def __call__(self, args, ctx):  # type: ignore[no-untyped-def]
            return {"ok": True}

    definition = define("async.obj", AsyncHandler(), OPTIONS)
    assert definition.takes_context is True
    assert definition.is_async is True


def _none():  # type: ignore[no-untyped-def]
    return None


def _three(args, ctx, extra):  # type: ignore[no-untyped-def]
    return None


async def _async_three(a, b, c):  # type: ignore[no-untyped-def]
    return None


@pytest.mark.parametrize(
    ("handler", "count", "qualname"),
    [(_none, 0, "_none"), (_three, 3, "_three"), (_async_three, 3, "_async_three"), (lambda: None, 0, "<lambda>")],
)
def test_wrong_arity_is_refused_naming_the_job(handler: Any, count: int, qualname: str) -> None:
    with pytest.raises(TypeError) as info:
        define("billing.charge", handler, OPTIONS)
    message = str(info.value)
    assert message.startswith("job 'billing.charge': handler must take (args) or (args, ctx)")
    assert f"takes {count} positional parameters" in message
    assert qualname in message


@pytest.mark.parametrize("handler", [None, 42, "module.func"])
def test_non_callable_is_refused_naming_the_job(handler: Any) -> None:
    with pytest.raises(TypeError, match=rf"^job 'reports': handler must be callable, got {type(handler).__name__}$"):
        define("reports", handler, OPTIONS)


def test_definition_is_frozen() -> None:
    definition = define("j", sync_args, OPTIONS)
    with pytest.raises(AttributeError):
        definition.name = "other"  # type: ignore[misc]


# -- UnknownJob ---------------------------------------------------------------------------------


def test_unknown_job_lists_registered_names_sorted() -> None:
    error = UnknownJob("send_emial", ["send_email", "charge", "report.daily"])
    assert str(error) == "unknown job 'send_emial'; registered jobs: charge, report.daily, send_email"
    assert error.name == "send_emial"
    assert isinstance(error, LookupError)


def test_unknown_job_with_nothing_registered_says_none() -> None:
    assert str(UnknownJob("x", [])) == "unknown job 'x'; registered jobs: none"


def test_unknown_job_quotes_the_name_verbatim() -> None:
    error = UnknownJob("a'b\n", ["z"])
    assert str(error) == f"unknown job {'a' + chr(39) + 'b' + chr(10)!r}; registered jobs: z"
