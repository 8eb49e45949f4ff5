# syntax=docker/dockerfile:1
# ReaSeq Serving images (deploy/k8s uses both):
#   docker build -t reaseq-serving:0.1.0 .                   # the ranking service (default target)
#   docker build --target offline -t reaseq-offline:0.1.0 .  # pipeline, makr, gbr (torch, llama.cpp)
#
# The service image holds no training code's dependencies: pyproject.toml lists torch (and the
# other offline packages) as base dependencies, so the package is installed with --no-deps on top
# of deploy/docker/requirements-serve.txt, the serving part of that list (checked by
# tests/deploy/test_docker.py). `reaseq serve` imports no torch (tests/service/test_imports.py).
# Every stage runs as the non-root user 10001; compilers exist only in the offline builder.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- service: build the virtual environment (wheels only, no compiler needed) ----
FROM ${PYTHON_IMAGE} AS build-service
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/reaseq
COPY deploy/docker/requirements-serve.txt deploy/docker/constraints-serve.txt /tmp/
RUN /opt/reaseq/bin/pip install --only-binary=:all: \
        -r /tmp/requirements-serve.txt -c /tmp/constraints-serve.txt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY reaseq ./reaseq
RUN /opt/reaseq/bin/pip install --no-deps . \
    && /opt/reaseq/bin/python -c "import reaseq.cli, reaseq.service.server" \
    && /opt/reaseq/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"

# ---- offline: the full package with MAKR's extra (llama-cpp-python is built from source) ----
FROM ${PYTHON_IMAGE} AS build-offline
# torch is pinned to its CPU build (pyproject.toml); PyPI's default linux wheel is the CUDA one
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/reaseq
WORKDIR /src
COPY pyproject.toml README.md ./
COPY reaseq ./reaseq
RUN /opt/reaseq/bin/pip install --extra-index-url "${TORCH_INDEX_URL}" ".[makr]" \
    && /opt/reaseq/bin/python -c "import reaseq.cli, torch"

FROM ${PYTHON_IMAGE} AS offline
RUN groupadd --system --gid 10001 reaseq \
    && useradd --system --uid 10001 --gid reaseq --home-dir /home/reaseq --create-home \
       --shell /usr/sbin/nologin reaseq
COPY --from=build-offline /opt/reaseq /opt/reaseq
COPY configs /opt/reaseq-configs
ENV PATH=/opt/reaseq/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /home/reaseq
USER 10001:10001
ENTRYPOINT ["reaseq"]
CMD ["--help"]

# ---- service: the final (default) stage ----
FROM ${PYTHON_IMAGE} AS service
RUN groupadd --system --gid 10001 reaseq \
    && useradd --system --uid 10001 --gid reaseq --home-dir /home/reaseq --create-home \
       --shell /usr/sbin/nologin reaseq
COPY --from=build-service /opt/reaseq /opt/reaseq
# REASEQ_HOST: listen on every interface (the settings default, 127.0.0.1, is for a laptop)
ENV PATH=/opt/reaseq/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    REASEQ_HOST=0.0.0.0 \
    REASEQ_HTTP_PORT=8000 \
    REASEQ_GRPC_PORT=50051
WORKDIR /home/reaseq
USER 10001:10001
EXPOSE 8000 50051
ENTRYPOINT ["reaseq"]
CMD ["serve"]
