"""``enso_tracker.send()`` / ``send_events()``: a few events sent now, each judged by its
own eventId, against a FakeEnso serving real HTTP on 127.0.0.1."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import enso_tracker
from enso_tracker import (
    ConfigurationError,
    InvalidEventError,
    InvalidEventTypeError,
    SendResult,
    Tracker,
    send,
    send_events,
)
from enso_tracker.testing import FakeEnso, Fault

KEY = "test-api-key"


@pytest.fixture
def fake_enso(fake_enso: FakeEnso) -> FakeEnso:
    """The plugin's ``fake_enso``, knowing only ``ent_1`` and ``ent_2`` (reset after the test)."""
    fake_enso.known_entities = {"ent_1", "ent_2"}
    return fake_enso


def batch_ids(fake: FakeEnso) -> list[list[str]]:
    return [[e["eventId"] for e in r.json()["events"]] for r in fake.batch_requests()]


def test_each_event_is_judged_by_its_own_event_id(fake_enso: FakeEnso) -> None:
    results = send_events(
        [
            {"entity": "ent_1", "metric": "api_calls", "value": 1},
            {"entity": "ent_nobody", "metric": "api_calls", "value": 2, "event_id": "evt_bad"},
            {"entity": "ent_2", "metric": "gb", "value": Decimal("2.5"), "event_id": "evt_ok"},
        ],
        api_key=KEY,
        base_url=fake_enso.url,
    )
    assert [r.state for r in results] == ["delivered", "rejected", "delivered"]
    fresh, bad, ok = results
    assert fresh.event_id.startswith("evt_")
    assert fresh.delivered
    assert (bad.event_id, bad.code, bad.status) == ("evt_bad", 2002, 404)
    assert bad.message == "Customer entity not found"
    assert ok.event_id == "evt_ok"
    assert sorted(fake_enso.event_ids()) == sorted([fresh.event_id, "evt_ok"])
    assert fake_enso.events["evt_ok"]["value"] == 2.5
    assert len(fake_enso.batch_requests()) == 1  # a few events: one request


def test_send_one_event_with_track_arguments(fake_enso: FakeEnso) -> None:
    result = send(
        "ent_1", "api_calls", 7, timestamp="2026-04-01T12:00:00+02:00",
        metadata={"region": "eu"}, event_id="evt_one", job_id="job_1",
        api_key=KEY, base_url=fake_enso.url,
    )  # fmt: skip
    assert result == SendResult(event_id="evt_one", state="delivered")
    stored = fake_enso.events["evt_one"]
    assert stored["timestamp"] == "2026-04-01T10:00:00.000Z"
    assert (stored["metadata"], stored["JobId"]) == ({"region": "eu"}, "job_1")


def test_retryable_failures_are_retried_with_the_same_event_ids(fake_enso: FakeEnso) -> None:
    fake_enso.script(Fault(status=503, retry_after="0"), Fault(store_then_drop=True))
    result = send(
        "ent_1", "m", 1, event_id="evt_r", api_key=KEY, base_url=fake_enso.url, timeout=20
    )
    assert result.delivered
    assert batch_ids(fake_enso) == [["evt_r"]] * 3  # 503, answer lost after storing, answered
    assert fake_enso.event_ids() == ["evt_r"]  # stored once: the resend was a duplicate
    assert fake_enso.duplicates == {"evt_r": 1}


def test_a_record_failing_for_now_is_resent_alone(fake_enso: FakeEnso) -> None:
    fake_enso.fail_event_ids(["evt_b"], status=503, times=1)
    results = send_events(
        [
            {"entity": "ent_1", "metric": "m", "value": 1, "event_id": "evt_a"},
            {"entity": "ent_1", "metric": "m", "value": 2, "event_id": "evt_b"},
        ],
        api_key=KEY,
        base_url=fake_enso.url,
        backoff_base=0.01,
    )
    assert [r.state for r in results] == ["delivered", "delivered"]
    assert batch_ids(fake_enso) == [["evt_a", "evt_b"], ["evt_b"]]


def test_an_answer_that_does_not_account_for_the_batch_is_not_a_delivery(
    fake_enso: FakeEnso,
) -> None:
    lying = b'{"status":"success","data":{"summary":{"success":5,"failed":0,"total":5}}}'
    fake_enso.script(Fault(body=lying))
    result = send("ent_1", "m", 1, event_id="evt_x", api_key=KEY, base_url=fake_enso.url)
    assert result.delivered
    assert len(fake_enso.batch_requests()) == 2  # resent after the answer that vouched for nothing


def test_the_deadline_bounds_the_call_and_says_undelivered(fake_enso: FakeEnso) -> None:
    fake_enso.hang(None)
    started = time.monotonic()
    result = send(
        "ent_1", "m", 1, event_id="evt_h", api_key=KEY, base_url=fake_enso.url, timeout=1.0
    )
    elapsed = time.monotonic() - started
    fake_enso.release()
    assert result.state == "undelivered"
    assert result.message == "ReadTimeout"
    assert elapsed < 10.0  # generous: the deadline is 1 s on a loaded machine


def test_a_retry_after_beyond_the_deadline_ends_the_call_now(fake_enso: FakeEnso) -> None:
    fake_enso.script(Fault(status=429, retry_after="120"))
    started = time.monotonic()
    result = send("ent_1", "m", 1, api_key=KEY, base_url=fake_enso.url, timeout=30.0)
    assert time.monotonic() - started < 20.0  # not 30 s of waiting for nothing
    assert (result.state, result.status) == ("undelivered", 429)
    assert len(fake_enso.batch_requests()) == 1


def test_refused_credentials_stop_at_once(fake_enso: FakeEnso) -> None:
    results = send_events(
        [{"entity": "ent_1", "metric": "m", "value": i} for i in range(3)],
        api_key="sk_wrong_key_123456",
        base_url=fake_enso.url,
        max_batch_size=1,
    )
    assert {r.state for r in results} == {"unauthorized"}
    assert results[0].status == 401
    assert "sk_wrong_key_123456" not in repr(results)
    assert len(fake_enso.batch_requests()) == 1  # the other batches would be refused too


def test_client_credentials_log_in_first() -> None:
    with FakeEnso(client_credentials={"ck_1": "cs_secret_1"}) as server:
        ok = send("ent_1", "m", 1, client_key="ck_1", client_secret="cs_secret_1",
                  base_url=server.url)  # fmt: skip
        refused = send("ent_1", "m", 1, client_key="ck_1", client_secret="cs_wrong",
                       base_url=server.url)  # fmt: skip
        assert ok.delivered
        assert (refused.state, refused.status) == ("unauthorized", 401)
        assert server.login_count == 2
        assert len(server.batch_requests()) == 1


def test_too_large_alone_is_rejected_and_a_batch_is_split(fake_enso: FakeEnso) -> None:
    events = [{"entity": "ent_1", "metric": "m", "value": i} for i in range(4)]
    one_size = len(b'{"events":[]}') + 200
    fake_enso.max_body_bytes = 2 * one_size
    results = send_events(events, api_key=KEY, base_url=fake_enso.url)
    assert all(r.delivered for r in results)
    assert len(fake_enso.event_ids()) == 4
    statuses = [r.status for r in fake_enso.batch_requests()]
    assert statuses[0] == 413
    assert statuses[-1] == 200
    fake_enso.max_body_bytes = 20
    alone = send("ent_1", "m", 1, api_key=KEY, base_url=fake_enso.url)
    assert (alone.state, alone.status) == ("rejected", 413)


BAD_EVENTS: list[dict[str, Any]] = [
    {"entity": "", "metric": "m", "value": 1},
    {"entity": "e", "metric": 3, "value": 1},
    {"entity": "e", "metric": "m", "value": True},
    {"entity": "e", "metric": "m", "value": float("nan")},
    {"entity": "e", "metric": "m", "value": 2**60},
    {"entity": "e", "metric": "m", "value": Decimal("0.1234567890123456789")},
    {"entity": "e", "metric": "m", "value": 1, "timestamp": "2026-04-01T12:00:00"},
    {"entity": "e", "metric": "m", "value": 1, "metadata": {"x": float("inf")}},
    {"entity": "e", "metric": "m", "value": 1, "metadata": [1]},
    {"entity": "e", "metric": "m", "value": 1, "metadata": {"blob": "x: " * 3000}},
    {"entity": "e", "metric": "m", "value": 1, "event_id": "has space"},
    {"entity": "e", "metric": "m", "value": 1, "job_id": ""},
]


@pytest.mark.parametrize("event", BAD_EVENTS)
def test_validation_is_track_s_own(fake_enso: FakeEnso, event: dict[str, Any]) -> None:
    with (
        Tracker(api_key=KEY, base_url=fake_enso.url) as tracker,
        pytest.raises(InvalidEventError) as by_track,
    ):
        tracker.track(**event)
    with pytest.raises(InvalidEventError) as by_send:
        send(**event, api_key=KEY, base_url=fake_enso.url)
    assert type(by_send.value) is type(by_track.value)
    assert str(by_send.value) == str(by_track.value)
    with pytest.raises(type(by_track.value)) as in_list:
        send_events([{"entity": "ent_1", "metric": "m", "value": 1}, event],
                    api_key=KEY, base_url=fake_enso.url)  # fmt: skip
    assert in_list.value.field == f"events[1].{by_track.value.field}"
    assert str(in_list.value) == "events[1]." + str(by_track.value)  # same words, located
    assert fake_enso.requests == []  # nothing sent, not even the good event


def test_malformed_calls_are_refused_before_sending(fake_enso: FakeEnso) -> None:
    ok = {"entity": "ent_1", "metric": "m", "value": 1}
    with pytest.raises(InvalidEventTypeError, match="unknown key"):
        send_events([{**ok, "CustomerEntityId": "x"}], api_key=KEY, base_url=fake_enso.url)
    with pytest.raises(InvalidEventTypeError, match="value"):
        send_events([{"entity": "ent_1", "metric": "m"}], api_key=KEY, base_url=fake_enso.url)
    with pytest.raises(InvalidEventError, match="twice"):
        send_events([{**ok, "event_id": "a"}, {**ok, "event_id": "a"}], api_key=KEY,
                    base_url=fake_enso.url)  # fmt: skip
    with pytest.raises(InvalidEventError, match="empty"):
        send_events([], api_key=KEY, base_url=fake_enso.url)
    with pytest.raises(InvalidEventTypeError, match=r"send\(\)"):
        send_events(ok, api_key=KEY, base_url=fake_enso.url)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="spool"):
        send_events([ok], api_key=KEY, base_url=fake_enso.url, spool_dir="/tmp/x")
    with pytest.raises(ConfigurationError, match="timeout"):
        send_events([ok], api_key=KEY, base_url=fake_enso.url, timeout=0)
    with pytest.raises(ConfigurationError, match="timeout"):
        send_events([ok], api_key=KEY, base_url=fake_enso.url, timeout=float("inf"))
    with pytest.raises(ConfigurationError, match="non-ASCII"):
        send_events([ok], api_key="sk_clé", base_url=fake_enso.url)
    assert fake_enso.requests == []


def test_credentials_from_the_environment_and_never_a_spool(
    fake_enso: FakeEnso, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setenv("ENSO_API_KEY", KEY + "\n")  # as read from a secret file: stripped
    monkeypatch.setenv("ENSO_BASE_URL", fake_enso.url)
    monkeypatch.setenv("ENSO_SPOOL_DIR", str(spool))
    result = enso_tracker.send("ent_1", "m", 1)
    assert result.delivered
    assert list(spool.iterdir()) == []  # nothing written, nothing adopted
    monkeypatch.delenv("ENSO_API_KEY")
    with pytest.raises(ConfigurationError, match="no credentials"):
        enso_tracker.send("ent_1", "m", 1)


def test_more_events_than_a_batch_go_in_several_requests(fake_enso: FakeEnso) -> None:
    events = [{"entity": "ent_1", "metric": "m", "value": i, "event_id": f"e{i}"} for i in range(5)]
    results = send_events(events, api_key=KEY, base_url=fake_enso.url, max_batch_size=2)
    assert [r.event_id for r in results] == [f"e{i}" for i in range(5)]  # the order given
    assert all(r.delivered for r in results)
    assert batch_ids(fake_enso) == [["e0", "e1"], ["e2", "e3"], ["e4"]]
    with pytest.raises(InvalidEventError, match="more than 10000"):
        send_events([events[0]] * 10_001, api_key=KEY, base_url=fake_enso.url)
