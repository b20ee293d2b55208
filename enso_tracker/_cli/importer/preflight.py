"""Before ``import`` reads a row: can Enso be reached, and does it take the credentials?

Asked with the tracker's own stack (``_http.probe.preflight``: the tracker's credentials and
sender, on an empty batch), so an unreachable Enso or refused credentials end the run
within about :data:`~.._http.probe.PREFLIGHT_TIMEOUT` seconds with exit 3, instead of after
reading and queueing rows until ``--stall-timeout``.
"""

from __future__ import annotations

import argparse

from ..._config import Config
from ..._http.auth import make_credentials
from ..._http.probe import BLOCKING, PREFLIGHT_TIMEOUT, preflight
from .._args import connection_options

__all__ = ["check_enso"]


def check_enso(args: argparse.Namespace, config: Config) -> str | None:
    """Why nothing could be delivered to Enso (for the summary), or None to go on.

    ``config`` is the import's tracker's own. Only answers that doom every row stop the
    run: no answer, 5xx for the whole budget, refused credentials, 403, a redirect. An
    answer of another shape goes on (the probe's expectations are inferred; the rows'
    own answers will say more).
    """
    options = connection_options(args)
    credentials = make_credentials(
        options.get("api_key"), options.get("client_key"), options.get("client_secret"),
        config.base_url,
    )  # fmt: skip
    result = preflight(config, credentials)
    if result.kind not in BLOCKING:
        return None
    tries = f"{result.attempts} tries in {PREFLIGHT_TIMEOUT:g} s"
    return {
        "unreachable": f"Enso is unreachable at {config.base_url}: {result.message} ({tries})",
        "unavailable": f"Enso is unavailable: {result.message} ({tries})",
        "login_refused": "Enso refuses the credentials (run `enso-tracker doctor`): "
        + result.message,
        "unauthorized": "Enso refuses the credentials (run `enso-tracker doctor`): "
        + result.message,
        "forbidden": f"Enso does not let these credentials send events: {result.message}",
        "redirected": f"the base URL is not Enso's API: {result.message}",
    }.get(result.kind, result.message)
