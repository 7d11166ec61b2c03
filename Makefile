# One-command entry points. Each target installs what it needs (venv, pinned torch, the offline
# Fashion-MNIST from Debian), so `make demo` and `make test` work on a fresh Debian machine.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
SLIMKIT = $(VENV)/bin/slimkit
# torch and torchvision must stay paired; these pins resolve from the local package cache.
TORCH_PINS = torch==2.14.1 torchvision==0.29.1
FMNIST = /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Stable CPU timings and training steps: glibc's default malloc is erratic here (DESIGN.md).
export MALLOC_MMAP_MAX_ = 0
export MALLOC_TRIM_THRESHOLD_ = 68719476736
export MALLOC_TOP_PAD_ = 1073741824

.PHONY: setup data test test-slow demo bench-zoo bench-gate-step clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

data: $(FMNIST)

$(FMNIST):
	$(SUDO) apt-get update -q
	$(SUDO) apt-get install -y -q dataset-fashion-mnist

test: setup data
	$(PY) -m pytest -q

test-slow: setup data
	$(PY) -m pytest -q -m slow

# The main job, end to end on the offline default data.
demo: setup data
	$(SLIMKIT) info mobilenet_v1
	$(SLIMKIT) prune mobilenet_v1 --flops 150M --out runs/demo/mobilenet_v1_150M.json
	$(SLIMKIT) prune mobilenet_v1 --flops 150M --method uniform --out runs/demo/mobilenet_v1_150M_uniform.json
	$(SLIMKIT) prune resnet56 --flops 50% --out runs/demo/resnet56_50pct.json

bench-zoo: setup
	$(PY) bench/zoo_roundtrip.py

bench-gate-step: setup
	$(PY) bench/gate_step.py

clean:
	rm -rf runs .pytest_cache
