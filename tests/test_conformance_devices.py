"""Conformance per device: mlx-cpu and mlx-gpu are separate implementations, every row and
the JSON name the device, tolerances are keyed by (case, dtype, device), MLX_ENABLE_TF32 is
set to 0 and recorded."""
import json
import os

import pytest

from simclr_xb.conformance import report, runner, tolerances
from simclr_xb.conformance.cases import all_cases

mx = pytest.importorskip("mlx.core")
HAS_GPU = mx.is_available(mx.gpu)


def test_mlx_expands_to_both_devices_and_the_gpu_pair_is_gpu_vs_cpu():
    assert runner.expand_backends(["torch", "mlx"]) == ["torch", "mlx-cpu", "mlx-gpu"]
    assert runner.expand_backends(["mlx-cpu", "mlx"]) == ["mlx-cpu", "mlx-gpu"]
    pairs = runner._pairs(["oracle", "torch", "mlx-cpu", "mlx-gpu"], True)
    assert ("mlx-gpu", "mlx-cpu") in pairs and ("mlx-cpu", "mlx-gpu") not in pairs
    assert ("mlx-gpu", "oracle") in pairs and ("torch", "mlx-gpu") in pairs


def test_rows_and_json_name_the_device(tmp_path):
    results = runner.run(["torch", "mlx"], "nt_xent.value.N2.d8", ("float32", "float64"))
    by_pair = {(r.pair, r.dtype): r for r in results}
    r = by_pair[("mlx-cpu~oracle", "float32")]
    assert r.status == "PASS" and r.devices == "mlx-cpu=cpu, oracle=cpu"
    assert "cpu~cpu" in report.row(r)
    if HAS_GPU:
        assert by_pair[("mlx-gpu~mlx-cpu", "float32")].devices == "mlx-gpu=gpu, mlx-cpu=cpu"
        assert by_pair[("mlx-gpu~*", "float64")].status == "SKIP"  # no float64 on Metal
    else:
        skips = [r for r in results if r.pair == "mlx-gpu~*"]
        assert skips and all(r.status == "SKIP" and "no GPU" in r.detail for r in skips)
        assert not any("mlx-gpu" in r.pair and r.status != "SKIP" for r in results)
    report.write_json(results, tmp_path / "r.json", {"mlx": "x"})
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["mlx_enable_tf32"] == "0"
    assert doc["devices"]["mlx-cpu"] == "cpu"
    assert doc["devices"]["mlx-gpu"] == ("gpu" if HAS_GPU else "not available")
    assert all("devices" in r for r in doc["results"])


def test_runs_set_full_float32():
    os.environ["MLX_ENABLE_TF32"] = "1"
    try:
        runner.run(["mlx-cpu"], "schedule", ("float64",))
        assert os.environ["MLX_ENABLE_TF32"] == "0"
    finally:
        os.environ["MLX_ENABLE_TF32"] = "0"


def test_tolerances_are_keyed_by_device_and_gpu_entries_are_unmeasured():
    cpu = tolerances.tolerance_for("conv2d.winograd.3x3s1p1.c128", "float32", "cpu")
    gpu = tolerances.tolerance_for("conv2d.winograd.3x3s1p1.c128", "float32", "gpu")
    assert cpu == tolerances.DEFAULT["float32"]  # negative control: the CPU keeps its own
    assert gpu != cpu and gpu.atol > cpu.atol
    for (case, _dtype, device), tol in tolerances.DEVICE_OVERRIDES.items():
        if device == "gpu":
            assert tol.reason.startswith(tolerances.NOT_MEASURED), case
    # a GPU pair picks the GPU key; a CPU pair the CPU one
    assert runner.pair_device("mlx-gpu", "mlx-cpu") == "gpu"
    assert runner.pair_device("torch", "mlx-cpu") == "cpu"


def test_winograd_sized_cases_exist():
    """Metal's Winograd path needs many channels and output pixels: C = O = 128, N*H*W >= 4096."""
    names = {c.name: c for c in all_cases()}
    import numpy as np
    conv = names["conv2d.winograd.3x3s1p1.c128"]
    x, w, stride, pad = conv.make(np.random.default_rng(0), "float32")
    assert w.shape[:2] == (128, 128) and w.shape[2:] == (3, 3) and stride == 1
    assert x.shape[0] * x.shape[1] * x.shape[2] >= 4096
    for mode in ("train", "eval"):
        x, _, spec, *_ = names[f"block.basic.winograd.c128.{mode}"].make(np.random.default_rng(0), "float32")
        assert (spec.in_ch, spec.out_ch, spec.stride) == (128, 128, 1)
        assert x.shape[0] * x.shape[1] * x.shape[2] >= 4096
