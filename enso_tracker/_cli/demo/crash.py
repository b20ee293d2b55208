"""``enso-tracker demo --crash``: an app tracking with a durable spool is ``kill -9``ed
mid-stream; a new process opens the spool and delivers what the dead one had committed.

The app (this module run as ``python -m enso_tracker._cli.demo.crash URL DIR``) tracks
events ``crash-demo-<n>`` as fast as it can against an embedded fake Enso that answers
some requests with 503, and prints its ``stats().durable_seq`` every 20 ms. The demo
kills it with SIGKILL, starts a new tracker on the same directory, and checks the books:
every event up to the last ``durable_seq`` the app printed is on the server exactly
once (Enso's dedup absorbs what was sent twice), and the directory is empty again.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import TextIO

from ..._tracker import Tracker
from ...testing import FakeEnso, Fault

PREFIX = "crash-demo-"
STARTUP_TIMEOUT = 60.0  # seconds the app may take to commit its first event


def app(url: str, directory: str) -> None:
    """The app that gets killed: tracks until it dies, printing its durable_seq."""
    tracker = Tracker(
        api_key="test-api-key",
        base_url=url,
        spool_dir=directory,
        handle_sigterm=False,
        disabled=False,  # the demo runs even where ENSO_DISABLED=1 is set
        flush_interval=0.2,
        backoff_base=0.05,
        backoff_max=0.5,
    )
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(0.02):
            print(tracker.stats().durable_seq, flush=True)

    threading.Thread(target=report, daemon=True).start()
    n = 0
    while True:
        n += 1
        tracker.track(f"ent_{n % 7}", "api_calls", 1, event_id=f"{PREFIX}{n}")
        if n % 200 == 0:
            time.sleep(0.001)  # a web app's pace, not a tight loop


def run_crash_demo(*, seconds: float = 2.0, out: TextIO | None = None) -> int:
    """Run the crash demo; 0 when every committed event was delivered exactly once."""
    out = sys.stdout if out is None else out  # read now: sys.stdout may have been replaced
    print(
        f"Simulating a crash: an app tracking with a durable spool is killed with SIGKILL "
        f"{seconds:g} s after its first commit; a new process delivers what it had committed.",
        file=out,
    )
    print(
        "On purpose, the embedded fake Enso answers some requests with 503, and the kill "
        "loses answers: some events go twice, and Enso's dedup by eventId absorbs them.",
        file=out,
        flush=True,
    )
    directory = tempfile.mkdtemp(prefix="enso-crash-demo-")
    try:
        return _run(directory, seconds, out)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _run(directory: str, seconds: float, out: TextIO) -> int:
    rng = random.Random(7)
    with FakeEnso() as server:
        child = subprocess.Popen(  # noqa: S603  (our own interpreter and module)
            [sys.executable, "-m", "enso_tracker._cli.demo.crash", server.url, directory],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # its retry warnings: the summary below tells
            text=True,
        )
        durable = 0
        committing = threading.Event()  # the app has committed its first events
        assert child.stdout is not None

        def read() -> None:
            nonlocal durable
            assert child.stdout is not None
            for line in child.stdout:
                if line.strip().isdigit():
                    durable = int(line)
                    if durable:
                        committing.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        # The clock starts when the app commits, not when it is launched: on a loaded
        # machine its start-up alone can take longer than the whole run.
        committing.wait(STARTUP_TIMEOUT)
        started = time.monotonic()
        while committing.is_set() and time.monotonic() - started < seconds:
            if rng.random() < 0.05:  # now and then, not a storm
                server.script(Fault(status=503))
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)  # no atexit, no flush: a real crash
        child.wait()
        reader.join(5.0)
        before = len(server.event_ids())
        print(f"app killed with SIGKILL {seconds:.1f} s after its first commit", file=out)
        print(f"  last durable_seq it printed  {durable:8d}", file=out)
        print(f"  events Enso had by then      {before:8d}", file=out)
        left = [n for n in os.listdir(directory) if n.endswith(".db")]
        print(f"  spool files left behind      {len(left):8d}", file=out)
        heir = Tracker(
            api_key="test-api-key",
            base_url=server.url,
            spool_dir=directory,
            handle_sigterm=False,
            disabled=False,
        )
        ok = heir.shutdown(30.0)  # waits until everything adopted is delivered
        stats = heir.stats()
        on_server = set(server.event_ids())
        duplicates = server.duplicates
    committed = {f"{PREFIX}{n}" for n in range(1, durable + 1)}
    missing = committed - on_server
    beyond = len([i for i in on_server if int(i[len(PREFIX) :]) > durable])
    print(
        f"new process adopted           {stats.adopted:8d} events, delivered {stats.delivered}",
        file=out,
    )
    print(
        f"  committed events on Enso    {len(committed) - len(missing):8d} of {len(committed)}",
        file=out,
    )
    print(f"  past durable_seq, delivered {beyond:8d} (sent before the kill)", file=out)
    print(f"  duplicates Enso absorbed    {sum(duplicates.values()):8d}", file=out)
    leftovers = [n for n in os.listdir(directory) if n.startswith("spool-")]
    problems = []
    if missing:
        problems.append(f"{len(missing)} committed events never reached Enso")
    if not ok or leftovers:
        problems.append(f"the spool did not drain: {leftovers}")
    if durable == 0:
        problems.append("the app never reported a durable_seq")
    if problems:
        print("CRASH DEMO FAILED:", file=out)
        for p in problems:
            print(f"  - {p}", file=out)
        return 1
    print("Every event committed before the kill was delivered exactly once.", file=out)
    return 0


if __name__ == "__main__":
    app(sys.argv[1], sys.argv[2])
