# Two commands do all the set-up on a fresh machine:
#   make demo   - venv + install, then pre-train on the built-in `shapes` dataset and print the accuracy
#   make test   - venv + install, then run the test suite (what CI runs)
# A Python >= 3.11 (pyproject's requires-python): the first of python3.13, python3.12, python3.11
# and python3 that is new enough (a fresh Mac's python3 is Apple's 3.9). Override: make PYTHON=...
PY_OK  := import sys; sys.exit(sys.version_info < (3, 11))
ifeq ($(origin PYTHON),undefined)
PYTHON := $(firstword $(foreach p,python3.13 python3.12 python3.11 python3,$(shell command -v $(p) >/dev/null 2>&1 && $(p) -c '$(PY_OK)' 2>/dev/null && echo $(p))))
endif
PY_MISSING = simclr-xb needs Python >= 3.11 ($(or $(PYTHON),none of python3.13 python3.12 python3.11 python3 is)): install one (macOS: brew install python@3.12, or python.org) or run make PYTHON=/path/to/python3.12
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is pinned first: a bare `torch` requirement would download a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
# MLX's Linux CPU wheel links a slow reference BLAS; Debian's OpenBLAS (libopenblas0-pthread,
# any release) makes it several times faster. `simclr-xb` preloads it by itself (simclr_xb/blas.py);
# the test run preloads it here when installed. `make test OPENBLAS=` runs without it; the tests
# pass either way (CI runs the BLAS-sensitive ones both ways: .ci/run).
OPENBLAS ?= $(lastword $(sort $(wildcard /usr/lib/*-linux-gnu/openblas-pthread/libopenblasp-r*.so)))
RUNENV := $(if $(and $(OPENBLAS),$(wildcard $(OPENBLAS))),LD_PRELOAD=$(OPENBLAS),)

.PHONY: install demo test lint conformance conformance-tf2 clean

$(VENV)/.installed: pyproject.toml
	@test -n "$(PYTHON)" && $(PYTHON) -c '$(PY_OK)' 2>/dev/null || { echo "$(PY_MISSING)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(RUNENV) $(BIN)/simclr-xb demo --backend torch

test: install
	$(RUNENV) $(BIN)/python -m pytest -q

# ruff with the configuration in pyproject.toml ([tool.ruff]); installed into the venv once.
lint: install
	$(BIN)/ruff --version >/dev/null 2>&1 || $(BIN)/python -m pip install -q "ruff>=0.6"
	$(BIN)/ruff check .

conformance: install
	$(RUNENV) $(BIN)/simclr-xb conformance

# The official recipe checked against TensorFlow's own ops (installs the [tf2] extra once):
# the tf2 rows of the conformance suite and the crop sampler's two-sample test.
conformance-tf2: install
	$(BIN)/python -c "import tensorflow" 2>/dev/null || $(BIN)/python -m pip install -q -e '.[tf2]'
	$(RUNENV) $(BIN)/simclr-xb conformance --backends torch,mlx,tf2 --cases 'tf2,adjust_brightness,adjust_hue,nt_xent,lars'
	$(RUNENV) $(BIN)/python -m pytest -q tests/test_tf2_reference.py

clean:
	rm -rf $(VENV) runs
