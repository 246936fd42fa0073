# Set-up, the main study and the tests. `make help` lists the targets.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build where one is at hand; set TORCH_SPEC for a CUDA machine.
TORCH_SPEC ?= torch==2.13.0
STUDY ?= quick

.PHONY: help setup quick test test-fast lint bench

help:
	@echo "make setup      create $(VENV) and install phasetune with its test tools"
	@echo "make quick      run the quick study on an embedded local Ray, then analyse it"
	@echo "make test       run the whole test suite (slow end-to-end tests included)"
	@echo "make test-fast  skip the tests marked slow"
	@echo "make lint       ruff check and format check"
	@echo "make bench      training-loop throughput benchmark"

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dashboard,test]"
	touch $@

quick: setup
	$(VENV)/bin/phasetune run $(STUDY) --storage studies/$(STUDY)
	$(VENV)/bin/phasetune analyze studies/$(STUDY) --out reports/$(STUDY)

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	$(PY) -m trainables.bench
