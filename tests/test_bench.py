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


# --------------------------------------------------------------------------- data: torchvision baseline

FAKE_TV = '''#!{python}
"""A stand-in for a torchvision interpreter: answers tv_baseline's command line with JSON
whose steady CPU-ms is 100 + size (full) or 10 + size (crop-flip), and logs its arguments."""
import json, sys
a = sys.argv[1:]
opt = dict(zip(a[2::2], a[3::2]))
files = open(opt["--files"]).read().split()
with open({log!r}, "a") as f:
    f.write(json.dumps({{"argv": a, "files": files}}) + "\\n")
size, mode = int(opt["--size"]), opt["--mode"]
ms = (100.0 if mode == "full" else 10.0) + size
print("torch warnings may come first")
print(json.dumps({{"mode": mode, "size": size, "workers": int(opt["--workers"]),
                  "batch_size": int(opt["--batch-size"]), "pairs": len(files),
                  "short_pairs": int(opt["--short-pairs"]), "cpu_s": 1.0, "short_cpu_s": 0.5, "wall_s": 1.0,
                  "cpu_ms_per_pair": ms, "marginal_cpu_ms_per_pair": ms, "steady_cpu_ms_per_pair": ms,
                  "pairs_per_s": 5.0,
                  "start_method": "fork", "versions": {{"torchvision": "fake"}}}}))
'''


def _fake_tv(tmp_path):
    import sys
    log = tmp_path / "fake-tv.log"
    exe = tmp_path / "fake-python"
    exe.write_text(FAKE_TV.format(python=sys.executable, log=str(log)))
    exe.chmod(0o755)
    return exe, log


def test_bench_data_tiny_with_a_fake_torchvision_interpreter(tmp_path, monkeypatch):
    """The CLI's --torchvision-python runs tv_baseline's command line per size and mode on the
    files of our loader rows; its JSON becomes loader rows, same-run ratios and the targets
    (named "torchvision", not the Pillow stand-in); the end-to-end rows are there."""
    from simclr_xb.bench.data import LOADER_PAIRS, TARGETS
    from simclr_xb.cli import main
    monkeypatch.delenv("SIMCLR_XB_TORCHVISION_PYTHON", raising=False)
    exe, log = _fake_tv(tmp_path)
    jpegs, out = tmp_path / "jpegs", tmp_path / "out"
    r = CliRunner().invoke(main, ["bench", "data", "--size", "tiny", "--files", "24", "--work-dir", str(jpegs),
                                  "--out", str(out), "--torchvision-python", str(exe)])
    assert r.exit_code == 0, r.output
    data = json.loads(next(out.glob("data-*.json")).read_text())
    check_report(data)
    assert data["settings"]["targets_from"] == "torchvision"
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(c["argv"][c["argv"].index("--size") + 1], c["argv"][c["argv"].index("--mode") + 1]) for c in calls] \
        == [(s, m) for s in ("224", "96", "32") for m in ("full", "crop-flip")]
    files = calls[0]["files"]
    assert len(files) == LOADER_PAIRS["tiny"] and all(c["files"] == files for c in calls)
    assert all((jpegs / "train" / f).is_file() for f in files)
    loader = [x for x in data["rows"] if x["bench"] == "loader_cpu_per_pair"]
    assert sorted((x["size"], x["side"]) for x in loader) == sorted(
        (s, side) for s in (224, 96, 32) for side in ("ours", "torchvision-full", "torchvision-crop-flip"))
    ours = {x["size"]: x for x in loader if x["side"] == "ours"}
    assert all(x["pairs"] == LOADER_PAIRS["tiny"] and x["workers"] == 2 and x["steady_cpu_ms_per_pair"] > 0
               for x in ours.values())
    ratios = {x["size"]: x for x in data["rows"] if x["bench"] == "loader_ratio"}
    for s, o in ours.items():
        m = o["steady_cpu_ms_per_pair"]
        want = (100 + s) / m if m > 0 else None
        assert ratios[s]["vs_torchvision_full"] == (pytest.approx(want) if want else None)
    t = {x["name"]: x for x in data["targets"]}
    assert len(t) == 4 and all(n.startswith("torchvision ") for n in t)
    assert t["torchvision full / ours CPU-ms per pair at 224 px"]["target"] == TARGETS["vs_usual_full_224"]
    assert t["torchvision full / ours CPU-ms per pair at 224 px"]["value"] == ratios[224]["vs_torchvision_full"]
    from simclr_xb.bench.data_table import table
    md = table(data)
    assert "| torchvision full / ours (goal >= 2.5 at 224) |" in md and "targets from torchvision" in md
    assert f"{ratios[224]['vs_torchvision_full']:.2f}x" in md
    e2e = {x["mode"]: x for x in data["rows"] if x["bench"] == "e2e"}
    assert set(e2e) == {"e2e", "in-memory", "model"} and "share" in e2e["e2e"]["note"]
    assert e2e["e2e"]["of_model_ceiling"] == pytest.approx(e2e["e2e"]["images_per_s"] / e2e["model"]["images_per_s"])


def test_bench_data_targets_fall_back_to_the_pillow_stand_in():
    from simclr_xb.bench.data import _targets
    in_process = {S: {"vs_usual_full": 3.0, "vs_crop_flip": 2.0} for S in (224, 96, 32)}
    ratios = {S: {"vs_torchvision_full": 5.0, "vs_torchvision_crop_flip": 1.5} for S in (224, 96, 32)}
    stand_in = _targets(in_process, ratios, real=False)
    assert all("Pillow stand-in" in t.name for t in stand_in) and [t.value for t in stand_in] == [3.0, 2.0, 2.0, 2.0]
    real = _targets(in_process, ratios, real=True)
    assert all(t.name.startswith("torchvision") for t in real) and [t.value for t in real] == [5.0, 1.5, 1.5, 1.5]
    assert [t.met for t in real] == [True, True, False, False]


def test_torchvision_baseline_output_and_interpreter_are_checked(tmp_path, monkeypatch):
    from simclr_xb.bench import data_loaders
    from simclr_xb.bench.tv_baseline import RESULT_KEYS, blur_kernel
    good = {k: 1.0 for k in RESULT_KEYS}
    assert data_loaders.parse_result("noise\n" + json.dumps(good) + "\n\n", "tv")["pairs_per_s"] == 1.0
    assert data_loaders.parse_result(json.dumps({**good, "marginal_cpu_ms_per_pair": -0.5}), "tv")
    for text, msg in (("", "printed nothing"), ("oops", "not JSON"), ("[1]", "expected a JSON object"),
                      (json.dumps({k: v for k, v in good.items() if k != "wall_s"}), "lacks \\['wall_s'\\]"),
                      (json.dumps({**good, "cpu_ms_per_pair": 0}), "cpu_ms_per_pair is 0"),
                      (json.dumps({**good, "pairs_per_s": "fast"}), "pairs_per_s is 'fast'")):
        with pytest.raises(ValueError, match=msg):
            data_loaders.parse_result(text, "the torchvision baseline")
    monkeypatch.delenv(data_loaders.ENV_VAR, raising=False)
    assert data_loaders.interpreter(None) is None
    monkeypatch.setenv(data_loaders.ENV_VAR, str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="SIMCLR_XB_TORCHVISION_PYTHON .*nope.* is not an executable"):
        data_loaders.interpreter(None)
    with pytest.raises(ValueError, match="--torchvision-python"):
        data_loaders.interpreter(str(tmp_path))
    failing = tmp_path / "failing-python"
    failing.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named torchvision' >&2\nexit 3\n")
    failing.chmod(0o755)
    with pytest.raises(ValueError, match="exit code 3: ModuleNotFoundError: No module named torchvision"):
        data_loaders.torchvision(str(failing), str(tmp_path), ["a/b.jpg"], 32, "full", 1, 2, 1)
    assert (blur_kernel(224), blur_kernel(96)) == (23, 9)
    from simclr_xb.cli import main
    r = CliRunner().invoke(main, ["bench", "data", "--size", "tiny", "--out", str(tmp_path / "o"),
                                  "--torchvision-python", str(tmp_path / "nope")])
    assert r.exit_code != 0 and "is not an executable file" in r.output


def test_tv_baseline_imports_no_torchvision_at_module_level():
    import subprocess
    import sys
    code = ("import sys; import simclr_xb.bench.tv_baseline, simclr_xb.bench.data_loaders; "
            "print(sorted(m for m in ('torch', 'torchvision', 'simclr_xb.data') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_real_torchvision_baseline_at_a_tiny_size(tmp_path):
    """One real run of tv_baseline with $SIMCLR_XB_TORCHVISION_PYTHON (skipped without it):
    both modes on the listed files; a file not in the folder is named."""
    import os
    python = os.environ.get("SIMCLR_XB_TORCHVISION_PYTHON")
    if not python:
        pytest.skip("SIMCLR_XB_TORCHVISION_PYTHON is not set (benchmarks/README.md: the torchvision venv)")
    from simclr_xb.bench import data_loaders
    from simclr_xb.bench.data import make_jpeg_folder
    from simclr_xb.data import open_dataset
    root = make_jpeg_folder(tmp_path / "jpegs", 12)
    ds = open_dataset(f"folder:{root}")
    files = data_loaders.split_relative(ds, np.arange(8), str(root))
    for mode in ("full", "crop-flip"):
        out = data_loaders.torchvision(python, str(root), files, 96, mode, workers=1, batch=2, short=4, timeout=300)
        assert out["side"] == f"torchvision-{mode}" and out["pairs"] == 8 and out["short_pairs"] == 4
        assert out["size"] == 96 and out["workers"] == 1 and "torchvision" in out["versions"]
    with pytest.raises(ValueError, match="not in .*first: c00/missing.jpg"):
        data_loaders.torchvision(python, str(root), files[:3] + ["c00/missing.jpg"], 32, "full", 1, 2, 1)


def test_steady_cpu_counts_the_live_workers(tmp_path, monkeypatch):
    """steady_cpu_s adds the workers' /proc CPU to the main process's; ours' steady epoch
    hands it the pids of the StreamLoader's live workers (a loader without them would count
    the main process only)."""
    import os

    from simclr_xb.bench import data_loaders, tv_baseline
    assert tv_baseline.proc_cpu_s(os.getpid()) > 0  # this process has run: the /proc parse reads it
    ticks = {101: iter([1.0, 3.5]), 102: iter([2.0, 2.25])}
    monkeypatch.setattr(tv_baseline, "proc_cpu_s", lambda pid: next(ticks[pid]))
    cpu, wall = tv_baseline.steady_cpu_s([101, 102], lambda: None)
    assert cpu >= 2.75 and wall >= 0  # 2.5 + 0.25 from the workers, and the main process's own
    seen = []

    def spy(pids, run):
        seen.append(list(pids))
        run()
        return 1.0, 1.0
    monkeypatch.setattr(data_loaders, "steady_cpu_s", spy)
    from simclr_xb.bench.data import make_jpeg_folder
    from simclr_xb.data import open_dataset
    ds = open_dataset(f"folder:{make_jpeg_folder(tmp_path / 'jpegs', 8)}")
    cpu, wall, pairs = data_loaders._stream_steady(ds, np.arange(8), 32, 2, 4, "pillow")
    assert pairs == 8 and len(seen) == 1 and len(seen[0]) == 2 and all(p > 0 for p in seen[0])
