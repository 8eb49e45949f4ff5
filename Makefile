# Two commands set up a fresh machine:  `make run` (the whole path on embedded defaults)
# and `make test`. Everything else is a convenience.
VENV ?= .venv
PYTRITON ?= nvidia-pytriton==0.7.0
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup redis run test test-fast lint format proto bench pipelines knowledge clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	# a real tritonserver (CPU, Python backend) for the Triton tests; --no-deps: the wheel's
	# Python API (unused here) caps numpy below 2
	$(PY) -m pip install -q --disable-pip-version-check --no-deps $(PYTRITON)
	touch $@

redis:  ## redis-server for the integration tests (Debian package)
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)

run: setup  ## synthetic sample -> train -> export -> publish (embedded) -> serve on :8000 / :50051
	$(VENV)/bin/reaseq demo

test: setup redis lint
	REASEQ_REQUIRE_TRITON=1 REASEQ_REQUIRE_FUXICTR=1 $(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not e2e"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

proto: setup
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. \
		proto/reaseq/v1/ranking.proto

bench: setup  ## against a running service: p50/p99 of gRPC Rank, 200 candidates x 100 behaviors
	$(VENV)/bin/reaseq bench --transport grpc --target 127.0.0.1:50051

pipelines: setup  ## the README's real-data numbers (../shared/data), one report per dataset
	for d in amazon18-scientific amazon14-office ml-100k; do \
		$(VENV)/bin/reaseq pipeline $$d --no-publish || exit 1; done

knowledge: setup  ## MAKR knowledge for the shared datasets (hours; resumable: rerun continues), then the files that ship
	for d in amazon14-office amazon18-scientific ml-100k; do \
		$(VENV)/bin/reaseq makr run $$d && $(VENV)/bin/reaseq makr export $$d || exit 1; done

clean:
	rm -rf artifacts .pytest_cache .ruff_cache
