"""The argument parser: common options, the command registry, help with examples.

Credentials come from the environment only (``ENSO_API_KEY``, or ``ENSO_CLIENT_KEY`` +
``ENSO_CLIENT_SECRET``): a flag would leave them in shell history and ``ps`` output.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .._config import DEFAULT_BASE_URL, env_flag
from .._errors import ConfigurationError
from .._tracker import Tracker
from .._version import __version__
from ._output import EXIT_CODES_HELP

__all__ = [
    "Connection",
    "build_parser",
    "connection",
    "connection_options",
    "connection_options_of",
    "in_env_terms",
    "make_tracker",
    "positive",
]

ENV_VARS = ("ENSO_API_KEY", "ENSO_CLIENT_KEY", "ENSO_CLIENT_SECRET", "ENSO_BASE_URL")

DESCRIPTION = """\
Send usage events to Enso from the command line.

Credentials are read from the environment only: ENSO_API_KEY, or ENSO_CLIENT_KEY and
ENSO_CLIENT_SECRET. ENSO_BASE_URL (or --base-url) points at another Enso."""

EXAMPLES = """\
examples:
  enso-tracker doctor
  enso-tracker send ent_6CsgzAdRgTlzT_9O api_calls 1
  enso-tracker import usage.csv.gz --entity customer --metric-name api_calls --value calls \\
      --timestamp ts
  enso-tracker import events.jsonl --dry-run
  enso-tracker demo
"""


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("common options")
    group.add_argument(
        "--base-url",
        metavar="URL",
        help=f"Enso's API (default: $ENSO_BASE_URL, else {DEFAULT_BASE_URL})",
    )
    group.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    return common


def build_parser(commands: Sequence[ModuleType]) -> argparse.ArgumentParser:
    """The parser; each command module brings ``NAME``, ``HELP``, ``configure`` (whose
    docstring is the command's examples) and ``run``; ``COMMON = False`` opts out of the
    common options."""
    parser = argparse.ArgumentParser(
        prog="enso-tracker",
        description=DESCRIPTION,
        epilog=EXAMPLES + "\n" + EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"enso-tracker {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common()
    for module in commands:
        doc = module.configure.__doc__ or ""
        uses_common = getattr(module, "COMMON", True)
        child = sub.add_parser(
            module.NAME,
            help=module.HELP,
            description=module.HELP,
            epilog=doc.strip() + "\n\n" + EXIT_CODES_HELP if doc else EXIT_CODES_HELP,
            parents=[common] if uses_common else [],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.configure(child)
        child.set_defaults(run=module.run, common=uses_common)
    return parser


@dataclass(frozen=True)
class Connection:
    """Where the CLI would send events, and where each setting came from (no secret)."""

    base_url: str
    base_url_from: str  # "--base-url", "ENSO_BASE_URL" or "default"
    mode: str  # "api_key", "client_credentials", "none" or "conflict"
    #: Environment variable -> its value, for the credentials that are set.
    secrets: Mapping[str, str]


def connection(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Connection:
    env = os.environ if environ is None else environ
    if args.base_url:
        base_url, source = args.base_url, "--base-url"
    elif env.get("ENSO_BASE_URL"):
        base_url, source = env["ENSO_BASE_URL"], "ENSO_BASE_URL"
    else:
        base_url, source = DEFAULT_BASE_URL, "default"
    secrets = {
        name: env[name]
        for name in ("ENSO_API_KEY", "ENSO_CLIENT_KEY", "ENSO_CLIENT_SECRET")
        if env.get(name)
    }
    has_key = "ENSO_API_KEY" in secrets
    has_client = "ENSO_CLIENT_KEY" in secrets or "ENSO_CLIENT_SECRET" in secrets
    if has_key and has_client:
        mode = "conflict"
    elif has_key:
        mode = "api_key"
    elif has_client:
        mode = "client_credentials"
    else:
        mode = "none"
    return Connection(base_url, source, mode, secrets)


def make_tracker(args: argparse.Namespace, **options: Any) -> Tracker:
    """A tracker from the environment and ``--base-url``; ``ConfigurationError`` (never
    quoting a secret) when they are missing or contradictory."""
    conn = connection(args)
    _usable(conn)
    return Tracker.from_env(base_url=conn.base_url, **options)


def _usable(conn: Connection) -> None:
    """``ConfigurationError`` unless ``conn`` names one kind of credentials and sending
    is not switched off."""
    if conn.mode == "none":
        raise ConfigurationError(
            "no credentials: set ENSO_API_KEY, or ENSO_CLIENT_KEY and ENSO_CLIENT_SECRET"
        )
    if conn.mode == "conflict":
        raise ConfigurationError(
            "both ENSO_API_KEY and ENSO_CLIENT_KEY/ENSO_CLIENT_SECRET are set; unset one kind"
        )
    refuse_if_disabled()


def refuse_if_disabled() -> None:
    """A command that sends must never report a success for events a disabled tracker let
    go, nor send from a shell where billing was switched off on purpose: it refuses."""
    if env_flag(os.environ, "ENSO_DISABLED"):
        raise ConfigurationError(
            "ENSO_DISABLED is set, so nothing would be sent; unset it (or set it to 0) to send"
        )


def connection_options(args: argparse.Namespace) -> dict[str, Any]:
    """``base_url`` and the credentials from the environment, as keywords for
    ``send_events()`` or ``make_credentials()``: nothing else (never ``ENSO_SPOOL_DIR``).
    ``ConfigurationError`` (naming the variables, never a value) when they are missing
    or contradictory."""
    return connection_options_of(connection(args))


def connection_options_of(conn: Connection) -> dict[str, Any]:
    """:func:`connection_options` of a :class:`Connection` already read."""
    _usable(conn)
    keyword = {variable: keyword for keyword, variable in _ENV_NAMES}
    options: dict[str, Any] = {keyword[var]: value for var, value in conn.secrets.items()}
    options["base_url"] = conn.base_url
    return options


_ENV_NAMES = (
    ("api_key", "ENSO_API_KEY"),
    ("client_key", "ENSO_CLIENT_KEY"),
    ("client_secret", "ENSO_CLIENT_SECRET"),
    ("base_url", "ENSO_BASE_URL / --base-url"),
)


def in_env_terms(exc: ConfigurationError) -> str:
    """A configuration error about a keyword, said in terms of the CLI's environment
    variables (``api_key holds…`` -> ``ENSO_API_KEY holds…``)."""
    text = str(exc)
    for keyword, variable in _ENV_NAMES:
        if text.startswith((f"{keyword} ", f"{keyword}=")):
            return variable + text[len(keyword) :]
    return text


def positive(text: str) -> int:
    """``type=`` of a count flag: a whole number of at least 1 (argparse names the flag
    in its error)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return n
