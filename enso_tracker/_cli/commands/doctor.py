"""``enso-tracker doctor``: is this machine set up to deliver to Enso? Each check says
what it found and, when it fails, what to do. No usage is ever sent, no secret printed.

Credentials are read and checked by the tracker's own rules (``_http.auth.make_credentials``)
and probed with the tracker's own login and sender (``_http.probe.probe``): what doctor
accepts, the tracker accepts. DNS, TCP and TLS are diagnosed with plain sockets first, so
a failure says which step broke."""

from __future__ import annotations

import argparse
import email.utils
import os
import socket
import ssl
import sys
import time
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

import httpx

from ..._config import Config
from ..._errors import ConfigurationError, describe_exception
from ..._http.auth import ApiKey, ClientCredentials, Credentials, as_read, make_credentials
from ..._http.probe import ProbeResult, probe, probe_compression
from ..._http.proxy import environment_proxy
from .._args import Connection, connection, connection_options_of, in_env_terms
from .._output import EXIT_INCOMPLETE, EXIT_OK, fingerprint, marks, print_json
from .spool.status import spool_check

NAME = "doctor"
HELP = "check configuration, network, TLS, credentials and clock against Enso"
#: Beyond this, event timestamps (which default to this clock) and token renewal suffer.
MAX_SKEW = 30.0


def configure(parser: argparse.ArgumentParser) -> None:
    """examples:
      enso-tracker doctor
      ENSO_BASE_URL=https://api.staging.example enso-tracker doctor --json

    The credential probe sends an empty batch {"events": []} with the tracker's own login
    and sender: Enso answers code 2003 once the credentials are accepted (401 when not).
    No usage is sent."""
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
        self.credentials: Credentials | None = None
        self.answered = False  # whether the probe got an HTTP answer (with its Date)

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
        creds = self.credentials  # as the tracker reads them (``_configuration``)
        if isinstance(creds, ApiKey | ClientCredentials):
            return creds.spool_identity(self.conn.base_url)
        return None

    def _configuration(self) -> tuple[bool, bool]:
        conn = self.conn
        try:
            Config(base_url=conn.base_url)
        except ConfigurationError as exc:
            url_ok = self.add("base URL", False, str(exc), "fix --base-url or ENSO_BASE_URL")
        else:
            url_ok = self.add("base URL", None, f"{conn.base_url} (from {conn.base_url_from})")
        # Shown as the tracker reads them: surrounding whitespace (a file's newline) ignored.
        found = (
            ", ".join(f"{k}={fingerprint(as_read(v))}" for k, v in conn.secrets.items()) or "none"
        )
        mode = conn.mode
        if mode == "client_credentials" and len(conn.secrets) != 2:
            mode = "incomplete"
        fix = {
            "none": "set ENSO_API_KEY, or ENSO_CLIENT_KEY and ENSO_CLIENT_SECRET",
            "conflict": "set either ENSO_API_KEY or ENSO_CLIENT_KEY + ENSO_CLIENT_SECRET",
            "incomplete": "set both ENSO_CLIENT_KEY and ENSO_CLIENT_SECRET",
        }.get(mode)
        label = {"api_key": "API key", "client_credentials": "client credentials"}.get(mode, mode)
        problem = None
        if fix is None:
            try:
                options = connection_options_of(conn)
                self.credentials = make_credentials(
                    options.get("api_key"),
                    options.get("client_key"),
                    options.get("client_secret"),
                    conn.base_url,
                )
            except ConfigurationError as exc:  # the tracker's own rules, e.g. non-ASCII
                problem = in_env_terms(exc)
                fix = "copy the credentials again from the Enso dashboard: ASCII, no spaces"
        detail = f"{label} from the environment: {found}"
        creds_ok = self.add(
            "configuration", fix is None, f"{detail}; {problem}" if problem else detail, fix
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
        """The tracker's own login and sender, on an empty batch (``_http.probe``)."""
        conn = self.conn
        assert self.credentials is not None  # checked by _configuration
        try:
            config = Config(base_url=conn.base_url, timeout=self.timeout)
        except ConfigurationError as exc:
            self.add("credentials", None, f"not checked: {exc}")
            return
        result = probe(config, self.credentials, self.timeout)
        self.round_trip = (result.sent_at, result.received_at)
        self.date_header = result.date
        self.answered = result.status is not None
        if conn.mode == "client_credentials" and not self._login(result):
            self.add("credentials", None, "not checked: the login failed")
            return
        self._probe_verdict(result)
        if result.ok:
            self._compression(config)

    def _compression(self, config: Config) -> None:
        """Whether Enso reads gzip bodies (``compression="gzip"`` is opt-in)."""
        assert self.credentials is not None
        kind, message = probe_compression(config, self.credentials, self.timeout)
        if kind == "accepted":
            self.add("compression", True, f"{message}: compression='gzip' may be turned on")
        elif kind == "refused":
            self.add(
                "compression",
                None,
                f"{message}: leave compression off (a tracker with it on falls back to "
                "plain bodies on the first refusal)",
            )
        else:
            self.add("compression", None, f"not known: {message}")

    def _login(self, result: ProbeResult) -> bool:
        if result.logins:
            life = result.token_lifetime
            detail = f"token valid for {life:.0f} s" if life is not None else "no exp claim"
            return self.add(
                "login", True, f"system-login accepted the client credentials ({detail})"
            )
        if not result.login_failed:
            return self.add("login", None, "not attempted: " + result.message)
        fix = {
            "login_refused": "check ENSO_CLIENT_KEY and ENSO_CLIENT_SECRET in the Enso dashboard",
            "unreachable": "check the network path to Enso (proxy, firewall)",
        }.get(result.kind, "check the base URL: it should be Enso's API; try again later if 5xx")
        return self.add("login", False, result.message, fix)

    def _probe_verdict(self, result: ProbeResult) -> None:
        probe_text = "an empty batch (no usage sent)"
        kind, status, message = result.kind, result.status, result.message
        if kind == "accepted":
            answer = "code 2003" if status == 400 else f"HTTP {status}"
            self.add("credentials", True, f"accepted: Enso answered {probe_text} with {answer}")
        elif kind == "unauthorized":
            what = "API key" if self.conn.mode == "api_key" else "token"
            self.add(
                "credentials",
                False,
                f"Enso refused the {what} (HTTP {status or 401}) for {probe_text}",
                "check ENSO_API_KEY (Enso dashboard -> API token)"
                if self.conn.mode == "api_key"
                else "check the client credentials",
            )
        elif kind == "forbidden":
            self.add(
                "credentials",
                False,
                f"authenticated, but not allowed: {message}",
                "give this SystemUser EventService:createEvent and MeterService:createUsageByMeter",
            )
        elif kind == "redirected":
            self.add("credentials", False, f"redirected: {message}", "fix the base URL")
        elif kind == "unreachable":
            self.add(
                "credentials",
                False,
                f"request failed: {message}",
                "check the network path to Enso (proxy, firewall)",
            )
        else:
            self.add(
                "credentials",
                False,
                f"unexpected answer to {probe_text}: {message}",
                "is the base URL Enso's API? try again later if 5xx",
            )

    def _clock(self) -> None:
        if not self.date_header:
            what = "Enso's answer had no Date header" if self.answered else "no answer from Enso"
            self.add("clock", None, f"{what}: skew unknown")
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
    proxy = environment_proxy(url)
    if proxy is None:
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
