# Warnings are errors in tests: see filterwarnings in pyproject.toml.
# The single entry point for people and CI: make demo | test | bench | lint.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install system-deps demo test test-unit bench chaos lint typecheck format schemas docs clean

# torch first, pinned to the CPU build on this machine's disk: a bare `torch` requirement
# (via sentence-transformers) would download a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Test-only system tools from Debian: Chromium for the reviewers' UI test, docker-compose to
# validate docker-compose.yml offline. Installed only where missing (CI runs as root).
system-deps:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: install
	@# The default database is the demo's own: a second run starts from an empty one, not from the
	@# first run's decided queue (its events would all be duplicates, nothing left to propose).
	@if [ -z "$$DATABASE_URL" ]; then rm -f var/refinery.db var/refinery.db-wal var/refinery.db-shm; fi
	$(VENV)/bin/refinery demo

test: install system-deps
	CI=$${CI:-} $(PY) -m pytest --durations=20 $(PYTEST_ARGS) tests

test-unit: install
	$(PY) -m pytest tests/unit

# BERTopic (the `bench` extra) is the clustering baseline; HWU64 and SNIPS are read from clones
# of xliuhw/NLU-Evaluation-Data and sonos/nlu-benchmark (REFINERY_HWU64_REPO, REFINERY_SNIPS_REPO;
# bench/datasets.py), skipped with a note where absent.
bench: install
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/run_all.py --clinc ../shared/data/clinc150/data_full.json

# Fault injection under load (tests/chaos/suite.py): starts its own Redis and Tansu broker and a
# fresh PostgreSQL database per scenario, kills roles and services, prints lost / duplicated /
# stuck per scenario. `make chaos CHAOS_ARGS="redis postgres"` runs some; make test runs one.
CHAOS_ARGS ?=
chaos: install
	$(PY) -m tests.chaos.suite $(CHAOS_ARGS)

# The gate CI runs before the tests (.ci/run): ruff over the tree, mypy over the contract and
# the core. The import contracts (refinery never imports workers) are a test.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy schemas refinery

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

schemas: install
	$(PY) -m schemas.export

clean:
	rm -rf var .pytest_cache
