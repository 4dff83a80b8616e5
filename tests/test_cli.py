"""CLI surface: help, info, config errors (named fields), and the no-stray-names rule."""
import subprocess
import sys

from click.testing import CliRunner

from simclr_xb.cli import main


def test_help_lists_commands():
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0
    for cmd in ("info", "train", "eval", "conformance", "data", "demo"):
        assert cmd in r.output


def test_each_command_has_help():
    for cmd in ("info", "train", "eval", "conformance", "demo", "data"):
        r = CliRunner().invoke(main, [cmd, "--help"])
        assert r.exit_code == 0 and "Usage" in r.output, cmd


def test_info_lists_backends():
    r = CliRunner().invoke(main, ["info"])
    assert r.exit_code == 0
    assert "torch" in r.output and "mlx" in r.output


def test_bad_config_value_names_the_field(tmp_path):
    r = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "o"), "--temperature", "0"])
    assert r.exit_code != 0
    assert "loss.temperature" in r.output and "> 0" in r.output
    r = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "o"), "--set", "model.arch=vgg"])
    assert r.exit_code != 0 and "model.arch" in r.output
    r = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "o"), "--set", "nope.x=1"])
    assert r.exit_code != 0 and "nope.x" in r.output and "section" in r.output


def test_unknown_preset_and_backend_are_rejected(tmp_path):
    r = CliRunner().invoke(main, ["train", "--out", str(tmp_path), "--preset", "huge"])
    assert r.exit_code != 0 and "huge" in r.output
    r = CliRunner().invoke(main, ["train", "--out", str(tmp_path), "--backend", "jax"])
    assert r.exit_code != 0 and "jax" in r.output


def test_help_does_not_import_frameworks():
    code = ("import sys; from click.testing import CliRunner; from simclr_xb.cli import main; "
            "CliRunner().invoke(main, ['--help']); "
            "assert 'torch' not in sys.modules and 'mlx' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
