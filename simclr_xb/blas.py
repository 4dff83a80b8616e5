"""OpenBLAS for MLX on Linux without setting LD_PRELOAD by hand.

MLX's Linux CPU wheel calls a slow reference BLAS (cblas_sgemm in plain loops); Debian's
``libopenblas0-pthread`` exports the same symbols, and preloading it makes MLX's matmuls and
convolutions several times faster (benchmarks/README.md, "OpenBLAS for MLX on Linux"). The
loader only honours ``LD_PRELOAD`` at process start, so :func:`use_openblas_for_mlx` (called once
at the start of the ``simclr-xb`` command) re-executes the command ONCE with it set:

* only on Linux, only when the command line selects the MLX backend (``--backend mlx``, or
  ``--backends`` naming mlx, or ``conformance``/``bench`` without ``--backends``: their default
  includes mlx) and only when mlx is installed;
* not when ``SIMCLR_XB_NO_OPENBLAS=1`` (the opt-out), when ``LD_PRELOAD`` already names an
  OpenBLAS, or when this process is itself the re-executed one (``SIMCLR_XB_OPENBLAS_REEXEC``
  is set in its environment: no loop even if the loader ignored the preload);
* it prints one line to stderr saying what it does and how to opt out. Ranks started by
  ``simclr-xb train --nproc`` inherit the parent's environment, hence its preload, and do not
  re-execute again; ranks started by hand with ``mlx.launch`` re-execute each (once) and only
  rank 0 prints.

When no OpenBLAS is installed it prints one line saying how much faster MLX would be and how
to install it. The decision is the pure function :func:`decide` (tested without executing).
``SIMCLR_XB_OPENBLAS=/path/lib.so`` names a library outside Debian's location.
"""
from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass

OPT_OUT_ENV = "SIMCLR_XB_NO_OPENBLAS"
REEXEC_ENV = "SIMCLR_XB_OPENBLAS_REEXEC"
PATH_ENV = "SIMCLR_XB_OPENBLAS"
# Debian/Ubuntu's libopenblas0-pthread (any architecture, any 0.3.x release).
DEBIAN_GLOB = "/usr/lib/*-linux-gnu/openblas-pthread/libopenblasp-r*.so"
INSTALL_HINT = "apt-get install libopenblas0-pthread"
# Measured: `simclr-xb train --backend mlx --preset tiny --data shapes` on 2 vCPUs,
# benchmarks/README.md ("OpenBLAS for MLX on Linux").
SPEEDUP = "~4x"


@dataclass(frozen=True)
class Decision:
    action: str  # "reexec" | "hint" | "none"
    library: str | None = None
    message: str = ""


def find_openblas(environ=None) -> str | None:
    """The OpenBLAS shared library to preload, or None: ``$SIMCLR_XB_OPENBLAS`` if it names a
    file, else the newest Debian ``openblas-pthread`` library."""
    environ = os.environ if environ is None else environ
    given = environ.get(PATH_ENV)
    if given:
        return given if os.path.isfile(given) else None
    found = sorted(glob.glob(DEBIAN_GLOB))
    return found[-1] if found else None


def _opt(argv: list[str], name: str) -> str | None:
    """Value of ``--name X`` / ``--name=X`` in argv (the last one wins), else None."""
    value = None
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith(name + "="):
            value = a[len(name) + 1:]
    return value


def uses_mlx(argv: list[str]) -> bool:
    """Whether the ``simclr-xb`` command line ``argv`` (without the program) selects MLX."""
    backend = _opt(argv, "--backend")
    if backend is not None:
        return backend.strip() == "mlx"
    backends = _opt(argv, "--backends")
    if backends is not None:
        return "mlx" in [b.strip() for b in backends.split(",")]
    return any(cmd in argv for cmd in ("conformance", "bench"))  # their default lists mlx


def _preloaded(environ) -> bool:
    return "openblas" in environ.get("LD_PRELOAD", "").lower()


def _rank0(environ) -> bool:
    return environ.get("MLX_RANK", "0") in ("", "0")


def decide(argv: list[str], environ, platform: str, mlx_installed: bool,
           library: str | None) -> Decision:
    """What :func:`use_openblas_for_mlx` does for this command line and environment.

    ``argv``: the command's arguments after the program name; ``platform``: ``sys.platform``;
    ``library``: :func:`find_openblas`'s answer."""
    if not platform.startswith("linux") or not mlx_installed or not uses_mlx(argv):
        return Decision("none")
    if environ.get(OPT_OUT_ENV, "") not in ("", "0") or environ.get(REEXEC_ENV) \
            or _preloaded(environ):
        return Decision("none")
    if library is None:
        msg = (f"simclr-xb: MLX on Linux runs {SPEEDUP} faster with OpenBLAS: {INSTALL_HINT} "
               f"(then simclr-xb preloads it; {OPT_OUT_ENV}=1 hides this line)")
        return Decision("hint", None, msg if _rank0(environ) else "")
    msg = (f"simclr-xb: re-running with LD_PRELOAD={library} (OpenBLAS: MLX {SPEEDUP} faster; "
           f"{OPT_OUT_ENV}=1 to opt out)")
    return Decision("reexec", library, msg if _rank0(environ) else "")


def reexec_env(environ, library: str) -> dict[str, str]:
    """The environment of the re-executed process: ``library`` first in LD_PRELOAD, the
    loop guard set."""
    env = dict(environ)
    env["LD_PRELOAD"] = " ".join([library] + ([env["LD_PRELOAD"]] if env.get("LD_PRELOAD") else []))
    env[REEXEC_ENV] = "1"
    return env


def reexec_argv() -> list[str]:
    """This interpreter's command line (``python -m simclr_xb.cli ...``, the console script,
    ``python -c ...``), runnable again with :func:`os.execve`."""
    orig = list(getattr(sys, "orig_argv", []) or [sys.executable, *sys.argv])
    return [sys.executable, *orig[1:]]


def is_cli_process(argv0: str) -> bool:
    """Whether this process IS the ``simclr-xb`` command (the console script or
    ``python -m simclr_xb.cli``), not a host calling the CLI in-process (pytest, CliRunner)."""
    cli = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cli.py")
    return os.path.basename(argv0) == "simclr-xb" or (
        os.path.basename(argv0) == "cli.py" and os.path.realpath(argv0) == os.path.realpath(cli))


def use_openblas_for_mlx() -> Decision:
    """Apply :func:`decide` to this process's command line: re-execute with OpenBLAS
    preloaded (does not return), print the install hint, or do nothing. Only when this process
    is the ``simclr-xb`` command itself (:func:`is_cli_process`), so an in-process call of the
    CLI never re-executes its host."""
    import importlib.util

    argv = sys.argv[1:]
    if not sys.platform.startswith("linux") or not uses_mlx(argv) or not is_cli_process(sys.argv[0]):
        return Decision("none")  # cheap exit before looking for mlx or the library
    d = decide(argv, os.environ, sys.platform, importlib.util.find_spec("mlx") is not None,
               find_openblas())
    if d.message:
        print(d.message, file=sys.stderr, flush=True)
    if d.action == "reexec":
        sys.stdout.flush()
        os.execve(sys.executable, reexec_argv(), reexec_env(os.environ, d.library))
    return d
