# capture-worker: `make demo` and `make test` each do the whole set-up from a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CW := $(BIN)/capture-worker
# Three b_sql/e2e pairs: one pair on a shared machine can be off by 10-20%.
BENCH_ARGS ?= --rounds 3

.PHONY: install up demo test lint down status reliability bench schemas docs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

up: install
	$(CW) stack up

demo: up
	$(CW) demo

test: up lint
	eval "$$($(CW) stack env)" && $(BIN)/python -m pytest $(PYTEST_ARGS)

reliability: up
	eval "$$($(CW) stack env)" && $(BIN)/python -m pytest -m reliability -p no:randomly $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check worker contracts devkit tests
	$(BIN)/ruff format --check worker contracts devkit tests
	$(BIN)/mypy

bench: up
	$(CW) bench $(BENCH_ARGS)

schemas: install
	$(BIN)/python -m contracts.export_schemas

docs: install
	$(BIN)/faststream docs gen worker.interfaces.kafka.asyncapi:app --out docs/asyncapi.json

status: install
	$(CW) stack status

down: install
	$(CW) stack down

clean: down
	rm -rf $(VENV)
