# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint types unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m enso_tracker demo
	$(PY) -m enso_tracker demo --crash

lint: $(STAMP)
	$(VENV)/bin/ruff check enso_tracker tests benchmarks
	$(VENV)/bin/ruff format --check enso_tracker tests benchmarks

types: $(STAMP)
	$(VENV)/bin/mypy enso_tracker tests benchmarks

unit: $(STAMP)
	@# the RQ tests' Redis (Debian's; as root, as CI runs: otherwise those tests skip, saying so)
	command -v redis-server >/dev/null || [ "$$(id -u)" != 0 ] || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }
	$(PY) -m pytest -q

test: lint types unit

# The suite on every supported Python, each in its own venv (pyenv keeps non-global
# versions off PATH, so look for them where it installs them too).
PY312 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) python3.12)
PY313 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13) python3.13)
test-all: test
	$(MAKE) test PYTHON=$(PY312) VENV=.venv-3.12
	$(MAKE) test PYTHON=$(PY313) VENV=.venv-3.13

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .venv-3.12 .venv-3.13 build *.egg-info .mypy_cache .pytest_cache .ruff_cache
