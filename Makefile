# The two commands of the README:
#   make demo   set up, train the small real default on Fashion-MNIST, write samples and plots
#   make test   set up and run the tests
# Everything is installed into ./.venv from PyPI (and Debian's dataset-fashion-mnist via apt).
# The demo installs only the package itself (training and sampling never import
# torch); the tests add PyTorch, diffusers and the test tools.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/ddpm_fashion_mnist.py
WORKDIR ?= runs/ddpm_fashion_mnist
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.jax_cache

# The PyTorch wheel the test setup installs first. setup.cfg gives torch a
# range (>=2.4,<3); left to that range, pip picks the newest PyPI wheel, the
# multi-GB CUDA build. 2.13.0 is the CPU wheel this machine keeps on disk
# (pip's find-links); override with TORCH_SPEC="torch>=2.4,<3" elsewhere.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup setup-test data browser demo train sample test test-slow clean

# What make demo needs: the package and its install_requires (no torch).
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

# What make test adds: torch first (see TORCH_SPEC), then the extras.
$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[serve,test]"
	touch $@

setup: $(VENV)/.installed

setup-test: $(VENV)/.installed-test

# Debian's dataset-fashion-mnist puts the original IDX files in $(FMNIST_DIR).
# Without apt, download them yourself and pass --config.data.manual_dir=DIR.
data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then :; \
	elif command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	else echo "Fashion-MNIST not found in $(FMNIST_DIR) and no apt-get: put the four IDX .gz files in a directory and add --config.data.manual_dir=DIR"; exit 1; fi

# Debian's chromium, for the headless web-page test of the server
# (tests/test_serve_browser.py); installed with apt when missing.
browser:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; \
	else echo "chromium not found and no apt-get: the web-page test will be skipped"; fi
	@if command -v node >/dev/null || command -v nodejs >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nodejs; \
	else echo "node not found and no apt-get: the page's PNG-encoder test will be skipped"; fi

# Extra flags, e.g. make demo TRAIN_ARGS=--config.train.time_budget_s=900
TRAIN_ARGS ?=
SAMPLE_ARGS ?=

train: setup data
	$(PY) -m launch --config $(CONFIG) --workdir $(WORKDIR) $(TRAIN_ARGS)

sample: setup
	$(PY) -m launch --config $(CONFIG) --workdir $(WORKDIR) --mode sample $(SAMPLE_ARGS)

# Training writes samples/step_<N>.png and figures/loss_curve.png; sample adds
# a grid + .npz of config.sample.num samples from the EMA weights.
demo: train sample

# The default suite in TEST_WORKERS processes (pytest-xdist, whole modules per
# worker so module fixtures are built once); the slow suite the same way, except
# the server under load (marker `quiet`: its latency and memory figures),
# which runs last, alone, in one process.
TEST_WORKERS ?= 2

test: setup-test data browser
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=10

test-slow: setup-test data browser
	$(PY) -m pytest -q -m "slow and not quiet" -n $(TEST_WORKERS) --dist loadfile --durations=10
	$(PY) -m pytest -q -m "slow and quiet" --durations=10

clean:
	rm -rf $(VENV) .jax_cache
