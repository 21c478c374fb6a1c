# Two commands do everything on a fresh machine:
#   make test   set-up (venv, pinned deps, build) + the whole test suite
#   make test-compat  the same on the oldest supported torch (requirements-compat.txt),
#               Python 3.12, a CPU-only build in a copy of the checkout (.compat/)
#   make bench  set-up + the microbenchmark on whatever device is present, then the
#               memory benchmark (saved activations, peak, in-place forward), then the
#               targets checked on the new result (scripts/targets.py)
# scripts/update_readme.py publishes benchmarks/results/ into README.md.
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

# The floor of the supported range gets its own venv and a copy of the sources: an
# extension built against one torch does not load with another.
COMPAT_DIR    ?= .compat
COMPAT_VENV   := $(COMPAT_DIR)/venv
COMPAT_SRC    := $(COMPAT_DIR)/src
COMPAT_PY     := $(COMPAT_VENV)/bin/python
# The first Python 3.12 that runs: python3.12 on PATH, else pyenv's install of it.
COMPAT_PYTHON ?= $(firstword $(foreach p,python3.12 $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12),\
                   $(shell $(p) -c "" >/dev/null 2>&1 && echo $(p))))

.PHONY: setup build test bench bench-full clean test-compat

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
	$(PY) scripts/targets.py benchmarks/results

bench-full: setup
	$(PY) benchmarks/bench_se.py --full
	$(PY) scripts/targets.py benchmarks/results

$(COMPAT_VENV)/.deps-installed: requirements-compat.txt
	@test -n "$(COMPAT_PYTHON)" || { echo "make test-compat needs Python 3.12 (set COMPAT_PYTHON)"; exit 1; }
	test -x $(COMPAT_PY) || $(COMPAT_PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_PY) -m pip install -q -r requirements-compat.txt
	touch $@

# The checkout's files as they are now (committed or not), mtimes kept so that ninja
# rebuilds only what changed; no .pth: PYTHONPATH picks the copy.
test-compat: $(COMPAT_VENV)/.deps-installed
	mkdir -p $(COMPAT_SRC)
	rm -rf $(COMPAT_SRC)/se_fused/*.py $(COMPAT_SRC)/tests $(COMPAT_SRC)/csrc $(COMPAT_SRC)/benchmarks
	git ls-files -co --exclude-standard -z | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C $(COMPAT_SRC)
	cd $(COMPAT_SRC) && SE_FUSED_NO_CUDA=1 ../venv/bin/python setup.py -q build_ext --inplace
	cd $(COMPAT_SRC) && PYTHONPATH=$$PWD ../venv/bin/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf build se_fused/*.so $(COMPAT_DIR)
