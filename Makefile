# Two commands do everything on a fresh machine:
#   make test   set-up (venv, pinned deps, build) + the whole test suite
#   make bench  set-up + the microbenchmark on whatever device is present, then the
#               memory benchmark (saved activations, peak, in-place forward)
VENV      ?= .venv
PY        := $(VENV)/bin/python
# torch guesses CUDA_HOME from the nvcc on PATH; the headers live here.
ifneq ($(wildcard /usr/local/cuda/include/cuda_runtime.h),)
export CUDA_HOME ?= /usr/local/cuda
endif
# No GPU visible and no arch given: build for Hopper only (plus its PTX, which newer GPUs
# compile at load), to keep nvcc time down.
HAS_GPU   := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
ifeq ($(HAS_GPU),)
export TORCH_CUDA_ARCH_LIST ?= 9.0+PTX
endif
MAX_JOBS  ?= 2
export MAX_JOBS
BENCH_ARGS ?= --quick
PYTEST_ARGS ?=

.PHONY: setup build test bench bench-full clean

$(VENV)/.deps-installed: requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# Incremental in-place build (ninja); a .pth file puts the checkout on the venv's path.
build: $(VENV)/.deps-installed
	$(PY) setup.py -q build_ext --inplace
	$(PY) -c "import site, os; open(os.path.join(site.getsitepackages()[0], 'se_fused_dev.pth'), 'w').write(os.getcwd() + '\n')"

setup: build

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/bench_se.py $(BENCH_ARGS)
	$(PY) benchmarks/memory.py

bench-full: setup
	$(PY) benchmarks/bench_se.py --full

clean:
	rm -rf build se_fused/*.so
