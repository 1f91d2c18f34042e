# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv if missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test test-oldest lint typecheck pytest bench bench-rotation clean

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	touch $@

# The library alone: what a user installs.
$(VENV)/.installed-demo: $(VENV)/.created pyproject.toml
	$(PIP) install --quiet -e .
	touch $@

# Everything the tests and linters need.
$(VENV)/.installed-dev: $(VENV)/.created pyproject.toml
	$(PIP) install --quiet -e '.[dev,gcp]'
	touch $@ $(VENV)/.installed-demo

demo: $(VENV)/.installed-demo
	cd examples && ../$(PY) -m booking

lint: $(VENV)/.installed-dev
	$(PY) -m ruff check src tests examples benchmarks
	$(PY) -m ruff format --check src tests examples benchmarks

typecheck: $(VENV)/.installed-dev
	$(PY) -m mypy --strict src

pytest: $(VENV)/.installed-dev
	$(PY) -m pytest

test: lint typecheck pytest

# The suite again, with the lowest version of every runtime dependency that pyproject.toml
# allows (pinned in constraints-oldest.txt) and current test tools, in a venv of its own that
# is made anew whenever either file changes.
OLDEST_VENV ?= .venv-oldest
OLDEST_PY := $(OLDEST_VENV)/bin/python

$(OLDEST_VENV)/.installed: pyproject.toml constraints-oldest.txt
	rm -rf $(OLDEST_VENV)
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_PY) -m pip install --quiet --upgrade pip
	$(OLDEST_PY) -m pip install --quiet -c constraints-oldest.txt -e '.[dev,gcp]'
	touch $@

test-oldest: $(OLDEST_VENV)/.installed
	$(OLDEST_PY) -m pytest

# Not part of `make test`: several minutes, and the figures are ratios, not pass/fail.
bench: $(VENV)/.installed-dev
	$(PY) benchmarks/run.py $(BENCH_ARGS)
	$(PY) benchmarks/blind_index.py
	$(PY) benchmarks/index_kinds.py
	$(PY) benchmarks/slow_index.py

# Key rotation of 100,000 and 1,000,000 rows on PostgreSQL and MariaDB, 1 and 2 workers, each
# with its ratio to the crypto-bound rate, the write ceiling (300,000 rows rewritten with no
# crypto), and a reindex of 1,000,000 rows on PostgreSQL with 1 and 2 workers (about a quarter
# of an hour; FIELDCRYPT_BENCH_POSTGRES_URL and
# FIELDCRYPT_BENCH_MARIADB_URL, else the FIELDCRYPT_TEST_* ones, name the servers).
bench-rotation: $(VENV)/.installed-dev
	$(PY) benchmarks/rotation.py

clean:
	rm -rf $(VENV) $(OLDEST_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
