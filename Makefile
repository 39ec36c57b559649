# The two set-up commands: `make demo` and `make test`. Both create .venv when missing.
# `make demo` installs only what the node, the sensors and the demo need (no torch);
# `make test` adds the training stack (torch, for training, export and the torch baselines)
# and the test tools.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check
RUNTIME_STAMP := $(VENV)/.installed-runtime
FULL_STAMP    := $(VENV)/.installed-full

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUNTIME_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) -e .
	touch $@

$(FULL_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) -e '.[train,dev]'
	touch $@ $(RUNTIME_STAMP)

demo: $(RUNTIME_STAMP)
	$(BIN)/fusion demo

test: $(FULL_STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(FULL_STAMP)
	$(BIN)/python -m pytest -q bench --benchmark-enable

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
