# One-command set-up and runs. Override TORCH for your own CUDA build, e.g.
#   make test TORCH="torch torchvision --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.14.1 torchvision==0.29.1
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup data demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Real Fashion-MNIST from Debian's package where possible; otherwise the demo downloads it.
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
data:
	@if [ ! -f $(FMNIST) ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || \
		echo "dataset-fashion-mnist not installed: the demo will download Fashion-MNIST instead"; fi

# The embedded default end to end (quick budget, < 15 min on 2 CPU cores); FULL=1 for the benchmark.
demo: setup data
	$(PY) demo.py $(if $(filter 1,$(FULL)),--budget full,)

test: setup
	$(PY) -m pytest

clean:
	rm -rf runs results lightning_logs
