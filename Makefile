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

# System programs the tests run for real: a MQTT broker, iproute2 for the network-namespace test and
# Chromium for the browser test. Installed with apt-get when missing (sudo when not root).
TEST_SYSTEM_PACKAGES := mosquitto iproute2 chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test bench clean system-packages

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUNTIME_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) -e .
	touch $@

$(FULL_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) -e '.[train,dev]'
	touch $@ $(RUNTIME_STAMP)

system-packages:
	@missing=""; \
	command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || missing="$$missing mosquitto"; \
	command -v ip >/dev/null 2>&1 || test -x /usr/sbin/ip || test -x /sbin/ip || missing="$$missing iproute2"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

demo: $(RUNTIME_STAMP)
	$(BIN)/fusion demo

test: $(FULL_STAMP) system-packages
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(FULL_STAMP)
	$(BIN)/python -m pytest -q bench --benchmark-enable

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
