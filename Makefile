# The README's two commands: `make demo` (set up, then the main job) and `make test` (set up, then the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# This machine's pip takes these two from local disk; elsewhere override, e.g. TORCH="torch torchvision".
TORCH ?= torch==2.14.1 torchvision==0.29.1
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup data demo demo-quick test lint format clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# Fashion-MNIST from Debian when we can install it; otherwise kdlab says where it looked and how to get it.
data:
	@if [ ! -d $(FASHION_MNIST) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) >/dev/null; \
	fi

demo: setup data
	$(VENV)/bin/kdlab demo --out demo-out

demo-quick: setup data
	$(VENV)/bin/kdlab demo --quick --out demo-out-quick

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

test: setup data lint
	$(PY) -m pytest -n auto  # one worker per core; each test runs on one torch thread (conftest)

format: setup
	$(VENV)/bin/ruff format src tests benchmarks examples
	$(VENV)/bin/ruff check --fix src tests benchmarks examples

clean:
	rm -rf $(VENV) demo-out demo-out-quick .pytest_cache .ruff_cache
