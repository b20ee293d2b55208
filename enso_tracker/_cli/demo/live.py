"""The demo: a web app's worth of traffic into a FakeEnso, then a check of the books.

Several threads play request handlers that each track a few events per request. The
fake Enso knows most customers but not all (so some events are rejected with code
2002), and it misbehaves on purpose a few times (a 503 storm, a 429 with Retry-After,
a dropped connection, per-record 5xx), so the summary shows retries at work. At the
end every accepted eventId must be either on the server exactly once, or reported to
``on_drop`` with a reason — never both, never neither.

On a terminal the progress is one line rewritten in place; anywhere else (a file, a
pipe, CI logs) it is plain lines, one a second, with no escape codes.
"""

from __future__ import annotations

import logging
import random
import sys
import threading
import time
from collections.abc import Sequence
from typing import TextIO

from ..._model import DropReason, Event
from ..._tracker import Tracker
from ...testing import FakeEnso, Fault

KNOWN = [f"ent_demo_{i:02d}" for i in range(20)]
UNKNOWN = "ent_not_in_enso"
METRICS = ("api_calls", "tokens", "gb_stored")


def run_demo(
    *, seconds: float = 4.0, threads: int = 6, live: bool = True, out: TextIO | None = None
) -> int:
    """Run the demo; return 0 when the books balance, 1 otherwise."""
    out = sys.stdout if out is None else out  # read now: sys.stdout may have been replaced
    terminal = _is_terminal(out)
    print(
        f"Simulating a web app: {threads} threads track usage events for {seconds:g} s into "
        "an embedded fake Enso (no network, no account).",
        file=out,
    )
    print(
        "On purpose, about 1% name a customer Enso does not know (refused, code 2002) and "
        "Enso fails a few requests (503, 429, a reset): the books must balance anyway.",
        file=out,
        flush=True,
    )
    # The tracker's warnings (retries, drops) get their own lines; on a terminal, above
    # the live one (return to the line's start and clear it first).
    handler = logging.StreamHandler(out)
    prefix = "\r\033[K" if terminal else ""
    handler.setFormatter(logging.Formatter(prefix + "  log: %(levelname)s %(message)s"))
    logger = logging.getLogger("enso_tracker")
    logger.addHandler(handler)
    try:
        return _run(seconds, threads, live, terminal, out)
    finally:
        logger.removeHandler(handler)


def _is_terminal(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _run(seconds: float, threads: int, live: bool, terminal: bool, out: TextIO) -> int:
    dropped: dict[str, DropReason] = {}
    drop_lock = threading.Lock()
    accepted: list[list[str]] = [[] for _ in range(threads)]
    stop = threading.Event()

    def on_drop(events: Sequence[Event], reason: DropReason) -> None:
        with drop_lock:
            for e in events:
                dropped[e.event_id] = reason

    with FakeEnso(known_entities=KNOWN) as server:
        tracker = Tracker(
            api_key="test-api-key",
            base_url=server.url,
            disabled=False,  # the demo runs even where ENSO_DISABLED=1 is set
            on_drop=on_drop,
            flush_interval=0.25,
            backoff_base=0.05,
            backoff_max=0.5,
        )

        def handler(slot: int) -> None:
            rng = random.Random(slot)
            ids = accepted[slot]
            while not stop.is_set():
                for _ in range(rng.randint(1, 4)):  # one request tracks a few events
                    entity = UNKNOWN if rng.random() < 0.01 else rng.choice(KNOWN)
                    value = rng.choice((1, 1, 1, 2.5, 10))
                    event_id = tracker.track(entity, rng.choice(METRICS), value)
                    if event_id is not None:
                        ids.append(event_id)
                time.sleep(rng.uniform(0.0, 0.002))  # the rest of the request

        workers = [threading.Thread(target=handler, args=(i,)) for i in range(threads)]
        started = time.monotonic()
        for w in workers:
            w.start()
        # Bad moments for Enso, spread over the run.
        chaos = [
            (0.2, Fault(status=503)),
            (0.2, Fault(status=503)),
            (0.4, Fault(status=429, retry_after="0.3")),
            (0.5, Fault(drop_connection=True)),
            (0.6, Fault(status=200, record_status={0: 503, 3: 500})),
        ]
        next_chaos = 0
        next_line = 0.0  # off a terminal: a plain line a second
        back = "\r" if terminal else ""  # on a terminal: back to the live line's start
        while (elapsed := time.monotonic() - started) < seconds:
            if next_chaos < len(chaos) and elapsed >= chaos[next_chaos][0] * seconds:
                server.script(chaos[next_chaos][1])
                next_chaos += 1
            if live and (terminal or elapsed >= next_line):
                next_line += 1.0
                s = tracker.stats()
                rate = s.accepted / elapsed if elapsed else 0.0
                print(
                    f"{back}{elapsed:4.1f}s tracked={s.accepted:7d} "
                    f"delivered={s.delivered:7d} retried={s.retried:5d} "
                    f"dropped={sum(s.dropped.values()):4d} queue={s.queued:5d} "
                    f"in_flight={s.in_flight:4d} {rate:8.0f} ev/s",
                    end="" if terminal else "\n",
                    file=out,
                    flush=True,
                )
            stop.wait(0.1)
        stop.set()
        for w in workers:
            w.join()
        ok = tracker.shutdown(10.0)
        stats = tracker.stats()
        on_server = server.events
        duplicates = server.duplicates

    if live and terminal:
        print(file=out)  # end the live line
    ids = [i for group in accepted for i in group]
    unique = set(ids)
    delivered_ids = unique & on_server.keys()
    dropped_ids = set(dropped)
    problems: list[str] = []
    if len(unique) != len(ids):
        problems.append(f"{len(ids) - len(unique)} eventIds were handed out twice")
    if missing := unique - on_server.keys() - dropped_ids:
        problems.append(f"{len(missing)} accepted events neither delivered nor reported")
    if both := delivered_ids & dropped_ids:
        problems.append(f"{len(both)} events both delivered and reported as dropped")
    if strangers := on_server.keys() - unique:
        problems.append(f"{len(strangers)} events on the server that were never accepted")
    if stats.delivered != len(delivered_ids):
        problems.append(f"stats say {stats.delivered} delivered, server has {len(delivered_ids)}")
    if not stats.balanced:
        problems.append(f"stats do not balance: {stats}")
    if sum(stats.dropped.values()) != len(dropped_ids):
        problems.append("on_drop saw a different number of events than stats().dropped")
    # shutdown() is True only when every event reached Enso: the rejections on purpose
    # make it False on a healthy run. What must not happen is a shutdown that ran out of
    # time (events dropped at its deadline) or a result that contradicts the books.
    if "shutdown" in stats.dropped or stats.pending:
        problems.append("shutdown() did not settle every event within its deadline")
    if ok != (not stats.dropped and not stats.refused):
        problems.append(f"shutdown() returned {ok} although stats say {stats}")

    reasons: dict[str, int] = {}
    for reason in dropped.values():
        key = str(reason)
        reasons[key] = reasons.get(key, 0) + 1
    print("== enso-tracker demo: the books ==", file=out)
    print(f"accepted by track()        {stats.accepted:8d}", file=out)
    print(f"delivered (unique on Enso) {len(delivered_ids):8d}", file=out)
    print(f"dropped, with a reason     {len(dropped_ids):8d}", file=out)
    for text, count in sorted(reasons.items()):
        print(f"    {count:6d} x {text}", file=out)
    print(f"refused by track()         {sum(stats.refused.values()):8d} {stats.refused}", file=out)
    print(f"re-sends (retries)         {stats.retried:8d}", file=out)
    print(f"duplicates Enso absorbed   {sum(duplicates.values()):8d}", file=out)
    print(f"requests / failed          {stats.requests:8d} / {stats.failed_requests}", file=out)
    why = "every event reached Enso" if ok else "the rejected events never reached Enso"
    print(f"shutdown() returned        {ok!s:>8} ({why})", file=out)
    if problems:
        print("BOOKS DO NOT BALANCE:", file=out)
        for p in problems:
            print(f"  - {p}", file=out)
        return 1
    print("Books balance: every accepted event was delivered exactly once or reported.", file=out)
    return 0
