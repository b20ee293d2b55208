"""Every ```python block of README.md and docs/*.md runs, against a FakeEnso.

The blocks show production code (``Tracker(api_key="...")``, ``Tracker.from_env()``), so
each runs with the production defaults pointed at a fake: ``Config``'s default
``base_url`` and ``ENSO_BASE_URL`` are the fake's URL, and the fake accepts ``"..."`` as
an API key (and as a client key and secret). Test functions a block defines
(``def test_...``) are then called, with the fixtures they name. A block that cannot run
(it needs FastAPI, say) has ``<!-- not-run: reason -->`` on the line above it: it must
still compile, and there may be only a few. And every relative link resolves.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest

import enso_tracker
from enso_tracker import Config, Tracker
from enso_tracker.testing import FakeEnso

pytestmark = pytest.mark.slow  # subprocesses, servers or frameworks: `make test`

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
NOT_RUN = re.compile(r"<!-- not-run: (.{10,}) -->")
MOST_NOT_RUN = 4
ENV_UNSET = ("ENSO_CLIENT_KEY", "ENSO_CLIENT_SECRET", "ENSO_DISABLED", "ENSO_SPOOL_DIR")


def _blocks() -> list[tuple[str, str, str | None]]:
    """(where, code, why not run) of every block, ``where`` as ``page:line``."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            above = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            why = NOT_RUN.fullmatch(above.strip())
            where = f"{page.relative_to(ROOT)}:{line}"
            found.append((where, match.group(1), why.group(1) if why else None))
    return found


BLOCKS = _blocks()
RUN = [pytest.param(code, id=where) for where, code, why in BLOCKS if why is None]


def test_the_docs_have_blocks_and_only_a_few_opt_out() -> None:
    assert len(RUN) >= 20
    not_run = [(where, code) for where, code, why in BLOCKS if why is not None]
    assert len(not_run) <= MOST_NOT_RUN, not_run
    for where, code in not_run:
        compile(code, where, "exec")  # still valid, complete Python


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_block_hides_from_this_test(page: Path) -> None:
    """An indented block (in a list item) or a misspelt marker would escape the runner."""
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"^[ \t]+```py", text, re.MULTILINE)
    for marker in re.findall(r"^<!--\s*not.run.*?-->", text, re.MULTILINE):
        assert NOT_RUN.fullmatch(marker), marker


@pytest.mark.parametrize("code", RUN)
def test_the_block_runs(
    code: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    where = request.node.callspec.id
    with FakeEnso(api_keys=("...", "test-api-key"), client_credentials={"...": "..."}) as enso:
        for name in ENV_UNSET:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("ENSO_API_KEY", "...")
        monkeypatch.setenv("ENSO_BASE_URL", enso.url)
        # Config's own default, so every way of making one (Tracker(...), Config(...),
        # config=...) meets the fake, never the real Enso.
        defaults = Config.__init__.__kwdefaults__
        assert defaults is not None
        monkeypatch.setitem(defaults, "base_url", enso.url)
        monkeypatch.chdir(tmp_path)
        namespace: dict[str, Any] = {"__name__": "docs_block"}
        logger, root = logging.getLogger("enso_tracker"), logging.getLogger()
        levels, handlers = (logger.level, root.level), (logger.handlers[:], root.handlers[:])
        environ = dict(os.environ)
        try:
            exec(compile(code, where, "exec"), namespace)
            for name, value in list(namespace.items()):
                if name.startswith("test_") and inspect.isfunction(value):
                    fixtures = inspect.signature(value).parameters
                    value(**{f: request.getfixturevalue(f) for f in fixtures})
        finally:
            for value in namespace.values():
                if isinstance(value, Tracker):
                    value.shutdown(2.0)
            enso_tracker.shutdown(2.0)
            # A block may configure logging (basicConfig, levels): not for the next one.
            logger.setLevel(levels[0])
            root.setLevel(levels[1])
            logger.handlers[:], root.handlers[:] = handlers
            # Nor the variables it set (a proxy, say): os.environ as it was before it.
            os.environ.clear()
            os.environ.update(environ)
        # Whatever a block sent went to the fake, with a key it accepts.
        assert all(r.status != 401 for r in enso.requests), where


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _prose(page: Path) -> str:
    return re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)


@pytest.mark.parametrize("page", [*PAGES, ROOT / "CHANGELOG.md"], ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    """Files and headings a page links to exist (docs move; links must follow)."""
    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", _prose(page)):
        if link.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(link)
        elif anchor and target.suffix == ".md":
            headings = re.findall(r"^#+ (.*)$", _prose(target), re.MULTILINE)
            if anchor not in {_slug(h) for h in headings}:
                broken.append(link)
    assert not broken
