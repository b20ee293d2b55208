"""The spool seam: where the worker keeps a batch between cutting it and settling it.

The worker calls :meth:`Spool.stage` with each batch and its exact wire body before
sending it, and :meth:`Spool.commit` with the events Enso has accounted for (delivered
or dropped for good) once the outcome is settled; events sent again keep their place.
Today's behaviour is :class:`MemorySpool`, which keeps nothing: an event waiting in
memory dies with its process. The durable spool (issue #10) adds a class here that
writes the staged body to disk, and changes neither ``track()`` nor the schedule.
Both calls run on the sender thread with no lock held.
"""

from __future__ import annotations

from typing import Protocol

from ._items import Pending

__all__ = ["MemorySpool", "Spool"]


class Spool(Protocol):
    def stage(self, batch: list[Pending], body: bytes) -> None:
        """``batch`` is about to be sent as ``body`` (the same body on every retry of
        this exact batch; a retried event may travel in another batch next time)."""
        ...

    def commit(self, settled: list[Pending]) -> None:
        """These events are settled for good: delivered, or dropped with a reason."""
        ...

    def close(self) -> None: ...


class MemorySpool:
    """The default: nothing outlives the process."""

    def stage(self, batch: list[Pending], body: bytes) -> None:
        pass

    def commit(self, settled: list[Pending]) -> None:
        pass

    def close(self) -> None:
        pass
