# The two commands README.md promises: `make demo` (the main job) and `make test` (the whole suite).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo serve test lint bench clean tools

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/gitops-bridge demo

serve: $(STAMP)
	BRIDGE_CONFIG=examples/bridge.yaml $(BIN)/gitops-bridge serve

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Tools the tests run but never install: promtool and the Prometheus server (Debian's prometheus package).
tools:
	command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus)

lint: $(STAMP)
	$(BIN)/ruff check bridge workers tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache
