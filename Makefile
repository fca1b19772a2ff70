# The two Quick start commands: `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch 2.13.0 is installed first so pip takes the small CPU wheel on machines that have it;
# GPU users install their CUDA build of torch into .venv before `make run`.
# setuptools' editable build prints a banner about same-named folders (this project's own package): silenced.
TORCH_SPEC ?= torch==2.13.0

$(BIN)/random-diffusion: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)" 2>&1 | grep -v '^WARNING: Location' || true
	PYTHONWARNINGS='ignore:Editable installation' $(BIN)/pip install -q -e '.[test,celery,k8s]' 2>&1 | grep -v '^WARNING: Location' || true
	$(BIN)/python -c "import random_diffusion_dagster, torch, diffusers, dagster_postgres, dagster_celery, dagster_k8s, dagster_dg_cli, xdist, playwright"
	touch $@

setup: $(BIN)/random-diffusion

run: setup
	$(BIN)/random-diffusion run

# pytest-xdist: most tests wait on real daemons, webservers and Celery workers, so three workers share two cores
# well; a test file stays on one worker (its module fixtures start once, its Redis databases are its own), and the
# longest files start first (tests/conftest.py START_FIRST).
TEST_WORKERS ?= 3

test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: setup run test
