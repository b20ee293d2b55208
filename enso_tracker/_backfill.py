"""The eventId rule of backfills (``enso-tracker import``, ``enso_tracker.dask``,
``enso_tracker.spark``): ids that do not depend on how the work is split.

**The rule** (a stable contract: changing it would make a re-run bill twice)::

    content = json.dumps([entity, metric, repr(float(value)), timestamp_ms],
                         ensure_ascii=False, separators=(",", ":")).encode()
    eventId = "imp_" + sha256(f"{namespace}\\n{k}\\n".encode() + content).hexdigest()[:32]

* ``entity``, ``metric``: the mapped event's, as sent.
* ``value``: as a double (Enso reads JSON numbers as doubles): ``1``, ``1.0`` and
  ``Decimal("1.00")`` are one value.
* ``timestamp_ms``: the event's instant in whole UTC milliseconds (what Enso keeps), so
  ``...T12:00:00Z`` and ``...T14:00:00+02:00`` are one time.
* ``namespace``: empty unless given (``--id-namespace``); tells apart two genuinely
  separate backfills of identical content.
* ``k``: the occurrence number (0, 1, 2, ...) of that content within the whole input:
  the k-th identical row. Identical rows are interchangeable, so which of them gets
  which ``k`` does not matter: the *set* of ids is the same whatever the order.

Nothing about *where* a row is (file name, line, partition, shard, machine) enters the
id, so any split of the same rows gives the same ids; the mapping does (a row imported
as two metrics is two events). Metadata and JobId are not part of it: adding a
metadata column on a re-run bills nothing twice.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Final

import msgspec

from ._errors import ConfigurationError
from ._validate import MAX_EXACT_INT, check_name, coerce_value, timestamp_ns

__all__ = [
    "ID_PREFIX",
    "MAX_NAME",
    "Occurrences",
    "check_namespace",
    "content",
    "content_key",
    "event_id",
    "shard_of_key",
]

ID_PREFIX: Final = "imp_"
#: Long enough for any name, short enough to keep ids bounded in memory and logs.
MAX_NAME: Final = 10_000
_encode = msgspec.json.encode
_sha256 = hashlib.sha256
#: Parsed timestamps: exports repeat them (many rows a second or a minute), and parsing
#: is most of the cost of an id. Bounded; emptied when full.
_TIMES_CACHED: Final = 4096
_times: dict[str, int] = {}


def content(entity: Any, metric: Any, value: Any, timestamp: Any) -> bytes:
    """The canonical billing content of an event (see the module docstring).

    Raises the ``InvalidEventError`` that ``track()`` would raise for a bad entity,
    metric, value or timestamp, naming the field."""
    entity = check_name("entity", entity, MAX_NAME)
    metric = check_name("metric", metric, MAX_NAME)
    kind = type(value)
    if kind is int and -MAX_EXACT_INT <= value <= MAX_EXACT_INT:
        number = float(value) + 0.0  # + 0.0: -0.0 and 0.0 are one value
    elif kind is float and math.isfinite(value):
        number = value + 0.0
    else:
        number = float(coerce_value(value)) + 0.0
    ms = _times.get(timestamp) if type(timestamp) is str else None
    if ms is None:
        ms = timestamp_ns(timestamp) // 1_000_000
        if type(timestamp) is str:
            if len(_times) >= _TIMES_CACHED:
                _times.clear()
            _times[timestamp] = ms
    # msgspec writes JSON as json.dumps(ensure_ascii=False, separators=(",", ":")) does
    # (tests/integration/test_backfill_ids.py checks it), and ten times faster.
    return _encode([entity, metric, repr(number), ms])


def content_key(data: bytes) -> bytes:
    """16 bytes that group identical content (for counting, shuffles and shards)."""
    return _sha256(data).digest()[:16]


def event_id(data: bytes, occurrence: int, namespace: str = "") -> str:
    """The eventId of the ``occurrence``-th (0-based) row with this ``content``."""
    digest = _sha256(f"{namespace}\n{occurrence}\n".encode())
    digest.update(data)
    return ID_PREFIX + digest.hexdigest()[:32]


def shard_of_key(key: bytes, shards: int) -> int:
    """The shard of a content key: every occurrence of one content in one shard, so
    each shard counts its occurrences alone."""
    return int.from_bytes(key[:8], "big") % shards


def check_namespace(namespace: object) -> str:
    """A namespace is printable text (it is hashed with a newline after it)."""
    if not isinstance(namespace, str):
        raise ConfigurationError(f"id namespace must be a str, not {type(namespace).__name__}")
    if not namespace.isprintable():
        raise ConfigurationError(f"id namespace {namespace!r} must be printable text")
    return namespace


class Occurrences:
    """Occurrences of each content key seen so far, in one process.

    Memory grows with the number of *distinct* contents (about 100 bytes each), so it
    is bounded: past ``max_distinct`` :meth:`take` raises :class:`TooManyDistinct`.
    ``--shard`` splits the keys across processes (and ids do not depend on the split)."""

    def __init__(self, max_distinct: int) -> None:
        self.max_distinct = max_distinct
        self._seen: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def take(self, key: bytes) -> int:
        """The next occurrence number of ``key``."""
        seen = self._seen
        k = seen.get(key, 0)
        if k == 0 and len(seen) >= self.max_distinct:
            raise TooManyDistinct(self.max_distinct)
        seen[key] = k + 1
        return k

    def give_back(self, key: bytes) -> None:
        """Undo the last :meth:`take` of ``key`` (its row was refused), so that only
        accepted rows are counted and the ids do not depend on where a bad row sat."""
        seen = self._seen
        k = seen[key] - 1
        if k:
            seen[key] = k
        else:
            del seen[key]


class TooManyDistinct(Exception):
    """More distinct contents than one process may count."""

    def __init__(self, bound: int) -> None:
        super().__init__(
            f"more than {bound:,} distinct events to count in one process: split the "
            "import with --shard I/N (ids do not depend on the split) or raise "
            "--max-distinct"
        )
        self.bound = bound
