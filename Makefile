VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install run test lint format typecheck bench

install:
	./scripts/bootstrap.sh

run:
	./run.sh

test:
	./test.sh

lint:
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

format:
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

typecheck:
	$(PY) -m mypy

bench:
	$(PY) -m bench
