"""The package as a user gets it: build the sdist and the wheel, look inside, install the
wheel into a clean venv without extras, and run it there (import, ``--help``, the demo).

The build runs without isolation (``setuptools`` and ``build`` come from the test
toolchain), on a copy of the source tree so nothing is written into the checkout. The
venv gets the wheel by path and its two runtime dependencies from the package index
through pip's cache, as a user's install would.
"""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.message import Message
from pathlib import Path

import pytest

import enso_tracker

pytestmark = pytest.mark.slow  # a build, a venv and an install: `make test`, not `make check`

ROOT = Path(__file__).resolve().parents[2]
VERSION = enso_tracker.__version__
#: What a clean install may hold besides enso-tracker: httpx and msgspec, their own
#: dependencies, and pip itself. No test, lint, framework or benchmark tool.
RUNTIME = {
    "anyio",
    "certifi",
    "exceptiongroup",
    "h11",
    "httpcore",
    "httpx",
    "idna",
    "msgspec",
    "pip",
    "setuptools",
    "sniffio",
    "typing-extensions",
    "typing_extensions",
}
TOOLS = {"pytest", "mypy", "ruff", "hypothesis", "celery", "uwsgi", "gunicorn", "rich", "dask"}
TOOLS |= {"distributed", "pyspark"}
SKIP = shutil.ignore_patterns(
    ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
)


def _env() -> dict[str, str]:
    """The environment without this checkout on the path: only the install is seen."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.pop("ENSO_DISABLED", None)
    return env


def _run(*args: str | Path, cwd: Path, timeout: float = 300.0) -> str:
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=SKIP)
    out = work / "dist"
    # The default: the sdist first, then the wheel built from the unpacked sdist, which
    # proves the sdist is complete enough to build.
    _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, source, cwd=work)
    return out


def _metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as z:
        return email.message_from_bytes(z.read(f"enso_tracker-{VERSION}.dist-info/METADATA"))


def test_the_wheel_holds_the_package_and_its_metadata_only(dist: Path) -> None:
    wheel = dist / f"enso_tracker-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"enso_tracker", f"enso_tracker-{VERSION}.dist-info"}
    assert "enso_tracker/py.typed" in names
    assert "enso_tracker/testing/__init__.py" in names  # FakeEnso is public
    assert f"enso_tracker-{VERSION}.dist-info/licenses/LICENSE" in names
    meta = _metadata(wheel)
    assert meta["License-Expression"] == "MIT"
    classifiers = meta.get_all("Classifier") or []
    for classifier in (
        "Typing :: Typed",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
    ):
        assert classifier in classifiers
    urls = {u.split(",")[0] for u in meta.get_all("Project-URL") or []}
    assert urls == {"Homepage", "Documentation", "Changelog", "Issues"}
    assert set(meta.get_all("Provides-Extra") or []) == {"cli", "dask", "otel", "spark"}
    assert {"enso_tracker/dask.py", "enso_tracker/spark.py"} <= set(names)  # the backfills
    requires = meta.get_all("Requires-Dist") or []
    plain = sorted(re.split(r"[<>=!~;\s]", r)[0] for r in requires if "extra ==" not in r)
    assert plain == ["httpx", "msgspec"]
    assert not any(tool in r for r in requires for tool in ("pytest", "mypy", "ruff", "uwsgi"))


def test_the_sdist_ships_no_tests(dist: Path) -> None:
    with tarfile.open(dist / f"enso_tracker-{VERSION}.tar.gz") as sdist:
        names = {
            Path(n).relative_to(f"enso_tracker-{VERSION}").as_posix() for n in sdist.getnames()
        }
    assert {"LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml"} <= names
    assert "enso_tracker/__init__.py" in names
    assert not [n for n in names if n.startswith(("tests", "benchmarks"))]


def test_the_wheel_installs_and_runs_in_a_clean_venv(dist: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    bin_dir = venv / "bin"
    wheel = dist / f"enso_tracker-{VERSION}-py3-none-any.whl"
    _run(
        bin_dir / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        wheel, cwd=tmp_path,
    )  # fmt: skip
    listed = _run(bin_dir / "python", "-m", "pip", "list", "--format=freeze", cwd=tmp_path)
    installed = {line.split("==")[0].lower() for line in listed.split()}
    assert "enso-tracker" in installed
    assert installed - {"enso-tracker"} <= RUNTIME, installed
    assert not installed & TOOLS
    where = _run(
        bin_dir / "python", "-c", "import enso_tracker; print(enso_tracker.__file__)", cwd=tmp_path
    )
    assert Path(where.strip()).is_relative_to(venv)  # the install, not this checkout
    usage = _run(bin_dir / "enso-tracker", "--help", cwd=tmp_path)
    assert "demo" in usage
    assert "import" in usage
    demo = _run(bin_dir / "enso-tracker", "demo", "--seconds", "1", cwd=tmp_path)
    assert demo.startswith("Simulating a web app")
    assert "Books balance" in demo
    assert "\033" not in demo  # a pipe, not a terminal: plain lines
