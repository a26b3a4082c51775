# Two commands from a clean clone: `make demo` (install into .venv and run the main job) and
# `make test` (install with the test extra and run the suite). Python 3.11, as the torch pin needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-test img2dataset bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[eval,bench]'
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# img2dataset, the standard tool `iipa bench ingest` measures against, in a venv of its own:
# its pins (webdataset < 0.3, albumentations, wandb) are not ours.
I2D := .venv-img2dataset
$(I2D)/bin/img2dataset:
	$(PYTHON) -m venv $(I2D)
	$(I2D)/bin/python -m pip install -q img2dataset==1.47.0

img2dataset: $(I2D)/bin/img2dataset

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/iipa demo --out demo

test: install-test img2dataset
	$(BIN)/python -m pytest

clean:
	rm -rf demo .pytest_cache
