# Two commands do all the set-up: `make run` and `make test` (see README.md).
# Slow installs are cached outside the clone: pip in ~/.cache/pip, npm in
# ~/.npm, Maven in ~/.m2, the engine's jars in ~/.cache/mopq.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mopq-installed
NODE_STAMP := node_modules/.mopq-installed
NODE_CLIENT_STAMP := clients/node/node_modules/.mopq-installed
PYTEST_ARGS ?=

.PHONY: install run test lint engine browser clean chaos bench

install: $(STAMP) $(NODE_STAMP) $(NODE_CLIENT_STAMP)

$(PY):
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "mopq needs Python 3.11+"' \
		|| { echo "mopq needs Python 3.11 or newer as $(PYTHON)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

$(NODE_STAMP): package.json
	@command -v npm >/dev/null || { echo "npm (Node.js) is needed for the dashboard's socket.io client: apt-get install nodejs npm"; exit 1; }
	npm install --no-audit --no-fund --loglevel=error
	@touch $@

# The Node.js client (clients/node, docs/FORMAT.md) and its tests: the mongodb driver at the
# version its package-lock.json pins.
$(NODE_CLIENT_STAMP): clients/node/package.json clients/node/package-lock.json
	@command -v npm >/dev/null || { echo "npm (Node.js) is needed for the Node client in clients/node: apt-get install nodejs npm"; exit 1; }
	cd clients/node && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

engine: install
	@if [ -z "$$MOPQ_MONGODB_URI" ]; then $(PY) -m mopq engine --prepare; fi

# Debian's chromium for the browser tests; skipped where it is already there.
browser:
	@command -v chromium >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else echo "browser tests need Debian's chromium: sudo apt-get install chromium"; exit 1; fi; }

# make run PORT=8001 ENGINE_PORT=27018 HOST=0.0.0.0 picks other addresses.
run: install
	$(PY) -m mopq run $(if $(PORT),--port $(PORT)) $(if $(ENGINE_PORT),--engine-port $(ENGINE_PORT)) $(if $(HOST),--host $(HOST))

test: install engine browser
	$(PY) -m pytest $(PYTEST_ARGS)

# Kill workers, producers, collectors and the engine at random, then check nothing was
# lost or miscounted (tests/chaos.py); a few minutes, longer with MINUTES=10.
chaos: install engine
	$(PY) -m tests.chaos $(if $(MINUTES),--minutes $(MINUTES))

# mopq beside kombu-Mongo, Celery, RQ and Dramatiq (bench/peers.py); writes its section of
# docs/BENCHMARKS.md. Debian's redis-server is installed when missing (as root); the peers
# go into their own venv in ~/.cache/mopq/peers-venv. About 7 minutes; BENCH_ARGS=--quick.
bench: install engine
	@command -v redis-server >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
		else echo "make bench: the Redis peers need Debian's redis-server (sudo apt-get install redis-server); their rows will say so"; fi; }
	$(PY) bench/peers.py $(BENCH_ARGS)

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) node_modules
