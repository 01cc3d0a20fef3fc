# Two commands for a newcomer: `make demo` and `make test`.  Both build .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench bench-smoke fuzz clean system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@# An editable install leaves ppcp/ uncompiled; with PYTHONDONTWRITEBYTECODE set, every
	@# `ppcp` command would compile it again (about 20 ms). Stale .pyc files are ignored.
	$(PY) -m compileall -q ppcp
	touch $(STAMP)

system-deps:
	@bash scripts/system-deps.sh

demo: $(STAMP)
	$(PY) -m ppcp.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check ppcp tests bench
	$(VENV)/bin/ruff format --check ppcp tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict ppcp

unit: $(STAMP) system-deps
	$(VENV)/bin/pytest -q -ra $(PYTEST_ARGS)

test: lint typecheck unit

bench: $(STAMP)
	$(PY) -m bench.run $(BENCH_ARGS)

bench-smoke: $(STAMP)
	$(PY) -m bench.run --smoke --out $${TMPDIR:-/tmp}/ppcp-bench-smoke

fuzz: $(STAMP)
	$(PY) -m pip install --quiet atheris
	$(PY) -m tests.fuzz.run $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
