# realsynth: `make demo` trains and evaluates on the embedded demo data; `make test` checks everything
# (with the optional extras installed, so that their code paths are tested too).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench study lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev,postgres,hf,shards,json]"
	touch $(STAMP)

# The demo is meant to be run again: it replaces its own earlier run in runs/demo.
demo: $(STAMP)
	$(VENV)/bin/realsynth train --config-file configs/demo.yaml --overwrite

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	$(PY) benchmarks/run_all.py

# Which tool helps on which synthetic data: every tool, 3 seeds, on the demo's three presets
# (hours on 2 cores; finished runs are reused when it runs again); tables in
# benchmarks/results/tool_study.md.
# STUDY_STEPS: steps of 16 per run (the README's tables: 300; the demo's budget: 2000).
STUDY_STEPS ?= 300
STUDY_ADAPTIVE := adaptive_projection:DATASETS.MULTI_DATASET.ADAPTIVE.SCORE=projection
study: $(STAMP)
	for preset in mild noisy shifted; do \
	  $(PY) benchmarks/tool_study.py --preset $$preset --steps $(STUDY_STEPS) \
	    --out runs/tool_study_$(STUDY_STEPS) --adaptive $(STUDY_ADAPTIVE) || exit 1; \
	done
	$(PY) benchmarks/tool_study.py --report --out runs/tool_study_$(STUDY_STEPS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
