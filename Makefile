# shieldwall: `make demo` runs the lab demo, `make test` runs every test tier.
# Both install what they need (system packages, the virtualenv) and are idempotent.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FFI_SO := $(wildcard src/shieldwall/kernel/_libbpf*.so)
FFI_DEPS := src/shieldwall/kernel/ffi_build.py bpf/include/shieldwall.h

.PHONY: all deps venv build bpf ffi test test-unit test-kernel test-netns demo bench clean

all: build

deps:
	@scripts/install-deps.sh

$(STAMP): pyproject.toml | deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

venv: deps $(STAMP)

bpf: deps
	@$(MAKE) -s -C bpf

# The cffi module is compiled against bpf/include/shieldwall.h: rebuilt when it changes.
src/shieldwall/kernel/.ffi-built: $(FFI_DEPS) $(STAMP)
	cd src/shieldwall/kernel && ../../../$(PY) ffi_build.py
	@touch $@

ffi: src/shieldwall/kernel/.ffi-built

build: venv bpf ffi

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
	rm -rf build src/shieldwall/kernel/_libbpf* src/shieldwall/kernel/.ffi-built
