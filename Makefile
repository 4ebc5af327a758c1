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

.PHONY: setup test-deps lint run train test clean

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

# The cluster tests run a real `ray up` over ssh to 127.0.0.1: they need sshd, rsync and nc.
CLUSTER_TOOLS := /usr/sbin/sshd rsync nc
test-deps:
	@missing=0; for tool in $(CLUSTER_TOOLS); do command -v $$tool >/dev/null || missing=1; done; \
	if [ $$missing = 1 ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "test-deps: installing openssh-server rsync netcat-openbsd (apt)"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server rsync netcat-openbsd >/dev/null \
			|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server rsync netcat-openbsd >/dev/null; }; \
		else \
			echo "test-deps: run  sudo apt-get install openssh-server rsync netcat-openbsd  (the cluster tests need them)"; exit 1; \
		fi; \
	fi

# ruff: the formatter's layout and the linter's rules of pyproject.toml, on every file.
lint: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

test: lint test-deps
	$(PY) -m pytest tests $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
