# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: demo test lint typecheck unit diagrams bench setup clean

$(STAMP): pyproject.toml scripts/setup.sh scripts/mooncake-extra.sh
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m embxfer demo --requests 100 --tokens 100:60000 --receivers 2 --concurrency 16

test: lint typecheck unit

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: $(STAMP)
	bash scripts/typecheck.sh

unit: $(STAMP)
	$(PY) -m pytest

diagrams: $(STAMP)
	$(PY) -m embxfer diagram --export specs

bench: $(STAMP)
	$(PY) -m embxfer bench

clean:
	rm -rf .venv build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
