"""asyncio and serverless helpers for :class:`~enso_tracker.Tracker`, as a mixin.

``track()`` never blocks, so it needs no async twin. What waits is ``flush()`` and
``shutdown()``: their async forms run the blocking wait on a short-lived daemon thread and
await its result, so the event loop keeps serving while Enso is slow or unreachable.
A dedicated thread rather than the loop's default executor: a wait cancelled at the end of
``asyncio.run()`` must not hold up the executor's shutdown, and many concurrent waits must
not queue behind the executor's few workers.

``flush_after`` is for platforms that freeze the process when a handler returns (AWS
Lambda, Cloud Functions, Cloud Run without CPU always allocated): the sender thread would
be frozen with the events still queued, so they are flushed before the handler returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, ParamSpec, Protocol, TypeVar, overload

__all__ = ["AsyncMixin", "FlushAfter"]

log = logging.getLogger("enso_tracker")

P = ParamSpec("P")
R = TypeVar("R")


class _Flushable(Protocol):
    """What the mixin needs of the class it is mixed into."""

    def flush(self, timeout: float | None = None) -> bool: ...

    def shutdown(self, timeout: float | None = None) -> bool: ...


_Self = TypeVar("_Self", bound=_Flushable)


async def _off_loop(wait: Callable[[float | None], bool], timeout: float | None) -> bool:
    """Await ``wait(timeout)`` run on its own daemon thread, never blocking the loop.

    Cancelling the awaiting task leaves the wait running to its own deadline (``flush``
    and ``shutdown`` are bounded and safe to abandon); its result is then discarded, even
    if the loop is closed by then. When no thread can start, the wait runs on the loop.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[bool] = loop.create_future()

    def settle(result: bool | None, error: Exception | None) -> None:
        if future.done():  # the awaiting task was cancelled
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(bool(result))

    def run() -> None:
        result: bool | None = None
        error: Exception | None = None
        try:
            result = wait(timeout)
        except Exception as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
            loop.call_soon_threadsafe(settle, result, error)

    try:
        threading.Thread(target=run, name="enso-tracker-await", daemon=True).start()
    except Exception:
        # No thread can start (resource limits; CPython 3.12.0-3.12.2 at exit): wait
        # here, blocking the loop up to ``timeout``, rather than leave the events behind.
        log.warning("enso-tracker could not start a thread to wait on; waiting on the loop")
        return wait(timeout)
    return await future


async def _aflush(tracker: _Flushable, timeout: float | None) -> bool:
    if tracker.flush(0.0):  # nothing pending: no thread needed
        return True
    return await _off_loop(tracker.flush, timeout)


class AsyncMixin:
    """``aflush``, ``ashutdown``, ``async with`` and ``flush_after`` for a Tracker."""

    async def aflush(self: _Flushable, timeout: float | None = None) -> bool:
        """``flush(timeout)`` without blocking the event loop; same result.

        Cancelling the awaiting task does not disturb the tracker: delivery goes on, and
        the abandoned wait ends by its deadline.
        """
        return await _aflush(self, timeout)

    async def ashutdown(self: _Flushable, timeout: float | None = None) -> bool:
        """``shutdown(timeout)`` without blocking the event loop; same result.

        Once started, a shutdown completes (by its deadline) even if the awaiting task is
        cancelled; awaiting ``ashutdown()`` again waits for that same shutdown.
        """
        return await _off_loop(self.shutdown, timeout)

    async def __aenter__(self: _Self) -> _Self:
        return self

    async def __aexit__(
        self: _Flushable,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await _off_loop(self.shutdown, None)

    def flush_after(self: _Flushable, timeout: float | None = None) -> FlushAfter:
        """Flush the events tracked inside a handler before it returns (or raises).

        A decorator for plain and ``async def`` handlers, and a context manager (``with``
        and ``async with``); the async forms flush without blocking the event loop.
        Objects with an ``async def __call__``, and ``async def`` handlers behind a
        decorator that hides them, are async too: whatever a handler's call returns that
        is awaitable is awaited first, and the flush follows it. ``timeout`` defaults to
        ``shutdown_timeout``.
        """
        return FlushAfter(self, timeout)


class FlushAfter:
    """The object :meth:`AsyncMixin.flush_after` returns: decorator and context manager."""

    __slots__ = ("_timeout", "_tracker")

    def __init__(self, tracker: _Flushable, timeout: float | None) -> None:
        self._tracker = tracker
        self._timeout = timeout

    def _flush(self) -> None:
        self._report(self._tracker.flush(self._timeout))

    async def _aflush(self) -> None:
        self._report(await _aflush(self._tracker, self._timeout))

    def _report(self, settled: bool) -> None:
        if not settled:
            # The process may be frozen or reclaimed before these get another chance.
            log.warning(
                "flush_after: events were still pending when the handler returned "
                "(timeout %s s); they are sent when the process next runs, if it does",
                self._timeout,
            )

    def __enter__(self) -> FlushAfter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._flush()

    async def __aenter__(self) -> FlushAfter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._aflush()

    @overload
    def __call__(
        self, handler: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self, handler: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, handler: Callable[P, Any]) -> Callable[P, Any]:
        if _is_async(handler):

            @functools.wraps(handler)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                try:
                    result: Any = handler(*args, **kwargs)
                    if inspect.isawaitable(result):
                        result = await result
                    return result
                finally:
                    await self._aflush()

            return async_wrapper

        @functools.wraps(handler)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            flush = True
            try:
                result = handler(*args, **kwargs)
                if inspect.isawaitable(result):
                    # An async handler behind a plain decorator (or any callable that
                    # hands back an awaitable): it has not run yet. Flush once it has,
                    # without blocking the loop.
                    flush = False
                    return self._then_flush(result)
                return result
            finally:
                if flush:
                    self._flush()

        return wrapper

    async def _then_flush(self, awaitable: Awaitable[R]) -> R:
        try:
            return await awaitable
        finally:
            await self._aflush()


def _is_async(handler: Callable[..., Any]) -> bool:
    """Whether calling ``handler`` surely starts a coroutine: an ``async def`` (or a
    partial of one), or an object whose ``__call__`` is ``async def``. (A plain decorator
    hides an ``async def`` from this check; the wrapper then looks at what the call
    returns.)"""
    if inspect.iscoroutinefunction(handler):
        return True
    if inspect.isfunction(handler) or inspect.ismethod(handler):
        return False
    return inspect.iscoroutinefunction(inspect.getattr_static(type(handler), "__call__", None))
