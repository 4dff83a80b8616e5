"""HDF5 checkpoints: one file, canonical names, atomic writes, checksums, backend-neutral.

Layout of a checkpoint file (format ``simclr-xb-checkpoint``, version :data:`FORMAT_VERSION`)::

    /weights/<canonical name>    every parameter and BN buffer (resnet_spec names, OIHW)
    /momentum/<canonical name>   LARS momentum buffers
    /extra/<key>                 anything else the loop keeps (e.g. per-step losses)
    attrs: format, format_version, config (JSON), epoch, step, seed, backend,
           versions (JSON), created, sha256

``sha256`` covers every dataset (name, dtype, shape, bytes) and every other attribute, so a
truncated or corrupted file is detected on load. Writes go to a temporary file in the same
folder, are flushed and fsynced, then renamed over the target: a crash at any moment leaves
the previous checkpoint intact.

A run folder keeps ``ckpt-<step>.h5`` files (the newest ``keep`` of them) and ``last.h5``, a
hard link to (or copy of) the newest; :func:`latest_good` falls back to an older file when the
newest does not verify.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .config import Config
from .state import merge_state

FORMAT = "simclr-xb-checkpoint"
FORMAT_VERSION = 1
_GROUPS = ("weights", "momentum", "extra")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read, does not verify, or does not fit the model. Names the file."""


@dataclass
class Checkpoint:
    config: Config
    weights: dict[str, np.ndarray]
    momentum: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    epoch: int = 0
    step: int = 0
    backend: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    def state_dict(self) -> dict[str, np.ndarray]:
        """Weights plus ``momentum/<name>`` entries: what a backend Trainer loads."""
        d = dict(self.weights)
        d.update(merge_state({}, self.momentum))
        return d

    def check_fits_config(self) -> None:
        """Raise CheckpointError (naming the file and the entries) unless the encoder and head
        weights are exactly those of the architecture in the checkpoint's own config (an
        online probe, ``probe.*``, may be present or not)."""
        from .resnet_spec import check_weights, model_specs
        m = self.config.model
        own = {k: v for k, v in self.weights.items() if not k.startswith("probe.")}
        try:
            check_weights(own, model_specs(m), "its weights")
        except ValueError as e:
            raise CheckpointError(
                f"checkpoint {self.path} does not fit the architecture of its own config ({m.arch} "
                f"x{m.width}, {'CIFAR' if m.cifar_stem else 'ImageNet'} stem): {e}") from None


def _digest(groups: dict[str, dict[str, np.ndarray]], attrs: dict[str, object]) -> str:
    h = hashlib.sha256()
    for key in sorted(attrs):
        # surrogateescape: a damaged string attribute (undecodable bytes) must give a digest
        # mismatch, not a UnicodeEncodeError; valid text encodes exactly as before.
        h.update(f"attr:{key}={attrs[key]!s}\n".encode("utf-8", "surrogateescape"))
    for g in _GROUPS:
        for name in sorted(groups.get(g, {})):
            a = np.ascontiguousarray(groups[g][name])
            h.update(f"{g}/{name}:{a.dtype.str}:{a.shape}\n".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    import sys

    from . import __version__
    out = {"simclr_xb": __version__, "python": platform.python_version(), "numpy": np.__version__,
           "h5py": h5py.__version__}
    for mod in ("torch", "mlx.core"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod.split(".")[0]] = getattr(m, "__version__", "?")
    return out


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_error(e: OSError) -> str:
    """The reason of a failed write, saying "disk full" plainly when it is (h5py reports it as
    an OSError whose errno may be unset, with the system message inside its text)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(e) or \
            "quota exceeded" in str(e).lower():
        return "no space left on the device (disk full or quota exceeded); free some space or write to another folder"
    return " ".join(f"{e.strerror or e}".split())


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``path`` atomically (temp file, flush, fsync, rename)."""
    path = Path(path)
    groups = {"weights": ckpt.weights, "momentum": ckpt.momentum, "extra": ckpt.extra}
    groups = {g: {k: np.asarray(v) for k, v in d.items()} for g, d in groups.items()}
    attrs = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": ckpt.config.to_json(),
             "epoch": int(ckpt.epoch), "step": int(ckpt.step), "backend": ckpt.backend,
             "versions": json.dumps(ckpt.versions or library_versions(), sort_keys=True),
             "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    attrs["sha256"] = _digest(groups, attrs)

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            for key, value in attrs.items():
                f.attrs[key] = value
            for g, d in groups.items():
                grp = f.create_group(g)
                for name, a in d.items():
                    grp.create_dataset(name, data=a)
            f.flush()

    return atomic_write(path, write, label="checkpoint ",
                        note=" (the previous checkpoint, if any, is untouched)")


def atomic_write(path: str | Path, write, *, error: type[Exception] | None = None, label: str = "",
                 note: str = "") -> Path:
    """Create ``path`` all or nothing: ``write(tmp)`` fills a temp file in the same folder,
    which is fsynced and renamed over ``path`` (then the folder is fsynced). On any failure
    (also KeyboardInterrupt or an error of ``write`` itself) the temp file is removed and an
    existing ``path`` is untouched; a ``path`` that exists but is not a regular file (FIFO,
    device node, socket, folder) is refused before anything is written; an OSError (disk full,
    permissions) becomes ``error`` (default :class:`CheckpointError`): "could not write {label}{path}: {reason}{note}".
    The one implementation behind checkpoints, feature files and exports."""
    error = error or CheckpointError
    path = Path(path)
    from .outputs import not_regular
    what = not_regular(path)
    if what is not None:  # a FIFO, device node, socket or folder is never replaced by a file
        raise error(f"could not write {label}{path}: it is {what}, not a regular file; refusing to "
                    f"replace it (choose another path)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise error(f"cannot create the folder {path.parent} for {label}{path.name}: {e.strerror}") from None
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:  # any failure (also TypeError from h5py, KeyboardInterrupt): no temp left
        try:
            tmp.unlink()
        except OSError:
            pass
        if not isinstance(e, OSError):
            raise
        raise error(f"could not write {label}{path}: {_write_error(e)}{note}") from None
    return path


def _read_group(f: h5py.File, g: str, path: Path | None = None) -> dict[str, np.ndarray]:
    if g not in f:
        return {}
    from .inputs import InputTooLarge, check_allocation
    out = {}
    for name, ds in f[g].items():
        if not isinstance(ds, h5py.Dataset):
            raise CheckpointError(f"checkpoint {path}: /{g}/{name} is a group, expected a tensor")
        try:
            check_allocation(int(np.prod(ds.shape, dtype=object)) * ds.dtype.itemsize,
                             f"checkpoint {path} tensor /{g}/{name} {ds.dtype} {ds.shape}")
        except InputTooLarge as e:
            raise CheckpointError(str(e)) from None
        out[name] = np.asarray(ds[()])
    return out


def check_tensors(groups: dict[str, dict[str, np.ndarray]], path) -> None:
    """Refuse (CheckpointError naming the tensor) weights or momenta that are not floating
    point (BatchNorm's ``num_batches_tracked`` counter: an integer) or hold NaN/Inf: such a
    checkpoint is never trained on, evaluated or exported."""
    for g in ("weights", "momentum"):
        for name, a in groups.get(g, {}).items():
            counter = name.endswith("num_batches_tracked")
            kind = a.dtype.kind
            if (counter and kind not in "iu") or (not counter and kind != "f"):
                want = "an integer counter" if counter else "floating point"
                raise CheckpointError(f"checkpoint {path} tensor {g}/{name} is {a.dtype}, expected "
                                      f"{want}")
            if kind == "f" and not np.isfinite(a).all():
                bad = int(a.size - np.isfinite(a).sum())
                raise CheckpointError(f"checkpoint {path} tensor {g}/{name} holds {bad} NaN/Inf "
                                      f"value(s) of {a.size}: refusing to use these weights")


def load_checkpoint(path: str | Path, verify: bool = True) -> Checkpoint:
    """Read and verify a checkpoint; errors name the file and what is wrong with it."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            if attrs.get("format") != FORMAT:
                raise CheckpointError(f"{path} is not a simclr-xb checkpoint (format attribute "
                                      f"{attrs.get('format')!r})")
            version = int(attrs.get("format_version", -1))
            if version > FORMAT_VERSION:
                raise CheckpointError(f"checkpoint {path} has format version {version}; this simclr-xb "
                                      f"reads versions up to {FORMAT_VERSION}: upgrade simclr-xb")
            groups = {g: _read_group(f, g, path) for g in _GROUPS}
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - h5py raises RuntimeError/TypeError/... on damaged metadata
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupt?): {e}") from None
    if verify:
        stored = attrs.pop("sha256", None)
        plain = {k: (int(v) if isinstance(v, (np.integer,)) else v) for k, v in attrs.items()}
        if stored is None or _digest(groups, plain) != stored:
            raise CheckpointError(f"checkpoint {path} fails its checksum: the file is corrupt or was "
                                  f"modified")
    check_tensors(groups, path)
    try:
        cfg = Config.from_json(attrs["config"])
    except Exception as e:  # noqa: BLE001 - any parse problem is a corrupt checkpoint
        raise CheckpointError(f"checkpoint {path} has an invalid config: {e}") from None
    return Checkpoint(config=cfg, weights=groups["weights"], momentum=groups["momentum"],
                      extra=groups["extra"], epoch=int(attrs["epoch"]), step=int(attrs["step"]),
                      backend=str(attrs.get("backend", "")),
                      versions=json.loads(attrs.get("versions", "{}")), path=path)


# Temp files of atomic_write (checkpoints) and save_rolling (last.h5), and the write test of train().
_TEMP_RE = re.compile(r"^\.(?:ckpt-\d+\.h5|last\.h5)\.tmp-(\d+)$|^\.write-test-\d+$")


def _stale_pid(pid: int) -> bool:
    """True if no process ``pid`` exists, or it is this one (nothing written yet; pids repeat
    across container restarts)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def remove_stale_temp_files(out_dir: Path, log=None) -> list[Path]:
    """Delete temporary files that a killed run left in ``out_dir`` (a checkpoint's temp file
    whose writer process is gone, the write-test file); returns what was removed."""
    removed = []
    for f in out_dir.iterdir() if out_dir.is_dir() else []:
        m = _TEMP_RE.match(f.name)
        if m is None or (m.group(1) and not _stale_pid(int(m.group(1)))):
            continue
        try:
            f.unlink()
            removed.append(f)
        except OSError:
            pass
    if removed and log:
        log(f"removed {len(removed)} temporary file(s) left by an interrupted run: "
            f"{', '.join(f.name for f in removed)}")
    return removed


_CKPT_RE = re.compile(r"^ckpt-(\d+)\.h5$")


def rolling_checkpoints(run_dir: str | Path) -> list[Path]:
    """``ckpt-<step>.h5`` files of a run folder, newest first."""
    run_dir = Path(run_dir)
    found = [(int(m.group(1)), p) for p in run_dir.glob("ckpt-*.h5") if (m := _CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def save_rolling(run_dir: str | Path, ckpt: Checkpoint, keep: int) -> Path:
    """Write ``ckpt-<step>.h5`` atomically, point ``last.h5`` at it, keep the newest ``keep``."""
    run_dir = Path(run_dir)
    target = save_checkpoint(run_dir / f"ckpt-{ckpt.step:08d}.h5", ckpt)
    last = run_dir / "last.h5"
    tmp = run_dir / f".last.h5.tmp-{os.getpid()}"
    try:
        if tmp.exists():
            tmp.unlink()
        try:
            os.link(target, tmp)
        except OSError:  # file systems without hard links
            import shutil
            shutil.copyfile(target, tmp)
        os.replace(tmp, last)
        _fsync_dir(run_dir)
    except OSError as e:
        raise CheckpointError(f"could not update {last}: {_write_error(e)} ({target.name} was "
                              f"written and is complete)") from None
    for old in rolling_checkpoints(run_dir)[max(keep, 1):]:
        try:
            old.unlink()
        except OSError:
            pass
    return last


def latest_good(path: str | Path, warn=None) -> Checkpoint:
    """Load ``path`` (a file or a run folder); if it fails to verify, fall back to the newest
    older ``ckpt-*.h5`` that does, calling ``warn(message)`` for each one skipped."""
    path = Path(path)
    if not path.exists():  # a named file that is not there: never another checkpoint instead
        parent = path.parent
        have = sorted(p.name for p in ([parent / "last.h5"] if (parent / "last.h5").exists() else [])
                      + rolling_checkpoints(parent)[:3]) if parent.is_dir() else []
        raise CheckpointError(f"no checkpoint found at {path}: it does not exist"
                              + (f" (its folder {parent} holds {', '.join(have)}: name one of them, "
                                 f"or pass the folder for the newest)" if have else
                                 "; expected a checkpoint file, or a run folder holding last.h5 or "
                                 "ckpt-<step>.h5"))
    run_dir = path if path.is_dir() else path.parent
    candidates = [run_dir / "last.h5"] if path.is_dir() else [path]
    candidates += [p for p in rolling_checkpoints(run_dir) if p not in candidates]
    errors = []
    for c in candidates:
        if not c.exists():
            continue
        try:
            return load_checkpoint(c)
        except CheckpointError as e:
            errors.append(str(e))
            if warn:
                warn(f"skipping {c}: {e}")
    if not errors:
        raise CheckpointError(f"no checkpoint found at {path}: expected a checkpoint file, or a run "
                              f"folder holding last.h5 or ckpt-<step>.h5")
    raise CheckpointError(f"no readable checkpoint at {path}: " + " | ".join(errors))
