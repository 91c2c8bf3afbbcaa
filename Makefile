# Quick start: `make demo` (creates .venv, installs torch==2.13.0 first, then crest, runs the
# demo) and `make test`. Other targets: test-unit, lint, format, bench, proto, docs, clean.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-unit lint format bench proto docs clean

# torch first, pinned: an open range would make pip fetch a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/crest demo

test: $(STAMP) lint
	$(BIN)/python -m pytest

# The fast tier (about 35 s on 2 cores): no real servers, processes or whole training jobs.
test-unit: $(STAMP)
	$(BIN)/python -m pytest -m "not integration and not e2e"

# mypy runs through tools/typecheck.py, which lays the package out as it installs (strict on
# crest.proto and crest.service; settings in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tools/typecheck.py

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

proto: $(STAMP)
	$(BIN)/python proto/generate.py

# docs/configuration.md from the settings model (tests/deploy fails when it is stale).
docs: $(STAMP)
	$(BIN)/python -m crest.config_reference docs/configuration.md

bench: $(STAMP)
	$(BIN)/crest bench e2e

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache results
