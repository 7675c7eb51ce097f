# The verbs people type. Every target installs what it needs first (idempotent).
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: bootstrap demo test lint unit bench cluster-up cluster-down clean

bootstrap:
	@bash scripts/bootstrap.sh

## demo: three local regions, live writes, one region failed and recovered, the repair report
demo: bootstrap
	$(PY) -m devcluster demo

## test: lint, then the whole suite against real redis-server and Kafka processes
test: bootstrap lint
	$(PY) -m pytest

lint: bootstrap
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

unit: bootstrap
	$(PY) -m pytest tests/unit

bench: bootstrap
	$(PY) -m benchmarks all

cluster-up: bootstrap
	$(PY) -m devcluster up

cluster-down:
	$(PY) -m devcluster down

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache .hypothesis .devcluster .demo
