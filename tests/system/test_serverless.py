"""``tracker.flush_after``: handlers on platforms that freeze the process when they return.

The freeze test is literal: a child process runs a decorated handler, prints "returned",
and the test stops it with SIGSTOP (what Lambda does to an idle execution environment);
everything the handler tracked must already be in the FakeEnso of this process.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from enso_tracker import Tracker
from enso_tracker.testing import DropRecorder, FakeEnso
from tests.conftest import API_KEY

ROOT = Path(__file__).resolve().parents[2]
N = 50  # below max_batch_size: nothing goes out before flush_interval unless flushed

HANDLER_PROCESS = """
import asyncio, sys, time
from enso_tracker import Tracker

url, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
# flush_interval=60: without flush_after, nothing would be sent before the freeze.
tracker = Tracker(api_key="test-api-key", base_url=url, flush_interval=60.0)

def work():
    for i in range(n):
        tracker.track("ent_1", "api_calls", 1, event_id=f"evt_{i}")

if mode == "sync":
    @tracker.flush_after(timeout=10.0)
    def handler(event, context):
        work()
        return {"statusCode": 200}
    assert handler({}, None) == {"statusCode": 200}
elif mode == "raises":
    @tracker.flush_after(timeout=10.0)
    def handler(event, context):
        work()
        raise RuntimeError("the handler failed")
    try:
        handler({}, None)
    except RuntimeError:
        pass
elif mode == "async":
    @tracker.flush_after(timeout=10.0)
    async def handler(event, context):
        work()
        return {"statusCode": 200}
    assert asyncio.run(handler({}, None)) == {"statusCode": 200}
elif mode == "with":
    with tracker.flush_after(timeout=10.0):
        work()
else:  # "plain": no flush_after, the control
    work()
print("returned", flush=True)
time.sleep(60)  # the platform freezes the process here
"""


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """One line of the child's stdout, or b"" if none came before the deadline."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                break
            chunk = os.read(proc.stdout.fileno(), 1)
            if not chunk:
                break
            line += chunk
    return line


def freeze_after_return(fake: FakeEnso, mode: str) -> dict[str, dict[str, Any]]:
    """Run the handler in a child, SIGSTOP it once it returned; what Enso has by then."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HANDLER_PROCESS, fake.url, mode, str(N)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert read_line(proc, timeout=30.0) == b"returned\n"
        os.kill(proc.pid, signal.SIGSTOP)  # the freeze: no thread of the child runs again
        return fake.events  # read at once: no waiting for stragglers
    finally:
        proc.kill()
        proc.wait(timeout=10.0)


@pytest.mark.parametrize("mode", ["sync", "raises", "async", "with"])
def test_events_are_at_enso_before_the_frozen_handler_returns(
    fake_enso: FakeEnso, mode: str
) -> None:
    events = freeze_after_return(fake_enso, mode)
    assert sorted(events) == sorted(f"evt_{i}" for i in range(N))


def test_control_without_flush_after_the_freeze_strands_the_events(fake_enso: FakeEnso) -> None:
    """Shows the freeze test can fail: the same handler without flush_after."""
    assert freeze_after_return(fake_enso, "plain") == {}


# --------------------------------------------------------------------------- in process


@pytest.fixture
def make_async(
    fake_enso: FakeEnso, drop_recorder: DropRecorder
) -> Iterator[Callable[..., Tracker]]:
    made: list[Tracker] = []

    def make(**options: Any) -> Tracker:
        options.setdefault("flush_interval", 60.0)  # only an explicit flush sends
        tracker = Tracker(api_key=API_KEY, base_url=fake_enso.url, on_drop=drop_recorder, **options)
        made.append(tracker)
        return tracker

    yield make
    fake_enso.release()
    for tracker in made:
        tracker.shutdown(2.0)


def test_decorator_keeps_the_handler_result_name_and_exception(
    fake_enso: FakeEnso, make_async: Callable[..., Tracker]
) -> None:
    tracker = make_async()

    @tracker.flush_after(timeout=5.0)
    def handler(event: dict[str, Any], context: object) -> dict[str, int]:
        """Docstring kept."""
        tracker.track("ent_1", "api_calls", event["n"], event_id=f"evt_{event['n']}")
        if event["n"] == 2:
            raise KeyError("boom")
        return {"statusCode": 200}

    assert handler({"n": 1}, None) == {"statusCode": 200}
    assert fake_enso.event_ids() == ["evt_1"]
    with pytest.raises(KeyError, match="boom"):
        handler({"n": 2}, None)
    assert fake_enso.event_ids() == ["evt_1", "evt_2"]
    assert (handler.__name__, handler.__doc__) == ("handler", "Docstring kept.")


def test_async_handler_flushes_without_blocking_the_loop(
    fake_enso: FakeEnso, make_async: Callable[..., Tracker]
) -> None:
    tracker = make_async()

    @tracker.flush_after(timeout=5.0)
    async def handler() -> str:
        tracker.track("ent_1", "api_calls", 1, event_id="evt_a")
        return "done"

    async def main() -> tuple[str, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while fake_enso.in_flight == 0:  # the flush's request reached Enso and hangs
                await asyncio.sleep(0.005)
            for _ in range(20):
                await asyncio.sleep(0.005)
                ticks += 1
            fake_enso.release()  # only a loop that kept running gets here

        beat = asyncio.create_task(ticker())
        result = await handler()
        async with tracker.flush_after(timeout=5.0):
            tracker.track("ent_1", "api_calls", 1, event_id="evt_b")
        await beat
        return result, ticks

    fake_enso.hang(None)
    assert asyncio.run(asyncio.wait_for(main(), timeout=20.0)) == ("done", 20)
    assert fake_enso.event_ids() == ["evt_a", "evt_b"]


def test_a_flush_that_times_out_is_logged(
    fake_enso: FakeEnso, make_async: Callable[..., Tracker], caplog: pytest.LogCaptureFixture
) -> None:
    tracker = make_async()
    fake_enso.hang(None)
    with caplog.at_level(logging.WARNING, logger="enso_tracker"):
        with tracker.flush_after(timeout=0.1):
            tracker.track("ent_1", "api_calls", 1)
        assert [r.message for r in caplog.records if "flush_after" in r.message]
    assert tracker.stats().accepted == 1
    assert tracker.stats().delivered == 0  # still pending: the hang outlasted the timeout


def plainly_decorated(handler: Callable[[], Any]) -> Callable[[], Any]:
    """A decorator that hides ``async def`` from ``inspect.iscoroutinefunction``."""

    @functools.wraps(handler)
    def wrapper() -> Any:
        return handler()

    return wrapper


class AsyncCallable:
    """A handler object with an ``async def __call__`` (class-based handlers)."""

    def __init__(self, tracker: Tracker) -> None:
        self._tracker = tracker

    async def __call__(self) -> str:
        await asyncio.sleep(0)  # the body runs only once the call is awaited
        self._tracker.track("ent_1", "api_calls", 1, event_id="evt_a")
        return "done"


@pytest.mark.parametrize("shape", ["async_callable_object", "async_def_behind_a_decorator"])
def test_hidden_async_handlers_flush_after_they_ran_without_blocking_the_loop(
    fake_enso: FakeEnso, make_async: Callable[..., Tracker], shape: str
) -> None:
    tracker = make_async()
    if shape == "async_callable_object":
        inner: Callable[[], Any] = AsyncCallable(tracker)
    else:

        @plainly_decorated
        async def inner() -> str:
            await asyncio.sleep(0)
            tracker.track("ent_1", "api_calls", 1, event_id="evt_a")
            return "done"

    handler: Callable[[], Any] = tracker.flush_after(timeout=5.0)(inner)

    async def main() -> tuple[str, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while fake_enso.in_flight == 0:  # the flush's request reached Enso and hangs
                await asyncio.sleep(0.005)
            for _ in range(20):
                await asyncio.sleep(0.005)
                ticks += 1
            fake_enso.release()  # only a loop that kept running gets here

        beat = asyncio.create_task(ticker())
        result = await handler()
        await beat
        return result, ticks

    fake_enso.hang(None)
    assert asyncio.run(asyncio.wait_for(main(), timeout=10.0)) == ("done", 20)
    assert fake_enso.event_ids() == ["evt_a"]  # flushed after the body ran, not before


def test_a_sync_facade_over_async_code_stays_a_sync_handler(
    fake_enso: FakeEnso, make_async: Callable[..., Tracker]
) -> None:
    tracker = make_async()

    async def work() -> str:
        tracker.track("ent_1", "api_calls", 1, event_id="evt_a")
        return "done"

    @tracker.flush_after(timeout=5.0)
    @functools.wraps(work)
    def handler() -> str:
        return asyncio.run(work())

    assert handler() == "done"  # called plainly, it returns the value, not a coroutine
    assert fake_enso.event_ids() == ["evt_a"]
