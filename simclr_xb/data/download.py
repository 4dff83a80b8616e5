"""Download CIFAR-10/100, Fashion-MNIST and MNIST into ``~/.cache/simclr_xb/<name>/``.

Only called when a reader gets ``download=True``. urllib only, a short timeout, so that with
no network it fails within seconds with a :class:`DataError` that says which file to put
where. Every file is hashed while it streams to a temporary file in the target folder and
renamed into place only if the hash matches; archives are then extracted member by member
(regular files and folders only, no links, no absolute or ``..`` paths) into a temporary
folder that is renamed into place.

Hashes: CIFAR-10 and CIFAR-100 archives by SHA-256 (the values Keras pins; the published MD5s
c58f30108f718f92721af3b95e74349a and eb9058c3a382ffc7106e4002c42a8d85 belong to the same
files). Fashion-MNIST and MNIST by the MD5s their publishers list (Zalando's README;
torchvision for MNIST): no SHA-256 of the upstream .gz files could be confirmed, and the
copies in Debian's dataset-fashion-mnist package are recompressed, so they differ byte-wise.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .common import DataError, cache_dir

TIMEOUT_S = 5.0
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Remote:
    filename: str
    urls: tuple[str, ...]
    algo: str  # "sha256" or "md5"
    digest: str
    extract: bool = False  # a .tar.gz to unpack into the dataset folder


_FASHION = ("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/")
_MNIST = ("https://ossci-datasets.s3.amazonaws.com/mnist/",)

REMOTES: dict[str, tuple[Remote, ...]] = {
    "cifar10": (Remote("cifar-10-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                       "sha256", "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", True),),
    "cifar100": (Remote("cifar-100-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
                        "sha256", "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7", True),),
    "fashion-mnist": tuple(Remote(f, tuple(b + f for b in _FASHION), "md5", h) for f, h in (
        ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"))),
    "mnist": tuple(Remote(f, tuple(b + f for b in _MNIST), "md5", h) for f, h in (
        ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
        ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
        ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"))),
}


def file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _fetch(remote: Remote, folder: Path, timeout: float, log: Callable[[str], None]) -> Path:
    target = folder / remote.filename
    if target.is_file() and file_digest(target, remote.algo) == remote.digest:
        return target
    tmp = folder / f".{remote.filename}.part-{os.getpid()}"
    errors = []
    for url in remote.urls:
        log(f"downloading {url}")
        h = hashlib.new(remote.algo)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
                for block in iter(lambda: resp.read(_CHUNK), b""):
                    h.update(block)
                    out.write(block)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            tmp.unlink(missing_ok=True)
            errors.append(f"{url}: {getattr(e, 'reason', None) or e}")
            continue
        if h.hexdigest() != remote.digest:
            tmp.unlink(missing_ok=True)
            errors.append(f"{url}: {remote.algo} {h.hexdigest()} != expected {remote.digest}")
            continue
        os.replace(tmp, target)
        return target
    raise DataError(f"could not download {remote.filename} ({'; '.join(errors)}). "
                    f"Without network: get {remote.filename} ({remote.algo} {remote.digest}) from "
                    f"{remote.urls[0]} on another machine and put it in {folder}, then run again "
                    f"(with download=True to have it checked{' and unpacked' if remote.extract else ''}).")


def _extract(archive: Path, folder: Path) -> None:
    """Unpack a .tar.gz into ``folder`` safely, via a temporary folder renamed into place."""
    tmp = folder / f".extract-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for m in tar.getmembers():
                parts = Path(m.name).parts
                if m.name.startswith(("/", "\\")) or ".." in parts or not (m.isfile() or m.isdir()):
                    raise DataError(f"archive {archive} has an unsafe member {m.name!r}; not extracting")
                if m.isdir():
                    (tmp / m.name).mkdir(parents=True, exist_ok=True)
                    continue
                dest = tmp / m.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                with src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
        for top in tmp.iterdir():
            final = folder / top.name
            if final.exists():
                shutil.rmtree(final) if final.is_dir() else final.unlink()
            os.replace(top, final)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"cannot unpack {archive}: {e} (delete it and download again)") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download(name: str, dest: str | os.PathLike | None = None, timeout: float = TIMEOUT_S,
             log: Callable[[str], None] | None = None) -> Path:
    """Fetch dataset ``name`` (a key of :data:`REMOTES`) into ``dest`` (default
    ``~/.cache/simclr_xb/<name>``), verify hashes, unpack archives; return the folder."""
    if name not in REMOTES:
        raise DataError(f"dataset {name!r} cannot be downloaded: downloadable are {sorted(REMOTES)}")
    folder = Path(dest) if dest is not None else cache_dir() / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the download folder {folder}: {e.strerror or e}") from None
    log = log or (lambda msg: None)
    for remote in REMOTES[name]:
        path = _fetch(remote, folder, timeout, log)
        if remote.extract:
            log(f"unpacking {path}")
            _extract(path, folder)
    return folder
