# Two commands for a newcomer: `make demo` and `make test`.  Both build .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench bench-smoke fuzz clean system-deps compile

# Editable in "compat" mode: a plain path entry in a .pth file, so the package
# imports as an installed one does.  The default mode installs an import hook
# that every Python process of the venv loads at start (~15 ms measured): each
# `ppcp` command, test subprocess and CLI benchmark would pay it, users never do.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

# An editable install leaves ppcp/ uncompiled, and with PYTHONDONTWRITEBYTECODE set
# every `ppcp` command would compile the changed modules again (20-30 ms of each
# command's start).  Only what changed since the last run is recompiled.
compile: $(STAMP)
	@$(PY) -m compileall -q ppcp

system-deps:
	@bash scripts/system-deps.sh

demo: compile
	$(PY) -m ppcp.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check ppcp tests bench
	$(VENV)/bin/ruff format --check ppcp tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict ppcp
	$(VENV)/bin/mypy --strict bench

unit: compile system-deps
	$(VENV)/bin/pytest -q -ra $(PYTEST_ARGS)

test: lint typecheck unit

bench: compile
	$(PY) -m bench.run $(BENCH_ARGS)

bench-smoke: compile
	$(PY) -m bench.run --smoke --out $${TMPDIR:-/tmp}/ppcp-bench-smoke

fuzz: $(STAMP)
	$(PY) -m pip install --quiet atheris
	$(PY) -m tests.fuzz.run $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
