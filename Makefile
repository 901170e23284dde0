# Every target bootstraps its own virtual environment: nothing relies on a hand install.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench chaos clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	mkdir -p var
	$(BIN)/jqd --db var/jobs.db --control-socket var/jqd.sock --bind 127.0.0.1:8080

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Crash campaign: SIGKILLs a loaded daemon at random moments (see docs/RELIABILITY.md).
chaos: $(STAMP)
	$(BIN)/python tests/chaos/harness.py $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) var
