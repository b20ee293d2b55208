"""A forked child of a tracker that was shut down stays shut down: it starts with fresh
books (the parent owns its events) and refuses ``track()`` as ``closed``; it never sends.
Here, not in the unit tier, because the test forks a process."""

from __future__ import annotations

import os

import pytest

from enso_tracker.testing import FakeEnso
from tests.conftest import Socketless, accepted


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_of_a_shut_down_tracker_stays_shut_down(socketless: Socketless) -> None:
    fake = FakeEnso()
    t = socketless(fake, flush_interval=0.05)
    accepted(t.track("ent_1", "api_calls", 1))
    assert t.shutdown(5.0) is True
    pid = os.fork()
    if pid == 0:  # the child: fresh books, still closed; never returns into pytest
        code = 1
        try:
            refused = t.track("ent_1", "api_calls", 2) is None
            stats = t.stats()
            if refused and (stats.accepted, stats.refused) == (0, {"closed": 1}):
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child accepted an event"
    assert len(fake.event_ids()) == 1  # the parent's one event, sent once
