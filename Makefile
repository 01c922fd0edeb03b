# Two commands for a fresh machine with Python 3.11 and make: `make serve` and `make test`.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTANCE ?= instance

.PHONY: serve test lint demo clean

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

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/mypy --strict src

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(VENV)/.installed: $(VENV)/bin/python setup.cfg pyproject.toml
	$(BIN)/pip install -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/bin/python setup.cfg pyproject.toml
	$(BIN)/pip install -e '.[dev]'
	touch $(VENV)/.installed $@

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
