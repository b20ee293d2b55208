"""The import's fast path: the common row, in the fewest steps.

* It takes only rows with a derived id, in runs without ``--shard``, ``--dry-run`` or
  ``--id-rule line``/``--id-column``, whose names are ASCII, whose value is an int or a
  finite float (or one written as text) and whose timestamp parses.
* For those it computes exactly what ``Importer._row`` would (the same content, the same
  eventId, the same ``track()`` arguments), as
  ``tests/integration/test_cli_import_paths.py`` checks.
* Anything else, or any exception on the way, it leaves untouched (nothing counted,
  nothing taken) to ``Importer._row``, which says what is wrong.

Each check is done once: the names' and value's checks inline, the timestamp text parsed
once per distinct text into both the instant ``track()`` gets and the millisecond of the
content, and one SHA-256 for a first occurrence (its digest is the counting key).
"""

from __future__ import annotations

import hashlib
import itertools
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import msgspec

from ..._backfill import ID_PREFIX, event_id
from ..._errors import InvalidEventError
from ..._validate import MAX_EXACT_INT, timestamp_ns
from .books import Interrupted
from .mapping import parse_number

if TYPE_CHECKING:
    from .engine import Importer

__all__ = ["FastPath"]

#: Timestamp texts remembered with their instant (cleared when full).
INSTANTS_KEPT: Final = 65_536
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_encode = msgspec.json.encode
_sha256 = hashlib.sha256


class FastPath:
    """The fast path of one run; ``max_name`` is the tracker's name bound (and at most
    ``content()``'s)."""

    def __init__(self, imp: Importer, max_name: int) -> None:
        self.imp = imp
        self.mapper = imp.mapper
        self.occurrences = imp.occurrences
        self.namespace = imp.namespace
        self.first = imp.first_prefix
        self.max_name = max_name
        #: RFC 3339 text -> (the datetime handed to track(), its UTC millisecond).
        self.instants: dict[str, tuple[datetime, int]] = {}

    def row(self, index: int, line: int, fields: dict[str, Any]) -> bool:
        """The common row, in the fewest steps: True once it is handled (accepted, or
        counted and stopped), False (having changed nothing) to leave it to ``Importer._row``,
        which says what is wrong. It computes what ``_row`` would (the same content, id
        and ``track()`` arguments); anything unusual (another mapping, a bad or
        non-ASCII value, metadata trouble, a row of an errors file) goes to ``_row``."""
        if "deadLetter" in fields:
            return False
        explicit = fields.get("eventId")
        if explicit is not None and explicit != "":
            return False
        imp = self.imp
        mapper = self.mapper
        try:
            entity = fields[mapper.entity]
            metric = mapper.metric_name
            if metric is None:
                metric = fields[mapper.metric]
            value = fields[mapper.value]
        except KeyError:
            return False
        limit = self.max_name
        if (
            type(entity) is not str
            or type(metric) is not str
            or not entity.isascii()
            or not metric.isascii()
            or not 0 < len(entity) <= limit
            or not 0 < len(metric) <= limit
            or entity.isspace()
            or metric.isspace()
        ):
            return False
        try:
            if type(value) is str:
                value = parse_number(value)
            if type(value) is int:
                if not -MAX_EXACT_INT <= value <= MAX_EXACT_INT:
                    return False
                number = float(value)
            elif type(value) is float and value - value == 0:  # finite
                number = value + 0.0  # -0.0 and 0.0 are one value (as content() says)
            else:
                return False
            timestamp = fields.get(mapper.timestamp)
            if timestamp is None or timestamp == "":
                return False
            if mapper.parse_timestamp is not None:
                timestamp = mapper.parse_timestamp(timestamp)
            if type(timestamp) is str:
                instant = self.instants.get(timestamp)
                if instant is None:
                    ms = timestamp_ns(timestamp) // 1_000_000
                    instant = (_EPOCH + timedelta(milliseconds=ms), ms)
                    if len(self.instants) >= INSTANTS_KEPT:
                        self.instants.clear()
                    self.instants[timestamp] = instant
                timestamp, ms = instant
            else:
                ms = timestamp_ns(timestamp) // 1_000_000
            metadata = None
            if mapper.metadata or "metadata" in fields:
                metadata = mapper._metadata(fields)
        except Exception:
            return False  # _row meets it again, and says why
        job_id = mapper.job_id
        if job_id is None:
            job_id = fields.get("JobId") or fields.get("jobId") or None
        if imp.interrupt:
            raise Interrupted
        imp.rows += 1
        if imp.rows & 1023 == 0:
            imp._housekeeping()
        # _backfill's rule, k = 0 hashed once (see Importer._key).
        data = _encode([entity, metric, repr(number), ms])
        digest = _sha256(self.first + data).digest()
        key = digest[:16]
        k = self.occurrences.take(key)
        own = ID_PREFIX + key.hex() if k == 0 else event_id(data, k, self.namespace)
        track = imp.track
        try:
            accepted = track(
                entity,
                metric,
                value,
                timestamp=timestamp,
                metadata=metadata,
                event_id=own,
                job_id=job_id,
            )
            while accepted is None:  # the queue stayed full for block_timeout
                if imp.interrupt:
                    raise Interrupted
                imp._housekeeping()
                accepted = track(
                    entity,
                    metric,
                    value,
                    timestamp=timestamp,
                    metadata=metadata,
                    event_id=own,
                    job_id=job_id,
                )
        except InvalidEventError:  # e.g. metadata track() refuses: _row says why
            self.occurrences.give_back(key)
            imp.rows -= 1
            return False
        where = imp._where
        where[accepted] = (index, line)
        if len(where) > imp._window:
            for old in list(itertools.islice(where, len(where) // 2)):
                del where[old]
        return True
