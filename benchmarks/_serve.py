"""Child-process entry point: ``python -m benchmarks._serve sink|fake``.

Serves on 127.0.0.1 (free port) and answers the line protocol described in
:mod:`benchmarks._servers` on stdin/stdout until ``quit`` or end of input.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

from benchmarks._common import API_KEY
from benchmarks._servers import CountingSink


def _serve(url: str, count: Callable[[], str], wait: Callable[[int, float], str]) -> None:
    print(f"URL {url}", flush=True)
    for raw in sys.stdin:
        words = raw.split()
        if not words:
            continue
        if words[0] == "quit":
            return
        if words[0] == "count":
            print(count(), flush=True)
        elif words[0] == "wait" and len(words) == 3:
            print(wait(int(words[1]), float(words[2])), flush=True)
        else:
            print(f"error unknown command {raw.strip()!r}", flush=True)


def run_sink() -> None:
    sink = CountingSink()
    thread = threading.Thread(
        target=sink.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        _serve(
            sink.url,
            lambda: f"{sink.events} {sink.requests}",
            lambda n, timeout: str(sink.wait_for(n, timeout)),
        )
    finally:
        sink.shutdown()
        sink.server_close()


def run_fake() -> None:
    from enso_tracker.testing import FakeEnso

    with FakeEnso(api_keys=(API_KEY,)) as fake:

        def wait(n: int, timeout: float) -> str:
            # FakeEnso's documented API: wait_for_events(n, timeout) -> bool.
            return str(n if fake.wait_for_events(n, timeout) else -1)

        _serve(fake.url, lambda: "-1 -1", wait)


def main(argv: list[str]) -> int:
    if argv == ["sink"]:
        run_sink()
    elif argv == ["fake"]:
        run_fake()
    else:
        print("usage: python -m benchmarks._serve sink|fake", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
