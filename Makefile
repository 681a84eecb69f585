# Quick start:  make repro   (the offline default, end to end)
#               make test    (the test suite)
# Both create or refresh the local virtualenv .venv first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv repro test test-fast lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

repro: venv
	PATH="$(abspath $(VENV))/bin:$$PATH" dvc repro

test: venv
	$(PY) -m pytest -q -ra

test-fast: venv
	$(PY) -m pytest -q -ra -m "not slow"

lint: venv
	$(PY) -m ruff check mitp pipeline tests benchmarks

clean:
	rm -rf $(VENV)
