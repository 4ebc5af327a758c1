# Two commands do everything on a fresh machine (see README):
#   make run    set up, then run the main job (python sweeps/run.py)
#   make test   set up, then run the whole test suite
#
# Set-up makes .venv/ with --system-site-packages so that a CUDA torch already installed on a
# GPU machine is seen and kept. Where no torch is installed, it installs torch==2.13.0 first
# (on these CPU machines pip takes the local CPU wheel; elsewhere pass
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu for a CPU-only build), so that the
# project's loose `torch>=` requirement never pulls several GB of CUDA packages.

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
TORCH_INDEX_URL ?=
ARGS ?=
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.setup-stamp

.PHONY: setup run train test clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv --system-site-packages $(VENV)
	@if $(PY) -c "import torch" 2>/dev/null; then \
		echo "setup: keeping installed torch $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	elif [ -n "$(TORCH_INDEX_URL)" ]; then \
		$(PIP) install --progress-bar off "torch==$(TORCH_VERSION)" --index-url "$(TORCH_INDEX_URL)"; \
	else \
		$(PIP) install --progress-bar off "torch==$(TORCH_VERSION)"; \
	fi
	$(PIP) install --progress-bar off -e '.[test]'
	@touch $@

run: setup
	$(PY) sweeps/run.py $(ARGS)

train: setup
	$(PY) -m trainers.train $(ARGS)

test: setup
	$(PY) -m pytest tests $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
