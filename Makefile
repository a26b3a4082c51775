# Two commands from a clean clone: `make demo` (install into .venv and run the main job) and
# `make test` (install with the test extra and run the suite). Python 3.11, as the torch pin needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[eval,bench]'
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/iipa demo --out demo

test: install-test
	$(BIN)/python -m pytest

clean:
	rm -rf demo .pytest_cache
