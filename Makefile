# shieldwall: `make demo` runs the lab demo, `make test` runs every test tier.
# Both install what they need (system packages, the virtualenv) and are idempotent.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The editable install also compiles the cffi module in place (setup.py), against the
# shared header, so it is redone when the header changes. A module left by an earlier
# build is removed first: Python would load it in preference to the new one.
INSTALL_DEPS := pyproject.toml setup.py src/shieldwall/kernel/ffi_build.py bpf/include/shieldwall.h

.PHONY: all deps venv build bpf ffi test test-unit test-kernel test-netns demo bench clean

all: build

deps:
	@scripts/install-deps.sh

$(STAMP): $(INSTALL_DEPS) | deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	rm -f src/shieldwall/kernel/_libbpf*.so
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

venv: deps $(STAMP)

bpf: deps
	@$(MAKE) -s -C bpf

ffi: venv

build: venv bpf

test: build
	$(PY) -m pytest -q -p no:cacheprovider tests

test-unit: build
	$(PY) -m pytest -q tests/unit

test-kernel: build
	$(PY) -m pytest -q tests/kernel

test-netns: build
	$(PY) -m pytest -q tests/netns

demo: build
	$(VENV)/bin/shieldwall demo

bench: build
	$(VENV)/bin/shieldwall bench

clean:
	rm -rf build dist src/shieldwall.egg-info src/shieldwall/kernel/_libbpf* src/shieldwall/kernel/.ffi-built $(STAMP)
