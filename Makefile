# Faregate: `make run` brings up the whole stack; `make test` runs the whole suite. Both start their own
# Postgres/Redis/NATS when none answers at the configured URLs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt 2>/dev/null | cksum | cut -d' ' -f1)

.PHONY: install run test lint typecheck bench bench-quick stack-down clean console console-test-deps

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(if $(wildcard constraints.txt),-c constraints.txt) -e '.[test]'
	@rm -f $(VENV)/.installed-* && touch $@

run: install console
	$(BIN)/faregate dev

test: install console console-test-deps
	$(BIN)/faregate stack up
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check services shared faregate tests

typecheck: install
	$(BIN)/mypy services shared faregate

bench: install
	$(BIN)/python -m bench.run

bench-quick: install
	$(BIN)/python -m bench.run --quick

# The web console (console/, Vite + TypeScript): npm ci from the lock file, built into console/dist, which the keys
# service serves at /. Rebuilt only when its sources or lock file change.
CONSOLE_SRC := $(shell find console/src console/public -type f 2>/dev/null) console/index.html console/package-lock.json \
  console/vite.config.ts console/tsconfig.json

console: console/dist/index.html

console/node_modules/.package-lock.json: console/package-lock.json
	cd console && npm ci --no-audit --no-fund

console/dist/index.html: console/node_modules/.package-lock.json $(CONSOLE_SRC)
	cd console && npm run build

# The console's browser tests: Debian's Chromium (no browser download) and Playwright for Python.
console-test-deps: install
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

stack-down:
	$(BIN)/faregate stack down

clean:
	rm -rf $(VENV) .data
