# megamix: `make demo` runs the main job, `make test` runs the test suite.
# Both set everything up first (idempotent; fast when nothing changed).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.megamix-installed
EXT_STAMP := $(VENV)/.megamix-ext
export DS_ACCELERATOR ?= cpu
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup test test-all test-fast demo bench clean

setup: $(EXT_STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

# The C++ helpers are compiled here, at install time, never at run time.
$(EXT_STAMP): $(STAMP) setup.py csrc/helpers.cpp
	$(PY) -m pip install --disable-pip-version-check -q --no-build-isolation --no-deps -e .
	touch $@

# Default: everything but the tests marked slow. CI (CI=true) runs all of them.
test: setup
	$(PY) -m pytest -q $(if $(CI),--run-slow,) tests

test-all: setup
	$(PY) -m pytest -q --run-slow tests

demo: setup
	bash examples/demo.sh

bench: setup
	$(PY) benchmarks/bench_data.py

clean:
	rm -rf build *.egg-info megamix/_helpers*.so
