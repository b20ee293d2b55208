"""`enso-tracker send` and `enso-tracker doctor` as subprocesses, against a FakeEnso (or a
tiny hostile server) on 127.0.0.1."""

from __future__ import annotations

import email.utils
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from enso_tracker import Spool, Tracker
from enso_tracker.testing import FakeEnso, Fault

pytestmark = pytest.mark.slow  # subprocesses or real servers: `make test`, not `make check`

SCRIPT = Path(sys.executable).with_name("enso-tracker")
LONG_KEY = "sk_live_0123456789abcdefWXYZ"


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    assert SCRIPT.exists(), "the console script comes with `pip install -e .` (make check)"
    return subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)


def cli_env(url: str, **secrets: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().endswith("_PROXY") and not k.startswith("ENSO_")
    }
    env.update({"ENSO_BASE_URL": url, "PYTHONIOENCODING": "utf-8", **secrets})
    return env


def checks(proc: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    result = json.loads(proc.stdout)
    return {c["name"]: c for c in result["checks"]}


@pytest.fixture
def private_fake() -> Iterator[FakeEnso]:
    """A FakeEnso of the test's own: its only key is ``LONG_KEY`` (the plugin's shared
    ``fake_enso`` takes ``test-api-key``, and its keys are fixed when it starts)."""
    with FakeEnso(api_keys=(LONG_KEY,), known_entities={"ent_known"}) as server:
        yield server


# ------------------------------------------------------------------------- send


def test_send_delivers_one_event_and_says_so(private_fake: FakeEnso) -> None:
    proc = run_cli(
        "send", "ent_known", "api_calls", "2.5", "--timestamp", "2026-04-01T12:00:00+02:00",
        "--metadata", '{"region": "eu"}', "--event-id", "evt_cli_1", "--json",
        env=cli_env(private_fake.url, ENSO_API_KEY=LONG_KEY),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "eventId": "evt_cli_1",
        "status": "delivered",
        "exit_code": 0,
    }
    event = private_fake.events["evt_cli_1"]
    assert event["value"] == 2.5
    assert event["timestamp"] == "2026-04-01T10:00:00.000Z"
    assert event["metadata"] == {"region": "eu"}


def test_send_reports_enso_refusing_the_event_with_its_code(private_fake: FakeEnso) -> None:
    proc = run_cli(
        "send", "ent_nobody", "api_calls", "1", env=cli_env(private_fake.url, ENSO_API_KEY=LONG_KEY)
    )
    assert proc.returncode == 1
    assert "rejected by Enso" in proc.stdout
    assert "code=2002" in proc.stdout
    assert private_fake.event_ids() == []
    as_json = run_cli(
        "send", "ent_nobody", "api_calls", "1", "--json",
        env=cli_env(private_fake.url, ENSO_API_KEY=LONG_KEY),
    )  # fmt: skip
    answer = json.loads(as_json.stdout)
    assert (answer["status"], answer["code"], answer["httpStatus"]) == ("rejected", 2002, 404)


def test_send_usage_errors_exit_2_and_send_nothing(private_fake: FakeEnso) -> None:
    env = cli_env(private_fake.url, ENSO_API_KEY=LONG_KEY)
    assert run_cli("send", "ent_known", "api_calls", "lots", env=env).returncode == 2
    naive = run_cli("send", "ent_known", "m", "1", "--timestamp", "2026-04-01T12:00:00", env=env)
    assert naive.returncode == 2
    assert "timestamp" in naive.stderr
    assert run_cli("send", "ent_known", "m", "1", env=cli_env(private_fake.url)).returncode == 2
    assert private_fake.requests == []


def test_send_with_refused_credentials_exits_3_without_printing_the_key(
    private_fake: FakeEnso,
) -> None:
    wrong = "sk_live_wrongwrongwrong9876"
    proc = run_cli("send", "ent_known", "m", "1", env=cli_env(private_fake.url, ENSO_API_KEY=wrong))
    assert proc.returncode == 3
    assert "credentials" in proc.stdout
    assert wrong not in proc.stdout + proc.stderr


# ----------------------------------------------------------------------- doctor


def test_doctor_on_a_healthy_enso_passes_every_check(private_fake: FakeEnso) -> None:
    proc = run_cli("doctor", "--json", env=cli_env(private_fake.url, ENSO_API_KEY=LONG_KEY))
    assert proc.returncode == 0, proc.stdout
    found = checks(proc)
    assert {"configuration", "DNS", "TCP", "credentials", "clock", "spool"} <= set(found)
    assert all(c["ok"] is not False for c in found.values())
    assert found["credentials"]["ok"] is True
    assert "2003" in found["credentials"]["detail"]
    assert "no spool configured" in found["spool"]["detail"]
    assert private_fake.event_ids() == []  # the probe billed nothing
    human = run_cli("doctor", env=cli_env(private_fake.url, ENSO_API_KEY=LONG_KEY))
    assert human.returncode == 0
    assert "✔ credentials" in human.stdout
    assert "…WXYZ" in human.stdout  # a fingerprint at most
    assert LONG_KEY not in human.stdout + human.stderr


def test_doctor_with_wrong_credentials_says_how_to_fix_them(private_fake: FakeEnso) -> None:
    wrong = "sk_live_not_the_right_one_5678"
    proc = run_cli("doctor", env=cli_env(private_fake.url, ENSO_API_KEY=wrong))
    assert proc.returncode == 1
    assert "✘ credentials: Enso refused the API key (HTTP 401)" in proc.stdout
    assert "fix: check ENSO_API_KEY" in proc.stdout
    assert wrong not in proc.stdout + proc.stderr


def test_doctor_logs_in_with_client_credentials_without_printing_the_secret() -> None:
    secret = "cs_test_super_secret_value_42"
    with FakeEnso(client_credentials={"ck_test_doctor_key_01": secret}) as server:
        good = run_cli(
            "doctor", "--json",
            env=cli_env(server.url, ENSO_CLIENT_KEY="ck_test_doctor_key_01",
                        ENSO_CLIENT_SECRET=secret),
        )  # fmt: skip
        bad = run_cli(
            "doctor",
            env=cli_env(server.url, ENSO_CLIENT_KEY="ck_test_doctor_key_01",
                        ENSO_CLIENT_SECRET="cs_test_wrong_secret_000"),
        )  # fmt: skip
    assert good.returncode == 0, good.stdout
    assert checks(good)["login"]["ok"] is True
    assert checks(good)["credentials"]["ok"] is True
    assert secret not in good.stdout + good.stderr
    assert bad.returncode == 1
    assert "✘ login: Enso refused the client credentials" in bad.stdout
    assert "cs_test_wrong_secret_000" not in bad.stdout + bad.stderr


def test_doctor_against_a_closed_port_fails_at_tcp() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        proc = run_cli(
            "doctor", "--json", env=cli_env(f"http://127.0.0.1:{port}", ENSO_API_KEY=LONG_KEY)
        )
    assert proc.returncode == 1
    found = checks(proc)
    assert found["DNS"]["ok"] is True
    assert found["TCP"]["ok"] is False
    assert "Connection refused" in found["TCP"]["detail"]
    assert found["TCP"]["fix"]
    assert found["credentials"]["ok"] is None  # not checked, not claimed good


class _SkewedHandler(BaseHTTPRequestHandler):
    """Answers like an authenticated Enso (400, code 2003), with a Date an hour behind."""

    protocol_version = "HTTP/1.1"

    def date_time_string(self, timestamp: float | None = None) -> str:
        return email.utils.formatdate(time.time() - 3600, usegmt=True)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = b'{"status":"error","errors":[{"code":2003,"message":"events array is required"}]}'
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_doctor_notices_a_skewed_clock() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SkewedHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        proc = run_cli("doctor", "--json", env=cli_env(url, ENSO_API_KEY=LONG_KEY))
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert proc.returncode == 1
    found = checks(proc)
    assert found["credentials"]["ok"] is True
    assert found["clock"]["ok"] is False
    assert "ahead of" in found["clock"]["detail"]
    assert "NTP" in found["clock"]["fix"]


def test_doctor_without_credentials_still_checks_the_network(private_fake: FakeEnso) -> None:
    proc = run_cli("doctor", "--json", env=cli_env(private_fake.url))
    assert proc.returncode == 1
    found = checks(proc)
    assert found["configuration"]["ok"] is False
    assert "ENSO_API_KEY" in found["configuration"]["fix"]
    assert found["TCP"]["ok"] is True
    assert found["credentials"]["ok"] is None


def stranded_spool(spool_dir: Path) -> list[str]:
    """Two events left in a spool by a tracker nobody answered (a closed port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        tracker = Tracker(
            api_key=LONG_KEY, base_url=url, spool_dir=str(spool_dir), handle_sigterm=False
        )
        ids = [tracker.track("ent_known", "api_calls", i) for i in (1, 2)]
        tracker.shutdown(0.5)
    assert tracker.stats().left_in_spool == 2
    return [i for i in ids if i is not None]


def test_send_judges_its_own_event_and_leaves_an_apps_spool_alone(
    private_fake: FakeEnso, tmp_path: Path
) -> None:
    """#17 finding 4: leftovers in ENSO_SPOOL_DIR were adopted, delivered, and the run said
    "delivered" for an event Enso had rejected."""
    spool_dir = tmp_path / "app-spool"
    leftovers = stranded_spool(spool_dir)
    env = cli_env(private_fake.url, ENSO_API_KEY=LONG_KEY, ENSO_SPOOL_DIR=str(spool_dir))
    proc = run_cli("send", "ent_nobody", "api_calls", "1", "--event-id", "evt_mine", env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "delivered" not in proc.stdout
    assert "rejected by Enso: Customer entity not found" in proc.stdout
    assert "code=2002" in proc.stdout
    assert "evt_mine" in proc.stdout
    assert batch_ids(private_fake) == [["evt_mine"]]  # nothing of the app's was sent
    assert not set(leftovers) & set(private_fake.event_ids())
    assert Spool(str(spool_dir)).status().events == 2  # the leftovers, untouched
    delivered = run_cli("send", "ent_known", "api_calls", "1", "--json", env=env)
    assert delivered.returncode == 0
    assert json.loads(delivered.stdout)["status"] == "delivered"
    assert Spool(str(spool_dir)).status().events == 2


def batch_ids(fake: FakeEnso) -> list[list[str]]:
    return [[e["eventId"] for e in r.json()["events"]] for r in fake.batch_requests()]


def test_send_retries_with_the_same_event_id_and_reports_delivered(private_fake: FakeEnso) -> None:
    private_fake.script(Fault(status=503, retry_after="0"), Fault(store_then_drop=True))
    proc = run_cli(
        "send", "ent_known", "api_calls", "1", "--event-id", "evt_again", "--json",
        env=cli_env(private_fake.url, ENSO_API_KEY=LONG_KEY),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert batch_ids(private_fake) == [["evt_again"]] * 3
    assert private_fake.event_ids() == ["evt_again"]


def test_send_that_runs_out_of_time_exits_3_and_says_how_to_resend(private_fake: FakeEnso) -> None:
    private_fake.hang(None)
    try:
        proc = run_cli(
            "send", "ent_known", "api_calls", "1", "--timeout", "1", "--event-id", "evt_t",
            env=cli_env(private_fake.url, ENSO_API_KEY=LONG_KEY),
        )  # fmt: skip
    finally:
        private_fake.release()
    assert proc.returncode == 3
    assert "not delivered: ReadTimeout" in proc.stdout
    assert "--event-id evt_t" in proc.stdout


def test_send_with_an_unusable_key_is_a_usage_error_without_a_traceback(
    private_fake: FakeEnso,
) -> None:
    proc = run_cli(
        "send", "ent_known", "m", "1", env=cli_env(private_fake.url, ENSO_API_KEY="sk_ключ")
    )
    assert proc.returncode == 2
    assert "ENSO_API_KEY holds a non-ASCII character at index 3" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "ключ" not in proc.stdout + proc.stderr
    assert private_fake.requests == []


def test_doctor_takes_a_key_ending_in_a_newline_as_the_tracker_does(private_fake: FakeEnso) -> None:
    """#17 finding 7: doctor had its own login/POST code and refused what the tracker took."""
    env = cli_env(private_fake.url, ENSO_API_KEY=LONG_KEY + "\n")  # as read from a secret file
    doctor = run_cli("doctor", "--json", env=env)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    found = checks(doctor)
    assert found["credentials"]["ok"] is True
    assert "\n" not in found["configuration"]["detail"]
    assert "…WXYZ (28 chars)" in found["configuration"]["detail"]
    send = run_cli("send", "ent_known", "api_calls", "1", env=env)
    assert send.returncode == 0, send.stdout + send.stderr
    auth = {r.headers["authorization"] for r in private_fake.batch_requests()}
    assert auth == {f"Bearer {LONG_KEY}"}  # doctor and tracker sent the same header


def test_doctor_with_a_non_ascii_key_says_so_without_a_traceback(private_fake: FakeEnso) -> None:
    key = "sk_live_0123456789abcdé"
    proc = run_cli("doctor", env=cli_env(private_fake.url, ENSO_API_KEY=key))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "✘ configuration:" in proc.stdout
    assert "ENSO_API_KEY holds a non-ASCII character at index 22" in proc.stdout
    assert "- credentials: not checked: no usable credentials" in proc.stdout
    assert key not in proc.stdout + proc.stderr
    assert private_fake.requests == []


def test_doctor_uses_the_trackers_login_for_client_credentials_with_newlines() -> None:
    with FakeEnso(client_credentials={"ck_test_doctor_key_01": "cs_secret_value_0042"}) as server:
        proc = run_cli(
            "doctor", "--json",
            env=cli_env(server.url, ENSO_CLIENT_KEY="ck_test_doctor_key_01\n",
                        ENSO_CLIENT_SECRET="cs_secret_value_0042\r\n"),
        )  # fmt: skip
        logins = server.login_requests()
    assert proc.returncode == 0, proc.stdout
    found = checks(proc)
    assert found["login"]["ok"] is True
    assert "token valid for 3600 s" in found["login"]["detail"]
    assert [r.json()["clientSecret"] for r in logins] == ["cs_secret_value_0042"]


def test_doctor_when_enso_hangs_fails_within_its_timeout(private_fake: FakeEnso) -> None:
    private_fake.hang(None)
    try:
        proc = run_cli("doctor", "--json", "--timeout", "1", env=cli_env(private_fake.url,
                       ENSO_API_KEY=LONG_KEY))  # fmt: skip
    finally:
        private_fake.release()
    assert proc.returncode == 1
    found = checks(proc)
    assert found["TCP"]["ok"] is True
    assert found["credentials"]["ok"] is False
    assert found["credentials"]["detail"] == "request failed: ReadTimeout"
