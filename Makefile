# Quarry: `make run` starts the whole service, `make test` runs every check. Both set themselves up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: run test lint typecheck unit integration eval bench bench-service chaos clean browser

$(VENV)/.requirements: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation --editable .  # the `quarry` command
	touch $@

$(VENV)/.requirements-dev: $(VENV)/.requirements requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

run: $(VENV)/.requirements
	$(PY) -m devstack

test: $(VENV)/.requirements-dev lint typecheck browser
	$(PY) -m pytest

lint: $(VENV)/.requirements-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: $(VENV)/.requirements-dev
	$(PY) -m mypy

unit: $(VENV)/.requirements-dev
	$(PY) -m pytest tests/unit

integration: $(VENV)/.requirements-dev browser
	$(PY) -m pytest tests/integration

# Retrieval quality through the running service (start it first with `make run`).
eval: $(VENV)/.requirements-dev
	$(PY) -m bench.eval_beir ../shared/data/scifact-train --split train --url http://127.0.0.1:8000 --collection scifact

# How one device is shared, side by side in one run (bench/device.py): for each configuration (`make run`'s
# defaults, the previous split design, and each question-priority option alone) a private stack of its own
# (free loopback ports, data in a temp dir; nothing needs to be running) measures start to ready and to the
# first answer, ingestion chunks/s beside the bare model on all cores, and question p50/p95 idle and while
# 1,500 documents are ingested (60 questions, then the ingest's end). Writes
# bench/results/device-<UTC date>.json. About 55 minutes on 2 cores (six configurations: the sixth is the
# defaults with a Milvus flush after every ingest batch, the flushing before MILVUS_FLUSH_INTERVAL_S).
bench: $(VENV)/.requirements-dev
	$(PY) -m bench.device ../shared/data/scifact-train

# Speed, side by side in one run, against the running service (ingests a scratch collection and deletes it;
# the ask and search parts use the `scifact` collection that `make eval` loads). About 9 minutes on 2 cores.
bench-service: $(VENV)/.requirements-dev
	$(PY) -m bench.perf ../shared/data/scifact-train --url http://127.0.0.1:8000 --collection scifact \
		--docs 1000 --json bench/results/latest.json

# Crash consistency: 5 minutes of mixed load while workers, milvus-lite and redis-server are killed at random,
# on a stack of its own (private ports, loopback only); then every job must have ended and Milvus must hold
# exactly one whole version of each document (bench/chaos.py). A 90 s version runs in `make test`.
chaos: $(VENV)/.requirements-dev
	$(PY) -m bench.chaos --seconds 300 --seed 1

# Headless Chromium for the web page's browser test (tests/integration/test_web.py): Debian's package,
# installed only when missing (never a test tool's own browser download).
browser:
	@test -x /usr/bin/chromium || { SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
		$$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends chromium; }

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
