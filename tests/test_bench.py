"""Smoke tests of the benchmark suites: each runs at its tiny size (seconds) and must write a
well-formed JSON report. Timings are never asserted: they depend on the machine and its load."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from simclr_xb.bench import SUITES, run_suite
from simclr_xb.bench.common import REPORT_KEYS, check_report, format_table, format_targets, measure
from simclr_xb.bench.flops import layer_macs, model_flops, step_flops
from simclr_xb.config import ConfigError, LossConfig, ModelConfig, preset

torch = pytest.importorskip("torch")


def _has(backend: str) -> bool:
    from simclr_xb.backend import BackendUnavailable, get_backend
    try:
        get_backend(backend)
        return True
    except BackendUnavailable:
        return False


BACKENDS = tuple(b for b in ("torch", "mlx") if _has(b))


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _check(data: dict, path, suite: str) -> dict:
    assert path.exists() and path.name.startswith(f"{suite}-") and path.suffix == ".json"
    on_disk = json.loads(path.read_text())
    check_report(on_disk)
    assert on_disk["suite"] == suite and set(REPORT_KEYS) <= set(on_disk)
    assert on_disk["machine"]["logical_cpus"] >= 1 and "numpy" in on_disk["versions"]
    assert len(on_disk["load_avg"]["before"]) in (0, 3)
    return on_disk


# --------------------------------------------------------------------------- FLOPs


@pytest.mark.parametrize("arch, gmacs", [("resnet18", 1.814), ("resnet34", 3.663), ("resnet50", 4.089)])
def test_flops_match_published_resnet_counts(arch, gmacs):
    """torchvision's published multiply-accumulates at 224 px (1.81 / 3.66 / 4.09 G)."""
    macs = model_flops(ModelConfig(arch=arch, width=1.0), 224)["encoder_macs"]
    assert macs / 1e9 == pytest.approx(gmacs, abs=2e-3)


def test_flops_conventions():
    cfg = preset("tiny").model
    f = model_flops(cfg, 32)
    assert f["forward_flops"] == 2 * (f["encoder_macs"] + f["head_macs"])
    assert f["train_flops"] == 3 * f["forward_flops"]
    assert step_flops(cfg, 32, 256) == 512 * f["train_flops"]
    stem = layer_macs(cfg, 32)[0]  # 3x3 stride 1 on 32 px: 32 * 32 * 16 * 3 * 9
    assert (stem.name, stem.macs, stem.out_hw) == ("encoder.conv1", 32 * 32 * 16 * 3 * 9, 32)
    assert f["head_macs"] == 128 * 128 + 128 * 64


# --------------------------------------------------------------------------- common


def test_measure_and_formatting():
    t = measure(lambda: None, repeats=5, warmup=0)
    d = t.to_dict()
    assert d["repeats"] == 5 and d["min_s"] <= d["median_s"] <= d["max_s"]
    table = format_table([{"a": 1.5, "b": "x"}], [("A", "a", ".1f"), ("B", "b", "")])
    assert table.splitlines()[2] == "| 1.5 | x |"
    text = format_targets([{"name": "t", "value": 2.0, "target": 1.0, "met": True, "note": ""}])
    assert "MET" in text


def test_check_report_names_what_is_missing():
    with pytest.raises(ValueError, match="rows"):
        check_report({k: ([] if k in ("rows", "targets") else 1) for k in REPORT_KEYS})
    with pytest.raises(ValueError, match="'suite'"):
        check_report({"schema": 1})


def test_unknown_suite_and_size():
    with pytest.raises(ValueError, match="unknown benchmark suite"):
        run_suite("nope")
    with pytest.raises(ValueError, match="size"):
        run_suite("augment", size="huge")


# --------------------------------------------------------------------------- suites at tiny size


def test_augment_suite_tiny(tmp_path):
    data, path = run_suite("augment", "tiny", tmp_path, backends=BACKENDS, workers=0, log=lambda m: None)
    d = _check(data, path, "augment")
    pipelines = {r["pipeline"] for r in d["rows"]}
    assert "pillow-dataloader" in pipelines and "torch-batched" in pipelines
    assert ("mlx-batched" in pipelines) == ("mlx" in BACKENDS)
    for r in d["rows"]:
        assert r["per_s"] > 0 and r["repeats"] == 2 and r["views"] == 2 * r["images"]
    assert {t["name"].split(" at ")[-1] for t in d["targets"]} == {"32px", "224px_blur"}


def test_train_suite_tiny(tmp_path):
    data, path = run_suite("train", "tiny", tmp_path, backends=BACKENDS, log=lambda m: None)
    d = _check(data, path, "train")
    modes = {(r["backend"], r["mode"]) for r in d["rows"]}
    assert {("torch", "e2e"), ("torch", "model"), ("torch", "usual")} <= modes
    for r in d["rows"]:
        assert r["images_per_s"] > 0 and r["gflop_per_s"] > 0 and r["step_gflop"] > 0
    e2e = [r for r in d["rows"] if r["mode"] == "e2e"]
    assert e2e and all("of_model_ceiling" in r for r in e2e)
    usual = next(r for r in d["rows"] if r["mode"] == "usual")
    # the batched side of the usual-loop comparison is timed in the same rounds, repeats alike
    assert usual["vs_best_precision"] in {r["precision"] for r in e2e if r["backend"] == "torch"}
    assert usual["vs_best_images_per_s"] > 0 and len(usual["vs_best_runs_s"]) == usual["repeats"]
    t = next(t for t in d["targets"] if "usual loop" in t["name"])
    assert t["value"] == pytest.approx(usual["vs_best_images_per_s"] / usual["images_per_s"])


def test_ntxent_suite_tiny_through_the_cli(tmp_path):
    from simclr_xb.cli import main
    res = CliRunner().invoke(main, ["bench", "ntxent", "--size", "tiny", "--out", str(tmp_path),
                                    "--backends", ",".join(BACKENDS), "--machine", "testbox"])
    assert res.exit_code == 0, res.output
    path = tmp_path / "ntxent-testbox.json"
    d = _check({}, path, "ntxent")
    assert d["machine"]["id"] == "testbox" and d["command"].startswith("simclr-xb bench ntxent")
    methods = {(r["backend"], r["method"]) for r in d["rows"]}
    assert {(b, m) for b in BACKENDS for m in ("exact", "chunked")} == methods
    biggest = [r for r in d["rows"] if r["n"] == max(d["settings"]["sizes"])]
    assert all("peak_mb" in r and r["peak_mb"] >= 0 for r in biggest)
    losses = {r["n"]: [] for r in d["rows"]}
    for r in d["rows"]:
        losses[r["n"]].append(r["loss"])
    for values in losses.values():  # exact and chunked, both backends: the same loss
        assert np.ptp(values) < 1e-4


def test_quality_suite_tiny(tmp_path):
    data, path = run_suite("quality", "tiny", tmp_path, backend="torch", work_dir=tmp_path / "runs",
                           plot_path=tmp_path / "q.png", log=lambda m: None)
    d = _check(data, path, "quality")
    feats = {(r["features"], r["epoch"]) for r in d["rows"]}
    assert {("random-init encoder", 0), ("SimCLR encoder", 0), ("SimCLR encoder", 2)} <= feats
    for r in d["rows"]:
        assert 0 <= r["linear_top1"] <= 100 and 0 <= r["knn_top1"] <= 100
    assert (tmp_path / "q.png").stat().st_size > 0
    # a second call resumes the finished run instead of training again
    data2, _ = run_suite("quality", "tiny", tmp_path, backend="torch", work_dir=tmp_path / "runs",
                         log=lambda m: None)
    assert all(r["resumed"] for r in data2["rows"])


def test_bench_cli_rejects_bad_options(tmp_path):
    from simclr_xb.cli import main
    res = CliRunner().invoke(main, ["bench", "train", "--backends", "jax", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "unknown backend 'jax'" in res.output
    res = CliRunner().invoke(main, ["bench", "nope"])
    assert res.exit_code != 0
    assert SUITES == ("augment", "train", "ntxent", "quality", "data")


# --------------------------------------------------------------------------- loss.chunk


def test_loss_chunk_config_is_validated():
    assert LossConfig().chunk is None
    LossConfig(chunk=1).validate()
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="loss.chunk"):
            LossConfig(chunk=bad).validate()
    cfg = preset("tiny").with_overrides(["loss.chunk=64"])
    assert cfg.loss.chunk == 64


def test_bench_refuses_zero_files_and_unknown_backends(tmp_path):
    from simclr_xb.cli import main
    r = CliRunner().invoke(main, ["bench", "data", "--files", "0", "--out", str(tmp_path)])
    assert r.exit_code != 0 and "--files must be >= 1" in r.output
    r = CliRunner().invoke(main, ["bench", "augment", "--backends", "tf2", "--out", str(tmp_path)])
    assert r.exit_code != 0 and "unknown backend 'tf2'" in r.output
