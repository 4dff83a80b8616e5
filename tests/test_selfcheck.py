"""``simclr-xb selfcheck`` on this machine (Linux CPU here: every GPU field "not available")."""
import json
import os

import pytest
from click.testing import CliRunner

pytest.importorskip("mlx.core")

from simclr_xb.cli import main  # noqa: E402
from simclr_xb.selfcheck import NOT_AVAILABLE, failed  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("selfcheck") / "report.json"
    r = CliRunner().invoke(main, ["selfcheck", "--json", str(out), "--steps", "2", "--batch-size", "4",
                                  "--image-size", "16", "--width", "0.125",
                                  "--cases", "nt_xent.value.N2.d8,conv2d.3x3s1p1"])
    assert r.exit_code == 0, r.output + str(r.exception)
    assert "wrote" in r.output
    return json.loads(out.read_text())


def test_every_section_is_written(report):
    for key in ("system", "mlx", "tf32", "conformance", "training", "distributed", "load_average"):
        assert key in report, key
    assert report["system"]["chip"] and report["system"]["os"]
    assert report["mlx"]["version"] and "cpu" in report["mlx"]["devices"]
    assert report["tf32"]["used_here"].startswith("0")
    assert os.environ["MLX_ENABLE_TF32"] == "0"
    c = report["conformance"]
    assert c["mlx-cpu/float32"]["PASS"] == 2 and c["mlx-cpu/float64"]["PASS"] == 2
    assert c["mlx-gpu/float64"].startswith(NOT_AVAILABLE)  # never on Metal
    for mode in ("eager", "compiled"):
        run = report["training"]["cpu"][mode]
        assert len(run["losses"]) == 2 and run["peak_memory_bytes"] > 0 and run["images_per_s"] > 0
    # eager and compiled steps agree to float32 rounding from the same init and views
    assert report["training"]["cpu"]["max_abs_loss_diff_eager_vs_compiled"] < 1e-4
    ring = report["distributed"]["ring_2_ranks_loopback"]
    assert ring["status"] in ("PASS", "SKIP"), ring
    if ring["status"] == "PASS":
        assert [g["all_sum"] for g in ring["results"]] == [[3.0, 10.0]] * 2


def test_gpu_fields_say_not_available_without_a_gpu(report):
    if report["mlx"]["gpu_available"]:
        pytest.skip("this machine has an MLX GPU")
    assert report["mlx"]["gpu"] == NOT_AVAILABLE
    assert report["training"]["gpu"] == NOT_AVAILABLE
    assert report["conformance"]["mlx-gpu/float32"].startswith(NOT_AVAILABLE)


def test_failed_flags_a_conformance_failure(report):
    """Negative control: a report with one FAIL row is a failed check."""
    assert not failed(report)
    bad = json.loads(json.dumps(report))
    bad["conformance"]["mlx-cpu/float32"]["FAIL"] = 1
    assert failed(bad)


def test_bad_steps_is_one_line_error(tmp_path):
    r = CliRunner().invoke(main, ["selfcheck", "--steps", "0", "--json", str(tmp_path / "r.json")])
    assert r.exit_code != 0 and "--steps must be >= 1" in r.output


def test_unwritable_report_fails_before_the_checks(tmp_path, monkeypatch):
    """The --json file's folder is checked first: no minutes of checks before the error."""
    import simclr_xb.selfcheck as sc
    monkeypatch.setattr(sc, "run_selfcheck", lambda **kw: pytest.fail("ran the checks first"))
    r = CliRunner().invoke(main, ["selfcheck", "--json", str(tmp_path / "missing" / "r.json")])
    assert r.exit_code != 0 and "missing" in r.output and "Traceback" not in r.output

