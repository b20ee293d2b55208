"""`enso-tracker fake-server`: a FakeEnso in the foreground, driven as a user (or another
language's test suite) would: start it, read its URL, send to it with the CLI, stop it."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocesses, servers or frameworks: `make test`

SCRIPT = Path(sys.executable).with_name("enso-tracker")


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().endswith("_PROXY") and not k.startswith("ENSO_")
    }
    env.update({"PYTHONIOENCODING": "utf-8", **extra})
    return env


def first_line(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    """The server's first stdout line, waited for with a deadline (never a hang)."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        assert selector.select(timeout), "fake-server printed nothing in time"
    return proc.stdout.readline()


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30.0)
    return proc.returncode, err


@pytest.fixture
def servers() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:  # whatever a failed test left running
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def start(servers: list[subprocess.Popen[str]], *args: str) -> subprocess.Popen[str]:
    assert SCRIPT.exists(), "the console script is installed by `pip install -e .[dev]`"
    proc = subprocess.Popen(
        [str(SCRIPT), "fake-server", *args],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    servers.append(proc)
    return proc


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)


def test_start_read_the_url_send_to_it_and_stop(servers: list[subprocess.Popen[str]]) -> None:
    proc = start(servers, "--entity", "ent_1", "--json")
    info = json.loads(first_line(proc))
    assert info["url"].startswith("http://127.0.0.1:")
    assert (info["api_key"], info["known_entities"]) == ("test-api-key", ["ent_1"])
    env = clean_env(ENSO_BASE_URL=info["url"], ENSO_API_KEY=info["api_key"])
    ok = cli("send", "ent_1", "api_calls", "1", "--event-id", "evt_fs_1", env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    again = cli("send", "ent_1", "api_calls", "1", "--event-id", "evt_fs_1", env=env)
    assert again.returncode == 0  # a duplicate: counted once
    refused = cli("send", "ent_2", "api_calls", "1", env=env)
    assert refused.returncode == 1
    assert "code=2002" in refused.stdout
    doctor = cli("doctor", env=env)
    assert doctor.returncode == 0, doctor.stdout
    code, err = stop(proc)
    assert code == 0, err
    assert "stopped; 1 events stored, 1 duplicates" in err
    with socket.socket() as s:  # the port is closed once it has stopped
        assert s.connect_ex(("127.0.0.1", int(info["url"].rsplit(":", 1)[1]))) != 0


def test_the_plain_first_line_is_the_two_variables_a_client_needs(
    servers: list[subprocess.Popen[str]],
) -> None:
    proc = start(servers, "--api-key", "sk_fake_key_42")
    line = first_line(proc)
    variables = dict(part.split("=", 1) for part in line.split())
    assert set(variables) == {"ENSO_BASE_URL", "ENSO_API_KEY"}
    assert variables["ENSO_API_KEY"] == "sk_fake_key_42"
    sent = cli("send", "anyone", "m", "2", "--json", env=clean_env(**variables))
    assert json.loads(sent.stdout)["status"] == "delivered"
    code, err = stop(proc, signal.SIGINT)
    assert code == 0, err
    assert "Traceback" not in err


def test_faults_fail_requests_with_the_status_asked(servers: list[subprocess.Popen[str]]) -> None:
    proc = start(servers, "--fail-rate", "1", "--status", "502")
    env = clean_env(ENSO_API_KEY="test-api-key", ENSO_BASE_URL=first_line(proc).split()[0][14:])
    started = time.monotonic()
    sent = cli("send", "ent_1", "m", "1", "--timeout", "2", env=env)
    assert time.monotonic() - started < 30.0
    assert sent.returncode == 3
    assert "HTTP 502" in sent.stdout
    code, err = stop(proc)
    assert code == 0
    assert "0 events stored" in err


def test_client_credentials_and_usage_errors(servers: list[subprocess.Popen[str]]) -> None:
    proc = start(servers, "--client", "ck_fs:cs_fs_secret", "--json")
    url = json.loads(first_line(proc))["url"]
    env = clean_env(ENSO_BASE_URL=url, ENSO_CLIENT_KEY="ck_fs", ENSO_CLIENT_SECRET="cs_fs_secret")
    assert cli("send", "ent_1", "m", "1", env=env).returncode == 0
    port = url.rsplit(":", 1)[1]
    taken = cli("fake-server", "--port", port, env=clean_env())
    assert taken.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in taken.stderr
    assert cli("fake-server", "--fail-rate", "2", env=clean_env()).returncode == 2
    assert cli("fake-server", "--status", "200", env=clean_env()).returncode == 2
    assert stop(proc)[0] == 0


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_an_ipv6_host_gets_a_bracketed_url(servers: list[subprocess.Popen[str]]) -> None:
    proc = start(servers, "--host", "::1", "--json")
    url = json.loads(first_line(proc))["url"]
    assert url.startswith("http://[::1]:")
    sent = cli(
        "send", "ent_1", "m", "1", env=clean_env(ENSO_BASE_URL=url, ENSO_API_KEY="test-api-key")
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert stop(proc)[0] == 0
