"""``enso-tracker doctor``: is this machine set up to deliver to Enso? Each check says
what it found and, when it fails, what to do. No usage is ever sent, no secret printed."""

from __future__ import annotations

import argparse
import email.utils
import os
import re
import socket
import ssl
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec

from .._auth import ApiKey, ClientCredentials, jwt_lifetime, make_credentials
from .._config import Config
from .._errors import ConfigurationError, describe_exception
from .._sender import USER_AGENT
from .._wire import parse_error_message
from ._args import Connection, connection
from ._cmd_spool import spool_check
from ._output import EXIT_INCOMPLETE, EXIT_OK, fingerprint, marks, print_json

NAME = "doctor"
HELP = "check configuration, network, TLS, credentials and clock against Enso"
#: Beyond this, event timestamps (which default to this clock) and token renewal suffer.
MAX_SKEW = 30.0


def configure(parser: argparse.ArgumentParser) -> None:
    """examples:
      enso-tracker doctor
      ENSO_BASE_URL=https://api.staging.example enso-tracker doctor --json

    The credential probe sends an empty batch {"events": []}: Enso answers code 2003 once
    the credentials are accepted (401 when not). No usage is sent."""
    parser.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS", help="per network step"
    )


@dataclass
class Check:
    name: str
    ok: bool | None  # None: information, or not checked because an earlier step failed
    detail: str
    fix: str | None = None


class Doctor:
    def __init__(self, conn: Connection, timeout: float) -> None:
        self.conn = conn
        self.timeout = timeout
        self.checks: list[Check] = []
        self.date_header: str | None = None
        self.round_trip: tuple[float, float] = (0.0, 0.0)

    def add(self, name: str, ok: bool | None, detail: str, fix: str | None = None) -> bool:
        self.checks.append(Check(name, ok, detail, fix if ok is False else None))
        return ok is not False

    def run(self) -> None:
        self._enso()
        self._spool()

    def _enso(self) -> None:
        conn = self.conn
        url_ok, creds_ok = self._configuration()
        if not url_ok:
            return
        parts = urlsplit(conn.base_url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        proxy = _proxy_for(conn.base_url)
        self.add("proxy", None, f"via {proxy}" if proxy else "none: direct connection")
        if proxy:
            target = urlsplit(proxy)
            host, port = target.hostname or "", target.port or 80
        if not self._network(host, port, tls=parts.scheme == "https", proxy=proxy is not None):
            self.add("credentials", None, "not checked: a network step above failed")
        elif not creds_ok:
            self.add("credentials", None, "not checked: no usable credentials")
        else:
            self._credentials()
            self._clock()

    def _spool(self) -> None:
        path = os.environ.get("ENSO_SPOOL_DIR")
        if not path:
            self.add("spool", None, "no spool configured (events live in memory until delivered)")
            return
        self.add("spool", *spool_check(path, identity=self._identity()))

    def _identity(self) -> str | None:
        """The spool identity of the configured destination and credentials, or None."""
        conn, env = self.conn, self.conn.secrets
        try:
            if conn.mode == "api_key":
                creds = make_credentials(env["ENSO_API_KEY"], None, None, conn.base_url)
            elif conn.mode == "client_credentials":
                key, secret = env.get("ENSO_CLIENT_KEY"), env.get("ENSO_CLIENT_SECRET")
                creds = make_credentials(None, key, secret, conn.base_url)
            else:
                return None
        except ConfigurationError:
            return None
        if isinstance(creds, ApiKey | ClientCredentials):
            return creds.spool_identity(conn.base_url)
        return None

    def _configuration(self) -> tuple[bool, bool]:
        conn = self.conn
        try:
            Config(base_url=conn.base_url)
        except ConfigurationError as exc:
            url_ok = self.add("base URL", False, str(exc), "fix --base-url or ENSO_BASE_URL")
        else:
            url_ok = self.add("base URL", None, f"{conn.base_url} (from {conn.base_url_from})")
        found = ", ".join(f"{k}={fingerprint(v)}" for k, v in conn.secrets.items()) or "none"
        mode = conn.mode
        if mode == "client_credentials" and len(conn.secrets) != 2:
            mode = "incomplete"
        fix = {
            "none": "set ENSO_API_KEY, or ENSO_CLIENT_KEY and ENSO_CLIENT_SECRET",
            "conflict": "set either ENSO_API_KEY or ENSO_CLIENT_KEY + ENSO_CLIENT_SECRET",
            "incomplete": "set both ENSO_CLIENT_KEY and ENSO_CLIENT_SECRET",
        }.get(mode)
        label = {"api_key": "API key", "client_credentials": "client credentials"}.get(mode, mode)
        creds_ok = self.add(
            "configuration", fix is None, f"{label} from the environment: {found}", fix
        )
        return url_ok, creds_ok

    def _network(self, host: str, port: int, *, tls: bool, proxy: bool) -> bool:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            return self.add(
                "DNS",
                False,
                f"cannot resolve {host}: {describe_exception(exc)}",
                "check the host name in --base-url / ENSO_BASE_URL, or this machine's DNS",
            )
        addresses = sorted({str(info[4][0]) for info in infos})
        self.add("DNS", True, f"{host} -> {', '.join(addresses[:4])}")
        started = time.monotonic()
        try:
            sock = socket.create_connection((host, port), timeout=self.timeout)
        except OSError as exc:
            return self.add(
                "TCP",
                False,
                f"cannot connect to {host}:{port}: {describe_exception(exc)}",
                "check that Enso is reachable from here (firewall, VPN, HTTPS_PROXY), "
                "and the port in the base URL",
            )
        with sock:
            self.add("TCP", True, f"connected to {host}:{port} in {_ms(started)}")
            if proxy:
                self.add("TLS", None, "through the proxy: checked by the credentials probe")
                return True
            if not tls:
                self.add("TLS", None, "not used (plain http)")
                return True
            started = time.monotonic()
            try:
                context = httpx.create_ssl_context(verify=True, trust_env=True)
                with context.wrap_socket(sock, server_hostname=host) as tls_sock:
                    cert = tls_sock.getpeercert() or {}
                    version = tls_sock.version()
            except (OSError, ssl.SSLError) as exc:
                return self.add(
                    "TLS",
                    False,
                    f"handshake with {host} failed: {describe_exception(exc)}",
                    "check the base URL's scheme, host and port (https:// to a TLS port); "
                    "if a proxy inspects TLS here, point SSL_CERT_FILE at its CA bundle",
                )
        expires = cert.get("notAfter", "?")
        return self.add(
            "TLS",
            True,
            f"{version}, certificate valid until {expires}, handshake in {_ms(started)}",
        )

    def _credentials(self) -> None:
        conn = self.conn
        base = conn.base_url.rstrip("/")
        headers = {"User-Agent": USER_AGENT}
        try:
            with httpx.Client(timeout=self.timeout, follow_redirects=False) as client:
                if conn.mode == "client_credentials":
                    token = self._login(client, base)
                    if token is None:
                        return
                    authorization = f"Bearer {token}"
                else:
                    authorization = f"Bearer {conn.secrets['ENSO_API_KEY']}"
                sent = time.time()
                response = client.post(
                    base + "/events/batch",
                    content=b'{"events":[]}',
                    headers={
                        **headers,
                        "Authorization": authorization,
                        "Content-Type": "application/json",
                    },
                )
                self.round_trip = (sent, time.time())
        except httpx.HTTPError as exc:
            self.add(
                "credentials",
                False,
                f"request failed: {describe_exception(exc)}",
                "check the network path to Enso (proxy, firewall)",
            )
            return
        self.date_header = response.headers.get("Date")
        self._probe_verdict(response)

    def _login(self, client: httpx.Client, base: str) -> str | None:
        secrets = self.conn.secrets
        sent = time.time()
        response = client.post(
            base + "/auth/system-login",
            json={
                "clientKey": secrets["ENSO_CLIENT_KEY"],
                "clientSecret": secrets["ENSO_CLIENT_SECRET"],
            },
        )
        self.round_trip = (sent, time.time())
        self.date_header = response.headers.get("Date")
        if response.status_code in (400, 401, 403):
            self.add(
                "login",
                False,
                f"Enso refused the client credentials (HTTP {response.status_code})",
                "check ENSO_CLIENT_KEY and ENSO_CLIENT_SECRET in the Enso dashboard",
            )
            return None
        token: Any = None
        try:
            body = msgspec.json.decode(response.content)
            data = body.get("data") if isinstance(body, dict) else None
            token = (data or {}).get("accessToken") if isinstance(data, dict | None) else None
        except msgspec.DecodeError:
            pass
        if response.status_code not in (200, 201) or not isinstance(token, str):
            self.add(
                "login",
                False,
                f"unexpected answer: HTTP {response.status_code}: "
                f"{parse_error_message(response.content, 120)}",
                "check the base URL: it should be Enso's API",
            )
            return None
        lifetime = jwt_lifetime(token, time.time())
        life = f"token valid for {lifetime:.0f} s" if lifetime is not None else "no exp claim"
        self.add("login", True, f"system-login accepted the client credentials ({life})")
        return token

    def _probe_verdict(self, response: httpx.Response) -> None:
        status = response.status_code
        message = parse_error_message(response.content, 160)
        probe = "an empty batch (no usage sent)"
        if status == 401:
            what = "API key" if self.conn.mode == "api_key" else "token"
            self.add(
                "credentials",
                False,
                f"Enso refused the {what} (HTTP 401) for {probe}",
                "check ENSO_API_KEY (Enso dashboard -> API token)"
                if self.conn.mode == "api_key"
                else "check the client credentials",
            )
        elif status == 403:
            self.add(
                "credentials",
                False,
                f"authenticated, but not allowed (HTTP 403): {message}",
                "give this SystemUser EventService:createEvent and MeterService:createUsageByMeter",
            )
        elif 200 <= status < 300 or (status == 400 and re.search(rb"\b2003\b", response.content)):
            self.add(
                "credentials",
                True,
                f"accepted: Enso answered {probe} with "
                f"{'code 2003' if status == 400 else f'HTTP {status}'}",
            )
        elif 300 <= status < 400:
            self.add(
                "credentials",
                False,
                f"redirected (HTTP {status}) to {response.headers.get('Location', '?')}",
                "fix the base URL",
            )
        else:
            self.add(
                "credentials",
                False,
                f"unexpected answer to {probe}: HTTP {status}: {message}",
                "is the base URL Enso's API? try again later if 5xx",
            )

    def _clock(self) -> None:
        if not self.date_header:
            self.add("clock", None, "Enso's answer had no Date header: skew unknown")
            return
        try:
            server = email.utils.parsedate_to_datetime(self.date_header).timestamp()
        except (TypeError, ValueError, IndexError):
            self.add("clock", None, f"unreadable Date header {self.date_header!r}")
            return
        sent, received = self.round_trip
        # The Date header has whole seconds and was stamped somewhere in the round trip.
        skew = (sent + received) / 2 - server
        slack = (received - sent) / 2 + 1.0
        if abs(skew) <= MAX_SKEW + slack:
            self.add("clock", True, f"in step with Enso's (off by {abs(skew):.0f} s at most)")
        else:
            side = "ahead of" if skew > 0 else "behind"
            self.add(
                "clock",
                False,
                f"this machine's clock is {abs(skew):.0f} s {side} Enso's",
                "sync the clock (NTP): event timestamps default to it, and login tokens "
                "are renewed by it",
            )


def _ms(started: float) -> str:
    return f"{(time.monotonic() - started) * 1000:.0f} ms"


def _proxy_for(url: str) -> str | None:
    """The environment proxy httpx would use for ``url``, credentials blanked out."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    netloc = p.hostname or ""
    if p.port:
        netloc += f":{p.port}"
    return f"{p.scheme}://{netloc}"


def run(args: argparse.Namespace) -> int:
    doctor = Doctor(connection(args), args.timeout)
    doctor.run()
    failed = any(c.ok is False for c in doctor.checks)
    code = EXIT_INCOMPLETE if failed else EXIT_OK
    if args.json:
        print_json(
            {"ok": not failed, "checks": [asdict(c) for c in doctor.checks], "exit_code": code}
        )
        return code
    ok, bad = marks(sys.stdout)
    for c in doctor.checks:
        mark = ok if c.ok else bad if c.ok is False else "-"
        print(f"{mark} {c.name}: {c.detail}")
        if c.fix:
            print(f"    fix: {c.fix}")
    print("all checks passed" if not failed else "some checks failed: see the fixes above")
    return code
