"""Outputs never destroy: the checks every command makes on what it will write, BEFORE any long
work, and the identity of a run folder.

* :func:`check_output_file`: ``path`` is absent or a regular file (never a folder, FIFO, device
  node or socket), is not one of the command's inputs (same path or same file, e.g. a hard link
  such as ``last.h5``), is not inside a dataset folder the command reads (``data_dirs``, see
  :func:`dataset_folders`: a file written there would become part of the dataset, and its next
  index scan and fingerprint would change), and the nearest existing folder above it is writable.
* :func:`check_output_dir`: the same for a folder (``train --out``).
* :func:`claim_run_folder`: a run folder belongs to one run. ``run.json`` in it records the run's
  id (``run_id``), when it was created and where it came from (``resumed_from``, ``init_from``).
  Writing another run into a folder that holds one is refused with a message saying how to
  continue it (``--resume``) or start fresh (another ``--out``).

Every refusal is an :class:`OutputError` (a ValueError) that names the option and the path.
"""
from __future__ import annotations

import json
import os
import stat
import time
import uuid
from pathlib import Path

RUN_FILE = "run.json"
# A folder holds a run when it holds a checkpoint of one (last.h5 or ckpt-<step>.h5); a run
# that failed before its first checkpoint (only run.json / metrics.jsonl) leaves nothing to
# continue, and a new run may take the folder.
RUN_MARKERS = ("last.h5",)


class OutputError(ValueError):
    """An output path would destroy something or cannot be written. Names the option and path."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def not_regular(path: str | os.PathLike) -> str | None:
    """None if ``path`` is absent or a regular file (a link to one included), else what it is."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):  # absent (also: under a regular file)
        return None
    except OSError as e:
        return f"unreadable ({e.strerror})"
    return None if stat.S_ISREG(st.st_mode) else _kind(st.st_mode)


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def dataset_folders(*specs, root: str | os.PathLike | None = None) -> tuple[str, ...]:
    """The folders that dataset specs scan: ``folder:PATH`` and ``wds:PATH`` (a relative PATH
    resolved as the readers resolve it, under ``root`` and the data folders); other specs
    (files such as ``hdf5:``, named datasets) and folders that do not exist give none."""
    out = []
    for spec in specs:
        if not isinstance(spec, str):
            continue
        kind, _, arg = spec.partition(":")
        if kind not in ("folder", "wds") or not arg:
            continue
        arg = os.path.expanduser(arg)
        try:
            from .data import resolve_path
            arg = resolve_path(kind, arg, root)
        except (ValueError, OSError):  # not found: the reader names it later
            continue
        if os.path.isdir(arg):
            out.append(arg)
    return tuple(out)


def _inside(path: Path, folder: Path) -> bool:
    """``path`` is ``folder`` or lies below it: some existing ancestor of ``path`` (itself
    included) is the same folder (so symbolic links and bind mounts count)."""
    p = Path(os.path.abspath(path))
    for a in (p, *p.parents):
        try:
            if a.exists() and os.path.samefile(a, folder):
                return True
        except OSError:
            continue
    return False


def check_not_in_dataset(path: str | os.PathLike, option: str, data_dirs=()) -> None:
    """Refuse an output at or below one of the dataset folders ``data_dirs`` (one line naming
    both paths)."""
    for d in data_dirs:
        if d is not None and _inside(Path(path), Path(d)):
            raise OutputError(f"{option} {path} is inside the dataset folder {d}, an input of this "
                              f"command: writing there would add files to the dataset (its next scan "
                              f"would see them and its fingerprint would change); choose another "
                              f"{option} outside {d}")


def _writable_ancestor(path: Path, option: str) -> None:
    """The nearest existing folder above ``path`` must be a folder we can write into."""
    p = path.parent if str(path.parent) else Path(".")
    while not p.exists():
        if p == p.parent:
            break
        p = p.parent
    if p.exists() and not p.is_dir():
        raise OutputError(f"{option} {path} is under {p}, which is {_kind(os.stat(p).st_mode)}, "
                          f"not a folder: choose another {option}")
    if not os.access(p, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path} cannot be written: no write permission in the folder "
                          f"{p}: choose another {option}")


def check_output_file(path: str | os.PathLike, option: str = "--out",
                      inputs: tuple = (), parent_must_exist: bool = False, data_dirs=()) -> Path:
    """Refuse (OutputError) an output file that is not absent-or-regular, is one of ``inputs``
    (paths; folders among them are compared as paths), lies inside one of the dataset folders
    ``data_dirs``, or cannot be created (with ``parent_must_exist``: whose folder does not
    exist). Returns the path."""
    path = Path(path)
    if parent_must_exist and not path.parent.is_dir():
        raise OutputError(f"{option} {path}: the folder {path.parent} does not exist (create it, or "
                          f"choose another {option})")
    what = not_regular(path)
    if what is not None:
        raise OutputError(f"{option} {path} is {what}: expected a regular file or a new path "
                          f"(simclr-xb never replaces anything else)")
    for i in inputs:
        if i is not None and _same(path, Path(i)):
            raise OutputError(f"{option} {path} is one of this command's inputs ({i}): writing it "
                              f"would destroy the input; choose another {option}")
    check_not_in_dataset(path, option, data_dirs)
    _writable_ancestor(path, option)
    return path


def check_output_dir(path: str | os.PathLike, option: str = "--out", data_dirs=()) -> Path:
    """Refuse an output folder that exists as something else, is (or lies inside) one of the
    dataset folders ``data_dirs``, or cannot be created/written."""
    path = Path(path)
    check_not_in_dataset(path, option, data_dirs)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path} is {_kind(os.stat(path).st_mode)}, expected a folder "
                          f"(or a new path): choose another {option}")
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    if p.exists() and not p.is_dir():
        raise OutputError(f"output folder {path} is not writable (Not a directory: {path}): choose "
                          f"another {option}")
    if p.exists() and not os.access(p, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {path} is not writable (Permission denied: {p}): choose "
                          f"another {option}")
    return path


# --------------------------------------------------------------------------- run identity
def read_run(folder: str | os.PathLike) -> dict | None:
    """The folder's run.json as a dict, None when absent; OutputError when unreadable."""
    f = Path(folder) / RUN_FILE
    if not f.exists():
        return None
    try:
        data = json.loads(f.read_text()[:1 << 20])
    except (OSError, ValueError) as e:
        raise OutputError(f"run file {f} is unreadable ({e}): it identifies the run in {folder}; "
                          f"restore it or start fresh with another --out") from None
    if not isinstance(data, dict) or not isinstance(data.get("run_id"), str):
        raise OutputError(f"run file {f} has no run_id: it identifies the run in {folder}; "
                          f"restore it or start fresh with another --out")
    return data


def holds_run(folder: str | os.PathLike) -> list[str]:
    """The checkpoints in ``folder`` that make it a run's folder (last.h5, ckpt-*.h5)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [m for m in RUN_MARKERS if (folder / m).exists()]
    found += sorted(p.name for p in folder.glob("ckpt-*.h5"))[:3]
    return found


def run_id_of(folder: str | os.PathLike) -> str | None:
    """The run id of a folder: its run.json's, or (a run from before run.json) None."""
    r = read_run(folder)
    return r["run_id"] if r else None


def claim_run_folder(out_dir: str | os.PathLike, resume_from: str | os.PathLike | None = None,
                     init_from: str | os.PathLike | None = None) -> str:
    """Make ``out_dir`` the folder of this run and return the run id, or refuse.

    A new run (``resume_from`` None) needs a folder without run files. A resumed run continues
    the run of the checkpoint's folder: in that folder itself, in a new (empty) folder, or in a
    folder holding the same run id; a folder holding another run is refused. Writes run.json.
    """
    out = Path(out_dir)
    present = holds_run(out)
    if resume_from is None:
        if present:
            rid = run_id_of(out)
            raise OutputError(
                f"--out {out} already holds a run{f' ({rid})' if rid else ''} ({', '.join(present)}): "
                f"pass --resume {out} to continue it, --init-from {out} with a new --out to start "
                f"a new run from its weights, or choose another --out to start fresh")
        run = {"run_id": uuid.uuid4().hex, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "resumed_from": None, "init_from": str(init_from) if init_from else None}
    else:
        src = Path(resume_from)
        src_dir = src if src.is_dir() else src.parent
        src_id = run_id_of(src_dir)
        same_folder = out.exists() and _same(out, src_dir)
        if not same_folder and present:
            out_id = run_id_of(out)
            if out_id is None or src_id is None or out_id != src_id:
                raise OutputError(
                    f"--out {out} holds another run ({out_id or 'files ' + ', '.join(present)}) than "
                    f"the one of --resume {resume_from} ({src_id or src_dir}); resuming into it would "
                    f"overwrite its checkpoints and mix the two runs' metrics. Continue with --out "
                    f"{src_dir}, or pass a new (empty) --out to continue the run in another folder")
        if same_folder and src_id is not None:
            return src_id
        existing = read_run(out) if not same_folder and present else None
        if existing is not None:
            return existing["run_id"]
        run = {"run_id": src_id or uuid.uuid4().hex, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "resumed_from": str(resume_from), "init_from": None}
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{RUN_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(run, indent=2) + "\n")
    os.replace(tmp, out / RUN_FILE)
    return run["run_id"]
