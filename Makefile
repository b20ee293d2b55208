# Two commands on a fresh machine: `make demo` and `make test` (and `make check` while iterating).
#   make demo   installs the package alone (httpx, msgspec; no compiler) and runs the demos
#   make check  lint, types, the unit tier and the integration tests not marked `slow`
#   make test   lint, types and the whole suite, real servers (uWSGI, gunicorn, Celery) included
#   make unit   the unit tier alone (tests/unit: in-process, seconds), for the inner loop
# The tiers are folders: tests/unit, tests/integration, tests/system (docs/testing.md).
# Any Python >= 3.11 works: `make demo PYTHON=python3.13`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --quiet --disable-pip-version-check
# One stamp per toolchain, so that `make demo` then `make test` installs only what is missing.
DEMO_STAMP := $(VENV)/.installed-demo
CHECK_STAMP := $(VENV)/.installed-check
TEST_STAMP := $(VENV)/.installed-test
# Workers for the suite (pytest-xdist): `make test JOBS=0` runs it in one process. A test
# file runs whole on one worker: its module fixtures (a Spark session, a Dask cluster, a
# built wheel) are set up once. (Not `loadgroup`: pytest 9.2 ignores its groups,
# pytest-xdist issue #1386.)
JOBS ?= auto
XDIST := -n $(JOBS) --dist loadfile

.PHONY: demo check test test-all lint types unit quick suite integration system redis bench clean

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "enso-tracker needs Python >= 3.11, but PYTHON=$(PYTHON) is:" \
	    "$$($(PYTHON) --version 2>&1 || echo 'not found')." >&2; \
	  echo "Name another one, e.g. make $(MAKECMDGOALS) PYTHON=python3.12" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

# The demo needs the package and its two runtime dependencies, nothing else.
$(DEMO_STAMP): pyproject.toml | $(PY)
	$(PIP) install -e .
	touch $@

# Dependency groups (PEP 735, pyproject.toml) need pip >= 25.1.
$(CHECK_STAMP): pyproject.toml | $(PY)
	$(PIP) install --upgrade 'pip>=25.1'
	$(PIP) install -e . --group test --group lint
	touch $@

$(TEST_STAMP): pyproject.toml | $(PY)
	$(PIP) install --upgrade 'pip>=25.1'
	$(PIP) install -e . --group dev
	touch $@

demo: $(DEMO_STAMP)
	$(PY) -m enso_tracker demo
	$(PY) -m enso_tracker demo --crash

lint: $(CHECK_STAMP)
	$(VENV)/bin/ruff check enso_tracker tests benchmarks
	$(VENV)/bin/ruff format --check enso_tracker tests benchmarks

types: $(CHECK_STAMP)
	$(VENV)/bin/mypy enso_tracker tests benchmarks

unit: $(CHECK_STAMP)
	$(PY) -m pytest -q tests/unit

quick: $(CHECK_STAMP)
	$(PY) -m pytest -q $(XDIST) -m 'not slow' tests/unit tests/integration

integration: $(CHECK_STAMP)
	$(PY) -m pytest -q $(XDIST) tests/integration

system: $(TEST_STAMP) redis
	$(PY) -m pytest -q $(XDIST) tests/system

suite: $(TEST_STAMP) redis
	$(PY) -m pytest -q $(XDIST) --durations=15

# the RQ tests' Redis (Debian's; as root, as CI runs: otherwise those tests skip, saying so)
redis:
	command -v redis-server >/dev/null || [ "$$(id -u)" != 0 ] || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

check: lint types quick

test: lint types suite

# The suite on every supported Python, each in its own venv (pyenv keeps non-global
# versions off PATH, so look for them where it installs them too).
PY312 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) python3.12)
PY313 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13) python3.13)
test-all: test
	$(MAKE) test PYTHON=$(PY312) VENV=.venv-3.12
	$(MAKE) test PYTHON=$(PY313) VENV=.venv-3.13

bench: $(TEST_STAMP)
	$(PIP) install --group bench
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .venv-3.12 .venv-3.13 build dist *.egg-info .mypy_cache .pytest_cache .ruff_cache
