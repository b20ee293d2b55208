"""A tracker's dead-letter admin: list, redrive and purge the dead letters its spool keeps.

A base class of :class:`~._tracker.Tracker`: the public methods ``dead_letters()``,
``redrive()`` and ``purge_dead_letters()``, each a call of the public ``Spool``
(``_spool.admin``) on the tracker's ``spool_dir``. Nothing here runs on ``track()``'s
path, and nothing here writes the ledger's books: redriven letters become a spool file
that the spooler adopts as it adopts any other (counted as ``adopted``).

Design constraints (what must never break):

* Without a spool there are no dead letters: each method raises ``ConfigurationError``
  (there is nothing to list, resend or delete, and silence would hide a misconfiguration).
* A tracker redrives only the letters stored for its own destination and credential
  (``_identity``): never another tracker's.
"""

from __future__ import annotations

from collections.abc import Iterator

from ._errors import ConfigurationError
from ._model import DeadLetter
from ._spool.admin import Spool
from ._tracker_parts import TrackerParts

__all__ = ["DeadLetterAdmin"]


class DeadLetterAdmin(TrackerParts):
    """The dead-letter methods of ``Tracker``."""

    def _spool(self) -> Spool:
        if self._config.spool_dir is None:
            raise ConfigurationError("dead letters are kept only with a spool: pass spool_dir")
        return Spool(self._config.spool_dir)

    def dead_letters(
        self, kind: str | None = None, code: int | str | None = None
    ) -> Iterator[DeadLetter]:
        """Events that will never be delivered, kept in the spool directory with their
        reason (``rejected``, ``too_large``, ``retries_exhausted``, ``corrupt``), oldest
        first; ``code`` matches Enso's code as text (``2002`` or ``"2002"``)."""
        return self._spool().dead_letters(kind, code)

    def redrive(self, kind: str | None = None, code: int | str | None = None) -> int:
        """Send matching dead letters again, with the same eventIds (say, once the
        customer entity behind Enso's 2002 exists); returns how many. Only the letters
        stored for this tracker's destination and credential (docs/spool.md). They
        count as ``adopted`` in ``stats()``, and dead letters again if Enso still
        refuses them."""
        moved = self._spool()._redrive(kind, code, self._identity)  # its own letters only
        spooler = self._worker.spooler
        if moved and spooler is not None:
            spooler.rescan_soon()  # adopt the redrive file at once
            self._worker.kick()
        return moved

    def purge_dead_letters(self, kind: str | None = None, code: int | str | None = None) -> int:
        """Delete matching dead letters for good; returns how many."""
        return self._spool().purge_dead_letters(kind, code)
