"""The prepared GPU scripts (benchmarks/gpu_throughput.py, benchmarks/gpu_data.py) run their
CPU smoke tests, so a GPU session does not spend its minutes on a broken script."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("torch")


def test_gpu_data_smoke(tmp_path):
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_data.py"), "--device", "cpu", "--tiny",
                        "--work-dir", str(tmp_path / "jpegs"), "--workers", "1", "--steps", "3", "--warmup", "1",
                        "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["files"] == 40 and res["batch"] == 8 and res["resize"] in ("torch", "pillow")
    assert res["model_only_images_per_s"] > 0 and res["end_to_end_images_per_s"] > 0
    assert 0.0 <= res["data_wait_fraction"] < 1.0
    assert len(list((tmp_path / "jpegs" / "all" / "train").rglob("*.jpg"))) == 40


def test_gpu_throughput_smoke(tmp_path):
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_throughput.py"), "--device", "cpu", "--tiny",
                        "--configs", "resnet18-cifar", "--compile", "off", "--steps", "2", "--warmup", "1",
                        "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())["results"]
    assert len(res) == 1 and res[0]["images_per_s"] > 0 and res[0]["tflop_per_s"] > 0
