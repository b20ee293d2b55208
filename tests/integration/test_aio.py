"""asyncio support: ``aflush``, ``ashutdown``, ``async with`` (``enso_tracker._aio``).

The tests run the loop with ``asyncio.run`` inside plain tests (no asyncio plugin). They
use ``Tracker``: ``Tracker`` itself once it has the mixin, a local subclass until then,
so they test the real class as soon as it is wired.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from enso_tracker import Tracker
from enso_tracker.testing import DropRecorder, FakeEnso
from tests.conftest import API_KEY, TrackerFactory, wait_until


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(main(), timeout=20.0)

    return asyncio.run(bounded())


def waiter_threads() -> int:
    """Threads of ``_aio`` waiting for a flush or shutdown on behalf of a coroutine."""
    return sum(t.name == "enso-tracker-await" for t in threading.enumerate())


def hang_one_request(fake: FakeEnso, tracker: Tracker, event_id: str) -> None:
    fake.hang(None)
    tracker.track("ent_1", "api_calls", 1, event_id=event_id)
    assert fake.wait_for(lambda f: f.in_flight == 1, timeout=5.0)


def test_aflush_keeps_the_event_loop_running_while_enso_hangs(
    fake_enso: FakeEnso, tracker: TrackerFactory
) -> None:
    t = tracker()
    hang_one_request(fake_enso, t, "evt_hung")
    gaps: list[float] = []

    async def heartbeat() -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(0.005)
            now = loop.time()
            gaps.append(now - last)
            last = now
            if len(gaps) == 50:  # only a loop that kept running can end the hang
                fake_enso.release()

    async def main() -> bool:
        beat = asyncio.create_task(heartbeat())
        try:
            return await t.aflush(10.0)
        finally:
            beat.cancel()

    assert run(main) is True  # only the heartbeat releases the hang: the loop kept running
    assert len(gaps) >= 50
    assert max(gaps) < 1.0  # the loop never stalled for anything like the flush timeout
    assert fake_enso.event_ids() == ["evt_hung"]


def test_aflush_and_ashutdown_return_what_flush_and_shutdown_return(
    fake_enso: FakeEnso, tracker: TrackerFactory
) -> None:
    t = tracker()

    async def main() -> tuple[bool, bool, bool, bool]:
        idle = await t.aflush(1.0)
        t.track("ent_1", "api_calls", 1, event_id="evt_a")
        delivered = await t.aflush(5.0)
        fake_enso.hang(None)
        t.track("ent_1", "api_calls", 1, event_id="evt_b")
        timed_out = await t.aflush(0.2)
        lost = await t.ashutdown(0.3)
        return idle, delivered, timed_out, lost

    assert run(main) == (True, True, False, False)
    assert fake_enso.event_ids() == ["evt_a"]
    assert t.stats().dropped == {"shutdown": 1}


def test_async_with_shuts_down_on_exit(fake_enso: FakeEnso, drop_recorder: DropRecorder) -> None:
    async def main() -> Tracker:
        async with Tracker(
            api_key=API_KEY, base_url=fake_enso.url, on_drop=drop_recorder
        ) as tracker:
            tracker.track("ent_1", "api_calls", 1, event_id="evt_ctx")
        return tracker

    tracker = run(main)
    assert fake_enso.event_ids() == ["evt_ctx"]
    assert (tracker.stats().delivered, tracker.stats().dropped) == (1, {})
    assert tracker.track("ent_1", "api_calls", 1) is None  # closed


def test_cancelled_aflush_leaves_the_tracker_working(
    fake_enso: FakeEnso, tracker: TrackerFactory
) -> None:
    t = tracker()
    hang_one_request(fake_enso, t, "evt_1")

    async def main() -> bool:
        waiting = asyncio.create_task(t.aflush(10.0))
        await asyncio.sleep(0)  # let it start waiting
        assert waiter_threads() == 1
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        fake_enso.release()
        t.track("ent_1", "api_calls", 1, event_id="evt_2")
        return await t.aflush(5.0)

    assert run(main) is True
    assert fake_enso.event_ids() == ["evt_1", "evt_2"]
    assert t.stats().balanced


def test_cancelled_ashutdown_still_completes(fake_enso: FakeEnso, tracker: TrackerFactory) -> None:
    t = tracker()
    hang_one_request(fake_enso, t, "evt_1")

    async def main() -> bool:
        stopping = asyncio.create_task(t.ashutdown(10.0))
        await asyncio.sleep(0)
        assert waiter_threads() == 1
        stopping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopping
        fake_enso.release()
        return await t.ashutdown(5.0)  # waits for the same shutdown

    assert run(main) is True
    assert fake_enso.event_ids() == ["evt_1"]
    assert t.track("ent_1", "api_calls", 1) is None


def test_a_wait_abandoned_when_the_loop_closes_ends_quietly(
    fake_enso: FakeEnso, tracker: TrackerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    thread_errors: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", thread_errors.append)
    t = tracker()
    hang_one_request(fake_enso, t, "evt_1")

    async def main() -> None:
        waiting = asyncio.create_task(t.aflush(10.0))
        await asyncio.sleep(0)
        assert waiter_threads() == 1
        waiting.cancel()  # asyncio.run() then closes the loop under the waiting thread

    run(main)
    fake_enso.release()  # the abandoned wait now ends and finds the loop closed
    assert wait_until(lambda: waiter_threads() == 0, timeout=10.0)
    assert thread_errors == []
    assert t.flush(5.0)
    assert fake_enso.event_ids() == ["evt_1"]


LIFESPAN_MESSAGES = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]


def test_asgi_lifespan_shuts_the_tracker_down_without_blocking(fake_enso: FakeEnso) -> None:
    """The README's ASGI recipe, driven the way a server (uvicorn…) drives it."""
    state: dict[str, Tracker] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                state["tracker"] = Tracker(api_key=API_KEY, base_url=fake_enso.url)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await state["tracker"].ashutdown(timeout=5.0)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def server() -> list[str]:
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        sent: list[str] = []
        started = asyncio.Event()

        async def send(message: dict[str, Any]) -> None:
            sent.append(message["type"])
            started.set()

        lifespan = asyncio.create_task(app({"type": "lifespan"}, inbox.get, send))
        await inbox.put(LIFESPAN_MESSAGES[0])
        await started.wait()
        state["tracker"].track("ent_1", "api_calls", 1, event_id="evt_req")  # a request
        fake_enso.hang(None)  # Enso hangs until the loop has run 20 more steps

        async def ticker() -> None:
            while fake_enso.in_flight == 0:  # the shutdown's request reached Enso and hangs
                await asyncio.sleep(0.005)
            for _ in range(20):
                await asyncio.sleep(0.005)
            fake_enso.release()

        beat = asyncio.create_task(ticker())
        await inbox.put(LIFESPAN_MESSAGES[1])
        await lifespan
        await beat
        return sent

    assert run(server) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert fake_enso.event_ids() == ["evt_req"]
    assert state["tracker"].track("ent_1", "api_calls", 1) is None
