# Two commands do all the set-up on a fresh machine:
#   make demo   - venv + install, then pre-train on the built-in `shapes` dataset and print the accuracy
#   make test   - venv + install, then run the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is pinned first: a bare `torch` requirement would download a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
# MLX's Linux CPU wheel links a slow reference BLAS; Debian's OpenBLAS makes it ~8x faster.
OPENBLAS := /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblasp-r0.3.21.so
RUNENV := $(if $(wildcard $(OPENBLAS)),LD_PRELOAD=$(OPENBLAS),)

.PHONY: install demo test conformance conformance-tf2 clean

$(VENV)/.installed: pyproject.toml
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
