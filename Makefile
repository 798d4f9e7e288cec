# One-command set-up and runs. Override TORCH for your own CUDA build, e.g.
#   make test TORCH="torch torchvision --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.14.1 torchvision==0.29.1
PY := $(VENV)/bin/python
# The stamp names the TORCH it was installed with, so another TORCH installs anew.
STAMP := $(VENV)/.installed-$(shell printf '%s' '$(TORCH)' | cksum | cut -d' ' -f1)

.PHONY: setup data demo ablations patient zoo test test-slow test-floors gpu-check xla-check clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed*
	touch $(STAMP)

# Real Fashion-MNIST from Debian's package where possible; otherwise the demo downloads it.
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
data:
	@if [ ! -f $(FMNIST) ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || \
		echo "dataset-fashion-mnist not installed: the demo will download Fashion-MNIST instead"; fi

# The embedded default: MEAL V2 and the hard-label baseline from the committed Fashion-MNIST zoo
# (SEED=1 make demo for another seed; make demo PRECISION=32-true for fp32 where bf16 is the default; python demo.py --summary for mean and std over the seeds run).
demo: setup data
	$(PY) demo.py $(if $(PRECISION),--precision $(PRECISION))

# Does MEAL V2 work? Every config with a "# method table:" header (baselines, MEAL V2, the other methods, consistent
# teaching: 5 seeds; the paper's ablations: 3) at the table's 7-epoch budget, each declared choice made first on
# held-out images; results/method_table/ (table.md, table.json of every run). `make patient`: the 30-epoch rows over
# 3 seeds, into the same results. Finished runs are skipped and an interrupted one resumes, so either can be stopped
# and started again.
ablations: setup data
	$(PY) experiments/method_table.py

patient: setup data
	$(PY) experiments/method_table.py --patient

# Rebuild the zoo from its configs (configs/fashion_mnist/zoo/), then export it into zoo/fashion_mnist/.
zoo: setup data
	$(PY) demo.py --rebuild-zoo

# Lint and format check (ruff, configured in pyproject.toml), then every test but the end-to-end ones marked slow
# (some tests check the shipped zoo against the real Fashion-MNIST, hence data): what to run before every commit.
test: setup data
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -m "not slow"

# The end-to-end tests (marked slow: processes killed and resumed, DDP, the demo and the zoo rebuilt); CI runs them.
test-slow: setup data
	$(PY) -m pytest -m slow

# The version floors of pyproject.toml, true: a second environment with the oldest allowed lightning, timm,
# torchmetrics and jsonargparse (.ci/floors.txt; torch as pinned) runs the fast tests. CI runs it after `test`.
FLOORS := .venv-floors
test-floors: data
	$(PYTHON) -m venv $(FLOORS)
	$(FLOORS)/bin/python -m pip install -q --upgrade pip
	$(FLOORS)/bin/python -m pip install -q $(TORCH)
	$(FLOORS)/bin/python -m pip install -q -e '.[dev]' -c .ci/floors.txt
	$(FLOORS)/bin/python -m pytest -m "not slow"

# The prepared device check (checks/gpu_check.py): on a CUDA machine the GPU figures in about 8 minutes,
# elsewhere the same pipeline as a CPU rehearsal with tiny models (CI runs it); report in results/gpu_check/.
gpu-check: setup data
	$(PY) checks/gpu_check.py

# The step on XLA without a TPU (checks/xla_check.py): its own environment with the newest torch / torch_xla
# pair on PyPI, PJRT on the CPU; compilations, device-to-host transfers, aten fallbacks, loss vs eager, checkpoint.
# Report in results/xla_check/.
XLA_VENV := .venv-xla
XLA_TORCH ?= torch==2.9.0 torchvision==0.24.0 torch_xla==2.9.0
$(XLA_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(XLA_VENV)
	$(XLA_VENV)/bin/python -m pip install -q --upgrade pip
	$(XLA_VENV)/bin/python -m pip install -q $(XLA_TORCH)
	$(XLA_VENV)/bin/python -m pip install -q -e .
	touch $@

xla-check: $(XLA_VENV)/.installed
	PJRT_DEVICE=CPU $(XLA_VENV)/bin/python checks/xla_check.py

clean:
	rm -rf runs results lightning_logs
