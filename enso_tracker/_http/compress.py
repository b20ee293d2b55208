"""Opt-in request compression (``compression="gzip"``): the body codec and its choice.

Enso's documentation does not say that it accepts compressed bodies, so nothing is
compressed unless asked (``Tracker(compression="gzip")`` or ``ENSO_COMPRESSION=gzip``);
a server that refuses the encoding (415) turns it off for the tracker (``sender.py``).

Level 1: event JSON is repetitive (the same keys, entity and metric in every event),
so the fastest level already shrinks a body ~8-10x, and every microsecond spent here is
GIL time taken from the application. An accelerated deflate (``zlib-ng``, ``isal``) is
used when it is installed; neither is a dependency. All of them produce standard gzip.

Owns: the ``Compression`` option's values and :func:`gzip_body`.

Invariants: bodies are compressed only when asked; the result is standard gzip,
whichever implementation made it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Final, Literal

__all__ = ["GZIP_LEVEL", "Compression", "gzip_body", "implementation"]

Compression = Literal["gzip"]
GZIP_LEVEL: Final = 1
_GZIP_WBITS: Final = 31  # 16 + 15: a gzip header and trailer around the deflate stream


def _pick() -> tuple[Callable[..., bytes], str]:
    try:
        from zlib_ng import zlib_ng  # type: ignore[import-not-found, unused-ignore]

        return zlib_ng.compress, "zlib-ng"
    except ImportError:
        pass
    try:
        from isal import isal_zlib  # type: ignore[import-not-found, unused-ignore]

        return isal_zlib.compress, "isal"
    except ImportError:
        pass
    return zlib.compress, "zlib"


_compress, implementation = _pick()


def gzip_body(body: bytes) -> bytes:
    """``body`` as one gzip member (RFC 1952), at the fast level."""
    return _compress(body, GZIP_LEVEL, wbits=_GZIP_WBITS)
