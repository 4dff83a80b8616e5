"""Inputs are measured before they are trusted: shared guards for sizes, memory and devices.

* :func:`check_allocation`: an array of ``nbytes`` that a header, a shape or a spec asks for is
  refused (``InputTooLarge``, a ValueError naming what asked) when it exceeds what the machine
  has: :func:`available_memory` (MemAvailable of /proc/meminfo, else physical memory, else no
  limit) times :data:`MEMORY_FRACTION`, or an explicit ``SIMCLR_XB_MAX_BYTES``.
* :func:`read_capped`: a file's bytes (gzip transparently), read in blocks and refused as soon
  as they pass a cap, so a small ``.gz`` that inflates to gigabytes never gets allocated.
* :func:`image_pixel_limit` / :func:`too_many_pixels`: an image whose header declares more
  pixels than Pillow's ``Image.MAX_IMAGE_PIXELS`` (or than the memory budget holds at
  :data:`DECODED_BYTES_PER_PIXEL`) is refused before any pixel is decoded.
* :func:`check_device`: ``--device`` against the devices the backend reports, before any work
  (``--device cuda`` with a CPU-only torch is a one-line error, not a traceback later).
* :func:`positive_int`: a CLI count (``--nproc``, ``--knn-k``, ``--batch-size``) must be >= 1.
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

MEMORY_FRACTION = 0.8
ENV_MAX_BYTES = "SIMCLR_XB_MAX_BYTES"


class InputTooLarge(ValueError):
    """A declared size would need more memory than the machine has. Names the input."""


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:.3g} GiB"


def available_memory() -> int | None:
    """Bytes this process may still allocate: ``SIMCLR_XB_MAX_BYTES`` if set, else
    MemAvailable (Linux), else the physical memory (sysconf), else None (unknown)."""
    env = os.environ.get(ENV_MAX_BYTES)
    if env:
        try:
            return max(0, int(float(env)))
        except ValueError:
            raise InputTooLarge(f"environment variable {ENV_MAX_BYTES}={env!r} is invalid: "
                                f"expected a number of bytes") from None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def memory_budget() -> int | None:
    env = os.environ.get(ENV_MAX_BYTES)
    avail = available_memory()
    if avail is None:
        return None
    return avail if env else int(avail * MEMORY_FRACTION)


def check_allocation(nbytes: int, what: str) -> None:
    """Raise InputTooLarge naming ``what`` unless ``nbytes`` fits the memory budget."""
    nbytes = int(nbytes)
    if nbytes < 0:
        raise InputTooLarge(f"{what} declares a negative size ({nbytes} bytes)")
    budget = memory_budget()
    if budget is not None and nbytes > budget:
        raise InputTooLarge(f"{what} would need {_gib(nbytes)} of memory, more than the "
                            f"{_gib(budget)} available (set {ENV_MAX_BYTES} to change the limit); "
                            f"refusing before allocating it")


def read_capped(path: str | os.PathLike, cap: int, what: str, block: int = 1 << 20) -> bytes:
    """All bytes of ``path`` (inflated if it starts with the gzip magic), refusing with
    InputTooLarge as soon as more than ``cap`` bytes come out. Errors of the gzip stream and of
    the file system propagate (the caller names them)."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        src = gzip.GzipFile(fileobj=f) if gz else f
        try:
            parts, total = [], 0
            while True:
                chunk = src.read(block)
                if not chunk:
                    break
                total += len(chunk)
                if total > cap:
                    raise InputTooLarge(f"{what} {path} holds more than {cap} bytes"
                                        f"{' once decompressed' if gz else ''}, more than any valid "
                                        f"file of its kind (or the memory budget); refusing to read on")
                parts.append(chunk)
            return b"".join(parts)
        finally:
            if gz:
                src.close()


GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)

# Pillow keeps a decoded RGB (also RGBA, CMYK) image as 4 bytes a pixel.
DECODED_BYTES_PER_PIXEL = 4


def image_pixel_limit() -> tuple[int | None, str]:
    """(the most pixels one image may have to be decoded, where that limit comes from).

    The limit is Pillow's ``Image.MAX_IMAGE_PIXELS`` itself (default 89478485, ~0.25 GiB of
    RGBA; None disables it), NOT Pillow's error threshold of twice that: between 1x and 2x
    Pillow only emits a DecompressionBombWarning (in a data worker, easily lost) and decodes the
    whole image. It is lowered to what the memory budget (:func:`memory_budget`,
    ``SIMCLR_XB_MAX_BYTES``) holds at :data:`DECODED_BYTES_PER_PIXEL`. To read larger images,
    raise ``PIL.Image.MAX_IMAGE_PIXELS`` (Python) and the budget."""
    from PIL import Image
    limits = []
    if Image.MAX_IMAGE_PIXELS is not None:
        limits.append((int(Image.MAX_IMAGE_PIXELS), "PIL.Image.MAX_IMAGE_PIXELS"))
    budget = memory_budget()
    if budget is not None:
        limits.append((budget // DECODED_BYTES_PER_PIXEL,
                       f"the memory budget of {_gib(budget)} at {DECODED_BYTES_PER_PIXEL} bytes a "
                       f"decoded pixel; set {ENV_MAX_BYTES} to change it"))
    return min(limits) if limits else (None, "no limit")


def too_many_pixels(name: str, h: int | None, w: int | None, pixels: int | None = None,
                    limit: tuple[int | None, str] | None = None) -> str | None:
    """None if an image of (h, w) (or ``pixels`` when its sides are unknown) may be decoded,
    else the refusal naming the file, its size and the limit."""
    n = int(pixels) if pixels is not None else int(h) * int(w)
    lim, why = image_pixel_limit() if limit is None else limit
    if lim is None or n <= lim:
        return None
    size = f"{w}x{h} pixels ({n} in all)" if h is not None else f"{n} pixels"
    return (f"image {name} is {size} by its header, more than the limit of {lim} pixels ({why}); "
            f"refusing to decode it (a decompression bomb?)")


def positive_int(value, option: str) -> int:
    if value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{option} = {value!r} is invalid: expected an integer >= 1")
    return value


def check_device(backend: str | None, device: str | None) -> None:
    """Raise ValueError naming ``--device`` when the backend (or, for None, every installed
    backend) has no such device. A device type without an index (``cuda``) needs one device of
    that type; with an index (``cuda:1``) that exact device."""
    if device is None:
        return
    from .backend import BACKENDS, BackendUnavailable, get_backend
    dev = str(device).strip().lower()
    kind, _, index = dev.partition(":")
    if not kind or (index and not index.isdigit()):
        raise ValueError(f"--device {device!r} is invalid: expected a device such as cpu, cuda, "
                         f"cuda:1, mps (torch) or cpu, gpu (mlx)")
    names = [backend] if backend else list(BACKENDS)
    seen = {}
    for name in names:
        try:
            api = get_backend(name)
        except BackendUnavailable:
            if backend:
                raise
            continue
        have = [d.lower() for d in api.devices()]
        seen[name] = (have, api.version())
        kinds = {d.partition(":")[0] for d in have}
        if kind in kinds and (not index or dev in have or all(":" not in d for d in have if
                                                               d.startswith(kind))):
            return
    shown = "; ".join(f"{v if v.startswith(n) else n + ' ' + v} has {', '.join(h)}"
                      for n, (h, v) in seen.items()) or "no backend installed"
    raise ValueError(f"--device {device} is not available: {shown}"
                     + (" (this torch build has no CUDA)" if kind == "cuda" else ""))


def check_train_memory(cfg, world: int = 1) -> None:
    """Refuse a config whose augmented views alone (2 per image, float32, this rank's share of
    the batch) exceed the memory budget: a lower bound of a step's memory (activations add
    several times more), so a refusal is certain to be right."""
    n = cfg.train.batch_size // max(int(world), 1)
    s = cfg.augment.image_size
    check_allocation(2 * n * s * s * 3 * 4, f"config train.batch_size = {cfg.train.batch_size} with "
                                            f"augment.image_size = {s} ({2 * n} float32 views per step)")
