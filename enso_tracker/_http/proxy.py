"""Environment proxies (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``) checked at construction.

With ``trust_env`` (the default) httpx builds a transport for each of them when the
client is built, on the sender thread, at the first send. A proxy that can never work
(a SOCKS URL without the ``socksio`` package, a scheme httpx does not speak, a
malformed URL) would then fail every request, and every event would end as
``retries_exhausted`` long after the mistake. :func:`check_environment_proxies` makes
it a :class:`~.._errors.ConfigurationError` in ``Tracker(...)`` instead. Its messages
never show the credentials a proxy URL may hold.

Owns: the one rule for which environment proxy applies to a URL
(:func:`environment_proxy`, used by the sender and ``doctor``) and the check of
those settings (:func:`check_environment_proxies`).

Invariants: an unusable proxy setting fails at construction; no proxy URL is shown
with its credentials.
"""

from __future__ import annotations

import importlib.util
import urllib.request
from urllib.parse import urlsplit

import httpx

from .._config_checks import check_host, shown_url
from .._errors import ConfigurationError

__all__ = ["check_environment_proxies", "environment_proxy"]

#: The schemes httpx accepts for a proxy (``httpx.Proxy``).
_SCHEMES = ("http", "https", "socks5", "socks5h")
#: Where each entry of ``urllib.request.getproxies()`` comes from.
_VARIABLES = {"http": "HTTP_PROXY", "https": "HTTPS_PROXY", "all": "ALL_PROXY"}


def check_environment_proxies() -> None:
    """:class:`~.._errors.ConfigurationError` for an environment proxy httpx would be
    given and that cannot work; nothing when none is set or ``NO_PROXY=*``."""
    proxies = urllib.request.getproxies()  # what httpx reads (environment, OS settings)
    if any(host.strip() == "*" for host in proxies.get("no", "").split(",")):
        return  # httpx ignores every proxy then
    for key, variable in _VARIABLES.items():
        value = proxies.get(key)
        if not value:
            continue
        problem = _problem(value)
        if problem is not None:
            raise ConfigurationError(
                f"{variable}={shown_url(value)} in the environment: {problem}. Fix or unset "
                "it, or pass trust_env=False to ignore proxy settings from the environment"
            )


def environment_proxy(url: str) -> str | None:
    """The environment proxy (``HTTPS_PROXY``, ``ALL_PROXY``…) httpx would use for
    ``url``, as set (it may hold credentials: never show it as is), or None when none
    applies (unset, or ``NO_PROXY`` covers the host)."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy


def _socks_installed() -> bool:
    """Whether httpx can build a SOCKS transport (its ``socks`` extra)."""
    return importlib.util.find_spec("socksio") is not None


def _problem(value: str) -> str | None:
    """What makes this proxy setting unusable, or None."""
    if any(char <= " " or "\x7f" <= char <= "\x9f" for char in value):
        return "it holds whitespace or a control character"
    url = value if "://" in value else f"http://{value}"  # as httpx reads a bare host:port
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError when not a number or out of range
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii")
    except (httpx.InvalidURL, ValueError):  # the text could quote the URL: not shown
        return "it is not a valid URL"
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        return f"httpx cannot use a {scheme!r} proxy (only {', '.join(_SCHEMES)})"
    if scheme.startswith("socks") and not _socks_installed():
        return "a SOCKS proxy needs the socksio package: pip install 'httpx[socks]'"
    problem = check_host(host)
    if problem is not None:
        return f"it {problem}"
    if port == 0:
        return "its port must be between 1 and 65535"
    return None
