# The two commands README.md promises: `make demo` (the main job) and `make test` (the whole suite).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo serve test lint bench clean

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

lint: $(STAMP)
	$(BIN)/ruff check bridge workers tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache
