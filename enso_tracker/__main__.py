"""``python -m enso_tracker`` and the ``enso-tracker`` console script."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from ._cli import main as cli_main  # argparse and friends only when the CLI runs

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
