"""Fixtures shared by the test modules."""
from __future__ import annotations

import os

import pytest

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
