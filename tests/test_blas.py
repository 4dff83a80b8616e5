"""simclr_xb.blas: OpenBLAS preloaded for MLX on Linux without the user setting LD_PRELOAD.

The decision is tested as a pure function (platform, environment, command line, installed or
not); the re-execution through a recorded ``os.execve``; and once for real in a subprocess
(with a stand-in library file, so the test needs no OpenBLAS)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from simclr_xb import blas

LIB = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblasp-r0.3.21.so"
TRAIN_MLX = ["train", "--backend", "mlx", "--preset", "tiny"]


def decide(argv=TRAIN_MLX, env=None, platform="linux", mlx=True, lib=LIB):
    return blas.decide(argv, env or {}, platform, mlx, lib)


def test_linux_mlx_with_openblas_reexecutes_with_one_line():
    d = decide()
    assert d.action == "reexec" and d.library == LIB
    assert d.message.count("\n") == 0 and f"LD_PRELOAD={LIB}" in d.message
    assert blas.OPT_OUT_ENV + "=1" in d.message


def test_without_openblas_one_line_says_how_much_faster_and_how_to_install():
    d = decide(lib=None)
    assert d.action == "hint" and d.library is None
    assert blas.SPEEDUP in d.message and "apt-get install libopenblas0-pthread" in d.message
    assert d.message.count("\n") == 0


@pytest.mark.parametrize("kw", [
    {"platform": "darwin"}, {"platform": "win32"},      # Metal / Accelerate: nothing to do
    {"mlx": False},                                      # mlx not installed
    {"argv": ["train", "--backend", "torch"]},           # another backend
    {"argv": ["eval", "--checkpoint", "x.h5"]},          # backend unknown from the command line
    {"env": {blas.OPT_OUT_ENV: "1"}},                    # the opt-out
    {"env": {blas.REEXEC_ENV: "1"}},                     # already the re-executed process
    {"env": {"LD_PRELOAD": LIB}},                        # already preloaded (e.g. the Makefile)
    {"env": {"LD_PRELOAD": "/opt/x/libopenblas.so.0"}},  # another OpenBLAS preloaded by hand
])
def test_nothing_happens(kw):
    assert decide(**kw) == blas.Decision("none")
    assert decide(**{**kw, "lib": None}) == blas.Decision("none")


def test_opt_out_zero_does_not_opt_out():
    assert decide(env={blas.OPT_OUT_ENV: "0"}).action == "reexec"


@pytest.mark.parametrize("argv,uses", [
    (["train", "--backend", "mlx"], True), (["train", "--backend=mlx"], True),
    (["train", "--backend", "torch"], False), (["demo"], False),
    (["conformance", "--backends", "torch,mlx"], True), (["conformance", "--backends", "torch"], False),
    (["conformance"], True), (["bench", "train"], True), (["bench", "train", "--backends", "torch"], False),
    (["train", "--backend", "mlx", "--nproc", "2"], True),
])
def test_which_command_lines_use_mlx(argv, uses):
    assert blas.uses_mlx(argv) is uses


def test_other_ranks_reexecute_silently():
    """mlx.launch started by hand: every rank re-executes once, only rank 0 prints."""
    assert decide(env={"MLX_RANK": "1"}) == blas.Decision("reexec", LIB, "")
    assert decide(env={"MLX_RANK": "0"}).message
    assert decide(env={"MLX_RANK": "1"}, lib=None) == blas.Decision("hint", None, "")


def test_reexec_env_puts_the_library_first_and_sets_the_guard():
    env = {"LD_PRELOAD": "/x/libother.so", "A": "b"}
    new = blas.reexec_env(env, LIB)
    assert new["LD_PRELOAD"] == f"{LIB} /x/libother.so" and new[blas.REEXEC_ENV] == "1"
    assert new["A"] == "b" and env == {"LD_PRELOAD": "/x/libother.so", "A": "b"}  # input untouched
    assert blas.reexec_env({}, LIB)["LD_PRELOAD"] == LIB
    assert blas.decide(TRAIN_MLX, new, "linux", True, LIB) == blas.Decision("none")  # no loop


def test_find_openblas_takes_the_named_file_or_nothing(tmp_path):
    lib = tmp_path / "libopenblas.so"
    lib.write_bytes(b"")
    assert blas.find_openblas({blas.PATH_ENV: str(lib)}) == str(lib)
    assert blas.find_openblas({blas.PATH_ENV: str(tmp_path / "missing.so")}) is None


def test_is_cli_process():
    assert blas.is_cli_process("/home/u/.venv/bin/simclr-xb")
    cli = os.path.join(os.path.dirname(blas.__file__), "cli.py")
    assert blas.is_cli_process(cli)
    assert not blas.is_cli_process("/usr/bin/pytest")
    assert not blas.is_cli_process("/x/site-packages/pytest/__main__.py")
    assert not blas.is_cli_process("-c")


def _fake_process(monkeypatch, argv0, lib):
    calls = []
    monkeypatch.setattr(sys, "argv", [argv0, *TRAIN_MLX])
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(blas, "find_openblas", lambda environ=None: lib)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(os, "execve", lambda *a: calls.append(a))
    for k in (blas.OPT_OUT_ENV, blas.REEXEC_ENV, "LD_PRELOAD", "MLX_RANK"):
        monkeypatch.delenv(k, raising=False)
    return calls


def test_the_command_reexecutes_itself_once_with_the_preload(monkeypatch, capsys):
    calls = _fake_process(monkeypatch, "/venv/bin/simclr-xb", LIB)
    d = blas.use_openblas_for_mlx()
    assert d.action == "reexec" and len(calls) == 1
    exe, argv, env = calls[0]
    assert exe == sys.executable and argv[0] == sys.executable
    assert env["LD_PRELOAD"] == LIB and env[blas.REEXEC_ENV] == "1"
    assert capsys.readouterr().err.count("re-running with LD_PRELOAD=") == 1


def test_a_host_calling_the_cli_in_process_is_never_reexecuted(monkeypatch, capsys):
    calls = _fake_process(monkeypatch, "/usr/bin/pytest", LIB)
    assert blas.use_openblas_for_mlx() == blas.Decision("none") and not calls
    assert capsys.readouterr().err == ""


def _cli_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in (blas.OPT_OUT_ENV, blas.REEXEC_ENV, "LD_PRELOAD")}
    env.update(extra)
    return env


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux's")
def test_subprocess_reexecutes_once_with_ld_preload(tmp_path):
    """The real thing: `python -m simclr_xb.cli train --backend mlx --help` with a stand-in
    library (an empty file). The loader of the re-executed process tries to preload it (and
    says so), the loop guard stops a second re-execution, the command runs once."""
    if importlib.util.find_spec("mlx") is None:
        pytest.skip("mlx is not installed")
    fake = tmp_path / "libopenblas-standin.so"
    fake.write_bytes(b"")
    r = subprocess.run([sys.executable, "-m", "simclr_xb.cli", "train", "--backend", "mlx", "--help"],
                       env=_cli_env(**{blas.PATH_ENV: str(fake)}), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("simclr-xb: re-running with LD_PRELOAD=") == 1, r.stderr
    assert str(fake) in r.stderr.splitlines()[-1]  # ld.so: "... from LD_PRELOAD cannot be preloaded"
    assert r.stdout.count("Usage:") == 1
    r = subprocess.run([sys.executable, "-m", "simclr_xb.cli", "train", "--backend", "mlx", "--help"],
                       env=_cli_env(**{blas.PATH_ENV: str(fake), blas.OPT_OUT_ENV: "1"}),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    r = subprocess.run([sys.executable, "-m", "simclr_xb.cli", "train", "--backend", "mlx", "--help"],
                       env=_cli_env(**{blas.PATH_ENV: str(tmp_path / "none.so")}),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr.count("apt-get install libopenblas0-pthread") == 1, r.stderr
