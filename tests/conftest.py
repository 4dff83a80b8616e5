"""Fixtures shared by the test modules."""
from __future__ import annotations

import os

import pytest

# Full float32 in every test, as in conformance: MLX's default (MLX_ENABLE_TF32 unset = 1) lets
# M5-class GPUs run float32 matmuls and convolutions at reduced precision
# (docs/src/usage/precision.rst). MLX reads the variable at its first such op, so it is set
# here, before any test imports mlx; subprocesses the tests start inherit it.
os.environ["MLX_ENABLE_TF32"] = "0"


def pytest_report_header(config):
    return f"MLX_ENABLE_TF32={os.environ.get('MLX_ENABLE_TF32')} (full float32, set by tests/conftest.py)"


# `simclr-xb` processes started by tests keep this process's BLAS: without this, simclr_xb/blas.py
# would re-execute an MLX child with OpenBLAS preloaded, and its float32 results would no longer
# be comparable with the parent's (tests/test_blas.py lifts it where it tests the re-execution).
os.environ.setdefault("SIMCLR_XB_NO_OPENBLAS", "1")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch intra-op thread for the module, restored afterwards: tiny tensors gain nothing
    from threads, in-process runs become bitwise repeatable, and on a 2-core machine shared with
    other test processes an OpenMP barrier waiting for a descheduled worker makes each op up to
    ~10x slower. A no-op without torch."""
    try:
        import torch
    except ImportError:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
