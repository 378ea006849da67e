# livecomments — two commands set everything up on a fresh Debian machine:
#   make run    installs what is missing, then starts the whole system on loopback
#   make test   installs what is missing, then runs the whole test suite
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSTEM_PACKAGES := zookeeper redis-server

.PHONY: run test test-fast bootstrap system-deps _apt venv proto lint typecheck clean a11y-deps

run: bootstrap
	$(BIN)/livecomments up

# Two workers (pytest-xdist, one test module at a time each, the longest first; every
# worker has backends, clusters and a port range of its own): most of a system test is
# waiting on processes and sockets, so two share two cores well. TEST_WORKERS= runs
# the suite in one process.
TEST_WORKERS ?= -n 2 --dist loadfile
test: bootstrap a11y-deps
	$(BIN)/pytest $(TEST_WORKERS) $(PYTEST_ARGS)

# axe-core from npm (pinned in tests/a11y/package-lock.json), which the browser
# tests run inside Chromium.
AXE := tests/a11y/node_modules/axe-core/axe.min.js
a11y-deps: $(AXE)
$(AXE): tests/a11y/package-lock.json
	npm ci --prefix tests/a11y --no-audit --no-fund --silent
	touch $(AXE)

# The unit tests alone: no servers, a few seconds.
test-fast: venv
	$(BIN)/pytest -q tests/unit $(PYTEST_ARGS)

bootstrap: system-deps venv

# Debian packages: installed when we are root, otherwise named clearly.
# The tests also drive the system Chromium (never a downloaded browser).
system-deps:
	@$(MAKE) -s _apt NEED="$(if $(filter test,$(MAKECMDGOALS)),with-browser,)"

_apt:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	{ command -v java >/dev/null && [ -f /usr/share/java/zookeeper.jar ]; } || missing="$$missing zookeeper"; \
	if [ "$(NEED)" = with-browser ] && [ ! -x /usr/lib/chromium/chromium ]; then missing="$$missing chromium"; fi; \
	if [ "$(NEED)" = with-browser ] && ! command -v npm >/dev/null; then missing="$$missing npm"; fi; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	  else \
	    echo "missing system packages:$$missing"; \
	    echo "run as root: apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# Regenerate the gRPC code after editing proto/livecomments.proto (the output is committed).
proto: venv
	$(BIN)/python -m grpc_tools.protoc -I proto --python_out=livecomments/kernel/pb \
	  --grpc_python_out=livecomments/kernel/pb --pyi_out=livecomments/kernel/pb proto/livecomments.proto
	sed -i 's/^import livecomments_pb2 as/from livecomments.kernel.pb import livecomments_pb2 as/' \
	  livecomments/kernel/pb/livecomments_pb2_grpc.py

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

clean:
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache

# The fan-out benchmark: livecomments against nginx+nchan and Pushpin on this machine
# (docs/benchmarks.md). `make bench BENCH_ARGS="--viewers 10000 --rate 6"`, `--find-max`.
# `make bench-posts` measures accepted comments/s of one comment service (wrk drives it).
# As root the peers' and wrk's Debian packages are installed when missing; otherwise
# the harness names them.
# `make bench-scale` (bench/scale.py): 1, 2, 4 and 6 RTMS nodes with 2 dispatchers and
# 2 comment services, the same viewers, one hot video spread over every node and many
# small ones, and a move under posting; our processes only (no peers: no bench-tools).
# `make bench-scale BENCH_ARGS="--viewers 3000 --nodes 1,2"`.
.PHONY: bench bench-tools bench-posts bench-scale
bench-tools: bootstrap
	@if [ "$$(id -u)" = 0 ] && { ! command -v nginx >/dev/null || ! command -v pushpin >/dev/null \
	    || ! command -v wrk >/dev/null || [ ! -f /usr/lib/nginx/modules/ngx_nchan_module.so ]; }; then \
	  echo "installing the benchmark's tools: nginx-light libnginx-mod-nchan pushpin wrk"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	    nginx-light libnginx-mod-nchan pushpin wrk; \
	fi

bench: bench-tools
	$(BIN)/python -m bench.fanout $(BENCH_ARGS)

bench-posts: bench-tools
	$(BIN)/python -m bench.post_rate $(BENCH_ARGS)

bench-scale: bootstrap
	$(BIN)/python -m bench.scale $(BENCH_ARGS)
