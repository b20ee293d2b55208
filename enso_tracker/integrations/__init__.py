"""Framework integrations, enabled automatically when the framework is in the process.

In the manner of Sentry's SDK: each integration lives in its own small module and is
enabled by :func:`auto_enable` (called by every ``Tracker()`` unless
``integrations=False``) when its framework is present. None of them imports a framework
that the application has not imported or cannot import.
"""

from __future__ import annotations

__all__ = ["auto_enable"]


def auto_enable() -> None:
    """Enable every integration whose framework is present; idempotent and cheap."""
