"""The checks behind :class:`~._config.Config`: numbers, durations and URLs, each failing
with a :class:`~._errors.ConfigurationError` that names the option and its value.

Owns the validation rules that are not ``Config``'s own cross-field rules (those stay in
``Config.__post_init__``); the environment's proxies (``_http.proxy``) and the fake
server's command (``_cli.commands.fake_server``) reuse the URL ones.

Design constraints (what must never break):

* A bad value fails at construction, never on the first request: a URL that urlsplit
  or httpx would silently "fix" (tabs, newlines, spaces, a bad IDNA label) is refused.
* No secret in an error message: whatever could be ``user:password@`` in a URL is
  masked (``shown_url``), and an exception text that may quote it is not repeated.
* Plain ``http://`` is accepted only for a loopback host, unless asked for explicitly.
* Durations are float seconds, bounded: NaN, infinities and negative values fail.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

import httpx

from ._errors import ConfigurationError

__all__ = [
    "check_host",
    "check_int",
    "check_seconds",
    "check_url",
    "is_loopback_host",
    "shown_url",
]


def check_int(name: str, value: object, low: int, high: int) -> None:
    """An ``int`` (not a bool, not a float) in ``[low, high]``."""
    if type(value) is not int:
        raise ConfigurationError(f"{name}={value!r}: must be an int")
    if not low <= value <= high:
        raise ConfigurationError(f"{name}={value!r}: must be between {low} and {high}")


def check_seconds(name: str, value: object, *, positive: bool, maximum: float) -> None:
    """A number of seconds (not a bool), at least 0 (above 0 if ``positive``), at most
    ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name}={value!r}: must be a number of seconds")
    # `not value <= maximum` also catches NaN and an int too large for a float.
    if value < 0 or (positive and value == 0) or not value <= maximum:
        kind = "positive" if positive else "non-negative"
        raise ConfigurationError(
            f"{name}={value!r}: must be a {kind} number of seconds, at most {maximum:,.0f}"
        )


def is_loopback_host(host: str) -> bool:
    """``localhost`` (or a name under it) or a loopback address."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: A DNS label as written in a URL (after IDNA: ``xn--`` for non-ASCII names). Underscores
#: are tolerated (some internal names have them); ``%``, spaces, ``\\`` and the like are not.
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")
_USERINFO = re.compile(r"(//).*@")


def shown_url(url: str) -> str:
    """``url`` for an error message: whatever could be a ``user:password@`` is masked."""
    return repr(_USERINFO.sub(r"\1<redacted>@", url) if "@" in url else url)


def check_host(host: str) -> str | None:
    """What is wrong with ``host`` (ASCII, as httpx sends it), or None."""
    if not host:
        return "has no host"
    if ":" in host:  # a bracketed IPv6 literal, already checked by urlsplit
        return None
    name = host[:-1] if host.endswith(".") else host  # a fully qualified name: fine
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        return "has a malformed host name"
    if labels[-1].isdigit():  # all-numeric last label: only an IPv4 address makes sense
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            return "has a malformed IPv4 address"
    return None


def check_url(url: object, allow_insecure_http: bool) -> None:
    """``ConfigurationError`` for anything but a well-formed ``http(s)://host[:port][/path]``.

    Checked here, not on the first request: urlsplit silently drops tabs and newlines and
    httpx percent-encodes spaces, so a malformed URL would otherwise fail later (or reach
    another host) instead of at construction.
    """
    if not isinstance(url, str) or not url:
        raise ConfigurationError(f"base_url={url!r}: must be a non-empty URL string")
    url = str.__str__(url)
    shown = shown_url(url)
    for index, char in enumerate(url):
        # Whitespace and control characters anywhere (an env var's trailing newline
        # included); lone surrogates, which no encoding can send.
        if char <= " " or "\x7f" <= char <= "\x9f" or "\ud800" <= char <= "\udfff":
            raise ConfigurationError(
                f"base_url={shown}: holds whitespace or a control character at index {index}"
            )
    if "?" in url or "#" in url:
        raise ConfigurationError(f"base_url={shown}: must not have a query or fragment")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port out of range or not a number
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii")
        if host.startswith("xn--") or ".xn--" in host:
            parsed.host.encode("utf-8")  # decodes the xn-- labels: raises for a bad one
    except (httpx.InvalidURL, ValueError) as exc:  # UnicodeError (IDNA) is a ValueError
        reason = str(exc) if "@" not in url else type(exc).__name__
        raise ConfigurationError(f"base_url={shown}: not a valid URL ({reason})") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"base_url={shown}: must be an http(s) URL with a host")
    if "@" in parts.netloc:
        raise ConfigurationError("base_url must not embed credentials")
    problem = check_host(host)
    if problem is not None:
        raise ConfigurationError(f"base_url={shown}: {problem}")
    if port == 0:
        raise ConfigurationError(f"base_url={shown}: port must be between 1 and 65535")
    hostname = parts.hostname or ""
    if parts.scheme == "http" and not allow_insecure_http and not is_loopback_host(hostname):
        raise ConfigurationError(
            f"base_url={shown}: plain http would send credentials in clear; use https, "
            "or pass allow_insecure_http=True if this really is what you want"
        )
