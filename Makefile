# Two commands for a fresh machine with Python 3.11 and make: `make serve` and `make test`.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTANCE ?= instance
# Defined before the rules that list them as prerequisites (make expands those as it reads).
# KServe's Python SDK, whose InferenceGRPCClient a test runs against the server, pins pandas
# below 3 (and FastAPI, psutil...): it gets a virtualenv of its own rather than this one's pins.
KSERVE_VENV := .venv-kserve
KSERVE_VERSION ?= 0.21.0
# MLServer, the gRPC baseline of `make bench`, pins FastAPI below 0.116 (this project's bench
# extra has a newer one): a virtualenv of its own, with this one's scikit-learn so that it
# loads the same bundles.
MLSERVER_VENV := bench/work/mlserver-venv
MLSERVER_VERSION ?= 1.7.1

.PHONY: serve test lint demo bench bench-batch bench-payload grpc-stubs kserve-client clean

serve: $(VENV)/.installed demo ## Serve the models in instance/models on 127.0.0.1:8000
	@echo "Starting Gunicorn; API docs will be at http://$${GUNICORN_BIND:-127.0.0.1:8000}/docs"
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

demo: $(VENV)/.installed ## Write the demo bundles if instance/models holds none
	@if [ -z "$$(ls -A $(INSTANCE)/models 2>/dev/null)" ]; then \
		$(BIN)/inference-app init-demo --instance-path $(INSTANCE); \
	fi

test: $(VENV)/.installed-dev $(KSERVE_VENV)/.installed ## Run lint, type checks and the test suite
	$(BIN)/ruff check .
	$(BIN)/mypy --strict src
	$(BIN)/pytest

lint: $(VENV)/.installed-dev ## ruff, mypy, bandit, and pip-audit where advisories are reachable
	$(BIN)/ruff check .
	$(BIN)/mypy --strict src
	$(BIN)/bandit -q -r src
	$(BIN)/python scripts/audit.py

kserve-client: $(KSERVE_VENV)/.installed ## Install KServe's SDK in .venv-kserve for the gRPC tests
$(KSERVE_VENV)/.installed:
	$(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/pip install -q 'kserve==$(KSERVE_VERSION)'
	touch $@

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(VENV)/.installed: $(VENV)/bin/python setup.cfg pyproject.toml
	$(BIN)/pip install -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/bin/python setup.cfg pyproject.toml
	$(BIN)/pip install -e '.[dev]'
	touch $(VENV)/.installed $@

bench: $(VENV)/.installed $(MLSERVER_VENV)/.installed ## Benchmark against seed Flask/FastAPI apps and MLServer (bench/README.md)
	$(BIN)/pip install -e '.[bench]'
	@if ! command -v wrk >/dev/null 2>&1 || ! command -v h2load >/dev/null 2>&1; then \
		apt-get update && apt-get install -y wrk nghttp2-client; \
	fi
	$(BIN)/python bench/run.py

# MLServer (see MLSERVER_VENV above): its inference pool (1.7.1) calls
# asyncio.get_event_loop() in each new worker process, which uvloop 0.22 and later refuse.
$(MLSERVER_VENV)/.installed: $(VENV)/.installed
	$(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/pip install -q 'mlserver==$(MLSERVER_VERSION)' \
		'mlserver-sklearn==$(MLSERVER_VERSION)' \
		"scikit-learn==$$($(BIN)/python -c 'import sklearn; print(sklearn.__version__)')" \
		'uvloop<0.22'
	touch $@

bench-batch: $(VENV)/.installed ## Benchmark batch scoring: score, the floor, HTTP, Spark (bench/README.md)
	$(BIN)/pip install -e '.[spark]'
	@if ! command -v java >/dev/null 2>&1 || [ ! -x /usr/bin/time ]; then \
		apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless time; \
	fi
	$(BIN)/python bench/batch.py

bench-payload: $(VENV)/.installed ## Benchmark payload logging: off, a file, a stalled and a down sink (bench/README.md)
	@if ! command -v wrk >/dev/null 2>&1; then \
		apt-get update && apt-get install -y wrk; \
	fi
	$(BIN)/python bench/payload.py

# The generated modules are checked in. Their messages go in a descriptor pool of their own,
# not protobuf's default one, so that the package `inference` of the protocol can also be
# imported from tritonclient's or KServe's generated code in the same process.
GRPC_PROTO := src/inference_app/grpc/grpc_predict_v2.proto
grpc-stubs: $(VENV)/.installed-dev ## Regenerate the gRPC modules from $(GRPC_PROTO)
	cd src && ../$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. \
		--grpc_python_out=. $(GRPC_PROTO:src/%=%)
	sed -i 's/_descriptor_pool.Default().AddSerializedFile/_descriptor_pool.DescriptorPool().AddSerializedFile/' \
		src/inference_app/grpc/grpc_predict_v2_pb2.py

clean:
	rm -rf $(VENV) $(KSERVE_VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
