"""Development and test mode: a tracker that validates and counts, and sends nothing.

``Tracker(disabled=True)`` (or ``ENSO_DISABLED=1``) keeps ``track()`` exactly as in
production (the same checks, errors, ids and bounds: it is the same code) but hands the
pipeline a :class:`DisabledWorker`: no thread, no connection, no spool. Its ``kick()``,
which ``track()`` calls while no sender thread runs, lets the queue go on the caller's
thread, counted as ``disabled`` in ``stats()``, so the books balance and ``flush()``
returns at once. A production tracker pays nothing for this mode: the branch is taken
once, at construction.
"""

from __future__ import annotations

import logging

from ._http.sender import Outcome
from ._ledger import Ledger
from ._reentry import register_lock_holders
from ._reporting import Reports
from ._worker import Worker

__all__ = ["DisabledSender", "DisabledWorker"]


class DisabledSender:
    """Stands in for the HTTP sender: needs no credentials and is never called."""

    logins = 0

    def send(self, body: bytes, timeout: float) -> Outcome:
        raise RuntimeError("a disabled tracker never sends")

    def close(self) -> None:
        pass

    def after_fork(self) -> None:
        pass


class DisabledWorker(Worker):
    """The worker of a disabled tracker: lets queued events go instead of sending them."""

    def kick(self) -> None:
        ledger = self.ledger
        with ledger.lock:
            ledger.let_go_locked()

    def begin_shutdown(self, deadline: float) -> None:
        ledger = self.ledger
        with ledger.lock:
            if ledger.begin_stop_locked(deadline):
                ledger.let_go_locked()

    def finish_shutdown(self, deadline: float) -> bool:
        """True unless ``track()`` refused something: nothing is ever pending here."""
        ledger = self.ledger
        reports: Reports = []
        with ledger.lock:
            if ledger.closed:
                return not ledger.counters.dropped and not ledger.counters.refused
            ledger.let_go_locked()
            ledger.close_locked(reports)  # holds nothing: no drop to report
            disabled, refused = ledger.counters.disabled, dict(ledger.counters.refused)
        turned_away = sum(refused.values())
        self.reporter.log.always(
            logging.WARNING if turned_away else logging.INFO,
            "enso-tracker (disabled) shut down: %d event(s) validated and not sent, %d refused%s",
            disabled,
            turned_away,
            f" {refused}" if turned_away else "",
        )
        self.hand_over(reports)
        return not turned_away


# As the Worker's are: a signal handler that interrupted these (the worker is among a
# tracker's parts) must not wait on the lock they hold (see _reentry). The public calls
# that reach them are registered too; this keeps it true for any other caller.
register_lock_holders(
    DisabledWorker.kick,
    DisabledWorker.begin_shutdown,
    DisabledWorker.finish_shutdown,
    Ledger.let_go_locked,
)
