"""The engine-neutral steps of ``enso_tracker.dask``/``enso_tracker.spark``
(``enso_tracker._partition``): mapping a row, and delivering one partition through the
public Tracker against FakeEnso."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from enso_tracker._backfill import content, content_key, event_id
from enso_tracker._partition import (
    INVALID,
    OWN_ID,
    Columns,
    PartitionNotDelivered,
    deliver,
    number_group,
    prepare,
)
from enso_tracker.testing import FakeEnso

pytestmark = pytest.mark.slow  # subprocesses, servers or frameworks: `make test`

ROW: dict[str, Any] = {
    "CustomerEntityId": "ent_1",
    "metric": "api_calls",
    "value": 2,
    "timestamp": "2026-04-01T00:00:00Z",
}


def test_a_row_in_the_api_shape_is_keyed_by_its_content() -> None:
    key, event = prepare(ROW, Columns())
    assert key == content_key(content("ent_1", "api_calls", 2, ROW["timestamp"])).hex()
    assert event == {**ROW, "metadata": None, "JobId": None}
    assert prepare({**ROW, "value": np.int64(2)}, Columns())[0] == key
    assert prepare({**ROW, "timestamp": pd.Timestamp(ROW["timestamp"])}, Columns())[0] == key
    assert prepare({**ROW, "eventId": float("nan")}, Columns())[0] == key  # an empty cell


def test_own_ids_and_bad_rows_skip_the_numbering() -> None:
    assert prepare({**ROW, "eventId": "evt_1"}, Columns()) == (
        OWN_ID,
        {**ROW, "metadata": None, "JobId": None, "eventId": "evt_1"},
    )
    kind, bad = prepare({"metric": "m"}, Columns())
    assert (kind, bad["field"]) == (INVALID, "row")
    assert "CustomerEntityId" in bad["reason"]
    kind, bad = prepare({**ROW, "timestamp": "2026-04-01T00:00:00"}, Columns())
    assert (kind, bad["field"]) == (INVALID, "timestamp")
    kind, bad = prepare(ROW, Columns(id_column="id"))
    assert (kind, bad["field"]) == (INVALID, "event_id")
    kind, bad = prepare({**ROW, "value": float("nan")}, Columns())
    assert (kind, bad["field"]) == (INVALID, "value")  # refused, not read as "no value"


def test_columns_map_other_names_and_metadata() -> None:
    columns = Columns(
        entity="customer", metric_name="gb", value="size", timestamp="at", metadata=["region"]
    )
    row = {"customer": "c", "size": 1.5, "at": ROW["timestamp"], "region": np.str_("eu")}
    _, event = prepare({**row, "metadata": '{"plan": "pro"}', "JobId": float("nan")}, columns)
    assert event["metadata"] == {"plan": "pro", "region": "eu"}  # JSON text, as in a CSV
    assert event["JobId"] is None
    assert (event["CustomerEntityId"], event["metric"], event["value"]) == ("c", "gb", 1.5)
    kind, bad = prepare({**row, "metadata": "[1]"}, columns)
    assert (kind, bad["field"]) == (INVALID, "metadata")
    kind, bad = prepare({k: v for k, v in row.items() if k != "region"}, columns)
    assert (kind, bad["field"]) == (INVALID, "metadata")


def test_a_group_is_numbered_from_zero_in_its_namespace() -> None:
    _, event = prepare(ROW, Columns())
    data = content("ent_1", "api_calls", 2, ROW["timestamp"])
    ids = [e["eventId"] for e in number_group([event, event, event], "ns")]
    assert ids == [event_id(data, k, "ns") for k in range(3)]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_deliver_reports_rejected_and_invalid_and_never_uses_a_spool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "app-spool"
    monkeypatch.setenv("ENSO_SPOOL_DIR", str(spool))  # an application's spool: not ours
    monkeypatch.setenv("ENSO_API_KEY", "test-api-key")
    events = list(number_group([prepare(ROW, Columns())[1]] * 3))
    stranger = {**events[0], "CustomerEntityId": "ent_unknown", "eventId": "evt_x"}
    invalid = {"field": "row", "reason": "missing field", "row": {}}
    with FakeEnso(known_entities={"ent_1"}) as fake:
        books = deliver([invalid, *events, stranger], base_url=fake.url)
        assert len(fake.event_ids()) == 3
    assert books["rows"] == 5
    assert (books["accepted"], books["delivered"]) == (4, 3)
    assert [(r["eventId"], r["code"]) for r in books["rejected"]] == [("evt_x", 2002)]
    assert books["invalid"] == [invalid]
    assert not spool.exists()


def test_an_empty_partition_needs_no_tracker_and_an_unreachable_enso_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [k for k in os.environ if k.startswith("ENSO_")]:
        monkeypatch.delenv(name)
    # No credentials: building a tracker would raise ConfigurationError.
    assert deliver([])["accepted"] == 0
    monkeypatch.setenv("ENSO_API_KEY", "test-api-key")
    events = list(number_group([prepare(ROW, Columns())[1]]))
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(PartitionNotDelivered, match="1 of 1 events not delivered"):
        deliver(events, timeout=1.0, base_url=url)
    with pytest.raises(TypeError, match="with_event_ids"):
        deliver([ROW], timeout=1.0, base_url=url)  # a raw row has no backfill id yet
