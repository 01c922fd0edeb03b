# Two commands for a fresh machine with Python 3.11 and make: `make serve` and `make test`.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTANCE ?= instance

.PHONY: serve test lint demo bench bench-batch clean

serve: $(VENV)/.installed demo ## Serve the models in instance/models on 127.0.0.1:8000
	@echo "Starting Gunicorn; API docs will be at http://$${GUNICORN_BIND:-127.0.0.1:8000}/docs"
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

demo: $(VENV)/.installed ## Write the demo bundles if instance/models holds none
	@if [ -z "$$(ls -A $(INSTANCE)/models 2>/dev/null)" ]; then \
		$(BIN)/inference-app init-demo --instance-path $(INSTANCE); \
	fi

test: $(VENV)/.installed-dev ## Run lint, type checks and the test suite
	$(BIN)/ruff check .
	$(BIN)/mypy --strict src
	$(BIN)/pytest

lint: $(VENV)/.installed-dev ## ruff, mypy, bandit, and pip-audit where advisories are reachable
	$(BIN)/ruff check .
	$(BIN)/mypy --strict src
	$(BIN)/bandit -q -r src
	$(BIN)/python scripts/audit.py

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(VENV)/.installed: $(VENV)/bin/python setup.cfg pyproject.toml
	$(BIN)/pip install -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/bin/python setup.cfg pyproject.toml
	$(BIN)/pip install -e '.[dev]'
	touch $(VENV)/.installed $@

bench: $(VENV)/.installed ## Benchmark against seed Flask/FastAPI apps (bench/README.md)
	$(BIN)/pip install -e '.[bench]'
	@if ! command -v wrk >/dev/null 2>&1; then \
		apt-get update && apt-get install -y wrk; \
	fi
	$(BIN)/python bench/run.py

bench-batch: $(VENV)/.installed ## Benchmark batch scoring: score, the floor, HTTP, Spark (bench/README.md)
	$(BIN)/pip install -e '.[spark]'
	@if ! command -v java >/dev/null 2>&1 || [ ! -x /usr/bin/time ]; then \
		apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless time; \
	fi
	$(BIN)/python bench/batch.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
