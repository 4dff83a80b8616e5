"""Streaming image data: an index in memory, pixels decoded per batch in worker processes.

:class:`StreamDataset` is what ``folder:`` and ``wds:`` specs open to (:func:`open_dataset`): the
index (path, label, (H, W) per image) and nothing decoded. :class:`StreamLoader` serves its
batches in the order rules of :class:`~simclr_xb.data.loader.BatchLoader` (seeded permutation
per epoch, disjoint rank slices, exact resume at any step; it delegates the order to one) and,
per batch:

1. the caller's ``make_params(epoch, step, indices, hw)`` (the core's sampler, given each
   image's own (H, W)) returns K :class:`~simclr_xb.augment.ViewParams`, one per view;
2. worker processes (``multiprocessing`` spawn context: works on macOS and Linux alike)
   decode each image ONCE, cut its K boxes from the original resolution and resize them to
   ``size`` (:func:`simclr_xb.data.decode.crop_views`), writing straight into a slot of a
   shared-memory ring of ``prefetch`` batches (bounded prefetch; each batch is split into
   ``num_workers`` chunks decoded in parallel, so the ring does not grow with the workers);
3. the consumer copies the slot out in step order as a :class:`ViewBatch` whose
   ``views[k * B + i]`` is view k of image i.

Every view is a pure function of (file bytes, box, size), so batches are bit-identical for any
``num_workers`` (0 decodes in the caller) and after a resume. A file that cannot be decoded is
named in a :class:`~simclr_xb.data.common.DataError`; with ``skip_bad_images`` its rows are left
out of that batch (the batch is smaller by one image) with one warning per file, and the
workers keep going either way. (With several ranks a smaller batch on one rank is not
supported by the global NT-Xent gather: clean the data, or index with skip_bad_images, which
drops files whose header cannot be read before training.) A worker that dies (killed by the OS, e.g. out of memory)
raises :class:`DataWorkerError` naming it and its exit signal; the consumer never waits on a
dead worker.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .common import DataError
from .index import ImageIndex
from .loader import _Closes

_POLL_S = 0.2


class DataWorkerError(RuntimeError):
    """A data worker process died or failed; the message says which and how."""


# --------------------------------------------------------------------------- dataset


@dataclass
class StreamDataset:
    """One split of an image folder or shard set, by index (no pixel in memory).

    Exposes the parts of :class:`~simclr_xb.data.common.Dataset` that do not need pixels
    (``labels``, ``classes``, ``name``, ``split``, ``source``, ``skipped``) plus ``hw``
    (N, 2) and ``index``; ``images`` is None (``is_stream`` is True)."""

    index: ImageIndex
    name: str
    split: str = "train"
    images: None = None
    is_stream: bool = True
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def labels(self) -> np.ndarray:
        return self.index.labels

    @property
    def classes(self) -> list[str]:
        return self.index.classes

    @property
    def num_classes(self) -> int:
        return len(self.index.classes)

    @property
    def hw(self) -> np.ndarray:
        return self.index.hw

    @property
    def source(self) -> str:
        return self.index.root

    @property
    def skipped(self) -> int:
        return len(self.index.skipped)

    def subset(self, idx) -> StreamDataset:
        return StreamDataset(self.index.subset(idx), self.name, self.split)


# --------------------------------------------------------------------------- reading


_SHARD_FILES: dict[str, int] = {}  # per process: shard path -> open fd


def read_bytes(index: ImageIndex, i: int) -> bytes:
    """The encoded bytes of image ``i`` (a file, or a member of a tar shard by offset)."""
    if index.kind == "folder":
        with open(os.path.join(index.root, index.name(i)), "rb") as f:
            return f.read()
    path = index.shards[int(index.shard[i])]
    fd = _SHARD_FILES.get(path)
    if fd is None:
        fd = _SHARD_FILES[path] = os.open(path, os.O_RDONLY)
    n = int(index.length[i])
    data = os.pread(fd, n, int(index.offset[i]))
    if len(data) != n:
        raise OSError(f"shard {path} is truncated: {len(data)} of {n} bytes of {index.name(i)}")
    return data


def source_of(index: ImageIndex, i: int):
    """What :func:`crop_views` opens: the path of a file, the bytes of a tar member."""
    return os.path.join(index.root, index.name(i)) if index.kind == "folder" else read_bytes(index, i)


@dataclass(frozen=True)
class DecodeSpec:
    size: int
    resample: str = "bilinear"
    draft: bool = True
    resize: str = "auto"  # data.resize; "auto" is resolved here to "pillow" or "torch"

    def __post_init__(self):
        from .decode import resolve_resize
        object.__setattr__(self, "resize", resolve_resize(self.resize))


def decode_batch(index: ImageIndex, idx: np.ndarray, boxes: np.ndarray, spec: DecodeSpec,
                 out: np.ndarray) -> list[tuple[int, str]]:
    """Views of images ``idx`` into ``out`` (K, B, S, S, 3); boxes (K, B, 4). Returns
    [(position in the batch, "path: error")] for images that could not be decoded (their views
    are left as zeros)."""
    from .decode import DECODE_ERRORS, crop_views

    bad = []
    tmp = np.empty((boxes.shape[0], spec.size, spec.size, 3), dtype=np.uint8)
    for b, i in enumerate(np.asarray(idx, dtype=np.int64)):
        try:
            crop_views(source_of(index, i), boxes[:, b], spec.size, tmp, index.path(i), spec.resample,
                       spec.draft, hw=index.hw[i], resize=spec.resize)
            out[:, b] = tmp
        except DECODE_ERRORS as e:
            out[:, b] = 0
            bad.append((b, f"{index.path(i)}: {e}"))
    return bad


# --------------------------------------------------------------------------- workers


def _worker_main(wid: int, index: ImageIndex, spec: DecodeSpec, shm_name: str, slot_shape: tuple,
                 n_slots: int, tasks, results) -> None:
    """A worker process: take (gen, step, slot, lo, idx, boxes) tasks (a chunk of a batch, at
    positions lo..lo+len(idx) of its slot), fill that part of the slot, report."""
    from multiprocessing import shared_memory
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    # One thread per worker (the workers are the parallelism): read by torch when the torch
    # resizer first imports it here (data.resize = torch), and by any other OpenMP library.
    os.environ["OMP_NUM_THREADS"] = "1"
    shm = shared_memory.SharedMemory(name=shm_name)
    try:
        ring = np.ndarray((n_slots,) + slot_shape, dtype=np.uint8, buffer=shm.buf)
        while True:
            task = tasks.get()
            if task is None:
                return
            gen, step, slot, lo, idx, boxes = task
            try:
                bad = decode_batch(index, idx, boxes, spec, ring[slot, :, lo:lo + len(idx)])
                results.put((gen, step, [(lo + b, m) for b, m in bad], None))
            except BaseException:  # noqa: BLE001 - reported, the worker keeps serving
                results.put((gen, step, [], f"worker {wid}: {traceback.format_exc()}"))
    finally:
        del ring
        shm.close()


def _death(p) -> str:
    code = p.exitcode
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (killed by the OS: out of memory? lower data.num_workers or the batch size)" \
            if -code == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {code}"


class ViewBatch(NamedTuple):
    views: np.ndarray    # uint8 (K*B, S, S, 3): views[k*B + i] = view k of image i
    labels: np.ndarray   # int64 (B,)
    indices: np.ndarray  # int64 (B,) positions in the index
    params: list         # K ViewParams of length B (crop boxes in source pixels)


class StreamLoader(_Closes):
    """Batches of cropped views from a :class:`StreamDataset` (see the module docstring).

    make_params(epoch, step, indices, hw (B, 2)) -> list of K ViewParams: the views' boxes
    and the rest of their parameters. ``batch_size`` is per rank, as for BatchLoader."""

    def __init__(self, data: StreamDataset, batch_size: int, make_params: Callable, size: int, *,
                 seed: int = 0, rank: int = 0, world: int = 1, drop_last: bool = True,
                 shuffle: bool = True, num_workers: int = 1, prefetch: int = 2,
                 skip_bad_images: bool = False, resample: str = "bilinear", draft: bool = True,
                 views_per_image: int = 2, log=None, resize: str = "auto"):
        from .loader import BatchLoader

        n = len(data)
        dummy = np.broadcast_to(np.zeros((1, 1, 1, 1), np.uint8), (n, 1, 1, 1))
        self.order = BatchLoader(dummy, data.labels, batch_size, seed=seed, rank=rank, world=world,
                                 drop_last=drop_last, shuffle=shuffle, num_workers=0)
        self.data, self.index = data, data.index
        self.make_params, self.size, self.k = make_params, int(size), int(views_per_image)
        self.num_workers, self.prefetch = int(num_workers), max(1, int(prefetch))
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.skip_bad_images = bool(skip_bad_images)
        self.spec = DecodeSpec(self.size, resample, bool(draft), resize)
        self.log = log
        self.warned: set[str] = set()
        self._procs: list = []
        self._shm = None
        self._gen = 0
        self._slot_shape = (self.k, self.order.batch_size, self.size, self.size, 3)

    batch_size = property(lambda self: self.order.batch_size)
    steps_per_epoch = property(lambda self: self.order.steps_per_epoch)

    def __len__(self) -> int:
        return len(self.data)

    # --- workers ---------------------------------------------------------------------------
    def _start(self) -> None:
        if self._procs or self.num_workers == 0:
            return
        from multiprocessing import shared_memory
        ctx = mp.get_context("spawn")
        self._n_slots = self.prefetch  # batches in flight; a slot is copied out before reuse
        nbytes = int(np.prod(self._slot_shape)) * self._n_slots
        try:
            self._shm = shared_memory.SharedMemory(create=True, size=max(1, nbytes))
        except OSError as e:
            raise DataError(f"cannot allocate {nbytes / 2**20:.0f} MiB of shared memory for the data "
                            f"workers ({self._n_slots} batches of {self.order.batch_size} images x "
                            f"{self.k} views x {self.size}x{self.size}x3): {e}. Lower the batch size "
                            f"per process, or give the container more /dev/shm (docker --shm-size)") from None
        self._ring = np.ndarray((self._n_slots,) + self._slot_shape, dtype=np.uint8, buffer=self._shm.buf)
        self._tasks, self._results = ctx.Queue(), ctx.Queue()
        for w in range(self.num_workers):
            p = ctx.Process(target=_worker_main, name=f"simclr-xb-data-{w}", daemon=True,
                            args=(w, self.index, self.spec, self._shm.name, self._slot_shape,
                                  self._n_slots, self._tasks, self._results))
            p.start()
            self._procs.append(p)

    def close(self) -> None:
        """Stop the workers and free the shared memory. Idempotent."""
        procs, self._procs = self._procs, []
        for _ in procs:
            try:
                self._tasks.put(None)
            except (OSError, ValueError):
                pass
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        if procs:
            for q in (self._tasks, self._results):
                q.close()
                q.cancel_join_thread()
        if self._shm is not None:
            self._ring = None
            try:
                self._shm.close()
                self._shm.unlink()
            except (FileNotFoundError, BufferError):
                pass
            self._shm = None

    # --- batches ---------------------------------------------------------------------------
    def _plan(self, epoch: int, step: int, perm: np.ndarray):
        idx = self.order.indices(epoch, step, perm)
        params = self.make_params(epoch, step, idx, self.index.hw[idx])
        if len(params) != self.k:
            raise ValueError(f"make_params returned {len(params)} view sets, expected {self.k}")
        boxes = np.stack([np.asarray(p.crop, dtype=np.int64) for p in params])  # (K, B, 4)
        return idx, params, boxes

    def _finish(self, idx, params, views: np.ndarray, bad) -> ViewBatch:
        """views (K, B, S, S, 3) -> a ViewBatch, bad images named or dropped."""
        if bad:
            if not self.skip_bad_images:
                pos, msg = bad[0]
                raise DataError(f"cannot decode image {msg} (pass --skip-bad-images, config "
                                f"data.skip_bad_images, to leave such images out)")
            for _, msg in bad:
                if msg not in self.warned:
                    self.warned.add(msg)
                    warnings.warn(f"skipped undecodable image {msg}", stacklevel=3)
            keep = np.setdiff1d(np.arange(len(idx)), [b for b, _ in bad])
            idx, views = idx[keep], views[:, keep]
            params = [p[keep] for p in params]
        b = len(idx)
        return ViewBatch(views.reshape((self.k * b,) + views.shape[2:]), self.index.labels[idx], idx, params)

    def epoch(self, epoch: int, start_step: int = 0):
        """This rank's batches of ``epoch`` from ``start_step`` (exact resume)."""
        end = self.steps_per_epoch
        if not 0 <= start_step <= end:
            raise ValueError(f"start_step {start_step} is outside [0, {end}]")
        perm = self.order.permutation(epoch)
        if self.num_workers == 0:
            return self._serial(epoch, start_step, end, perm)
        return self._parallel(epoch, start_step, end, perm)

    def __iter__(self):
        return self.epoch(0)

    def _serial(self, epoch, start, end, perm):
        for step in range(start, end):
            idx, params, boxes = self._plan(epoch, step, perm)
            views = np.empty((self.k, len(idx), self.size, self.size, 3), dtype=np.uint8)
            bad = decode_batch(self.index, idx, boxes, self.spec, views)
            yield self._finish(idx, params, views, bad)

    def _check_alive(self, step: int) -> None:
        for w, p in enumerate(self._procs):
            if not p.is_alive():
                msg = (f"data worker {w} (pid {p.pid}) {_death(p)} while the loader waited for "
                       f"step {step}; training stopped")
                self.close()
                raise DataWorkerError(msg)

    def _parallel(self, epoch, start, end, perm):
        """Each batch is split into ``num_workers`` chunks decoded in parallel into one slot of
        the ring; up to ``prefetch`` batches ahead are in flight."""
        self._start()
        self._gen += 1
        gen = self._gen
        free = list(range(self._n_slots))
        plans: dict[int, tuple] = {}
        pending: dict[int, list] = {}  # step -> [chunks still out, bad images]
        nxt = start
        try:
            for step in range(start, end):
                while free and nxt < end:  # bounded prefetch
                    idx, params, boxes = self._plan(epoch, nxt, perm)
                    slot = free.pop()
                    plans[nxt] = (slot, idx, params)
                    chunks = [c for c in np.array_split(np.arange(len(idx)), self.num_workers) if c.size]
                    pending[nxt] = [len(chunks), []]
                    for c in chunks:
                        self._tasks.put((gen, nxt, slot, int(c[0]), idx[c], boxes[:, c]))
                    nxt += 1
                while pending[step][0] > 0:
                    try:
                        g, s, bad, err = self._results.get(timeout=_POLL_S)
                    except queue.Empty:
                        self._check_alive(step)
                        continue
                    if g != gen:  # left over from an earlier, abandoned epoch iterator
                        continue
                    if err is not None:
                        raise DataWorkerError(f"a data worker failed on step {s}:\n{err}")
                    pending[s][0] -= 1
                    pending[s][1] += bad
                bad = sorted(pending.pop(step)[1])
                slot, idx, params = plans.pop(step)
                views = np.array(self._ring[slot, :, :len(idx)])  # copied out: the slot is reused
                free.append(slot)
                yield self._finish(idx, params, views, bad)
        finally:
            if plans:  # abandoned mid-epoch: restart the workers so no stale task runs
                self.close()


# --------------------------------------------------------------------------- evaluation


def eval_loader(data: StreamDataset, size: int, batch_size: int, num_workers: int = 1,
                resample: str = "bilinear", skip_bad_images: bool = False, resize: str = "auto") -> StreamLoader:
    """Every image once, in index order, as its evaluation view: the official centre crop
    (87.5% of the shorter side, :func:`simclr_xb.augment.center_crop_boxes`) cut from the
    original image and resized to ``size``; no other op."""
    from ..augment import center_crop_boxes, identity_params

    def make_params(epoch, step, idx, hw):
        p = identity_params(len(idx), (size, size))
        p.crop = center_crop_boxes(hw, len(idx))
        return [p]

    return StreamLoader(data, min(batch_size, len(data)), make_params, size, shuffle=False,
                        drop_last=False, num_workers=num_workers, skip_bad_images=skip_bad_images,
                        resample=resample, views_per_image=1, resize=resize)


def encode_split(trainer, data, batch_size: int, size: int, num_workers: int = 1,
                 resample: str = "bilinear", skip_bad_images: bool = False,
                 resize: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """(h (N, d), labels (N,)) of a split with ``trainer.encode``: a Dataset in memory as is; a
    StreamDataset through :func:`eval_loader` (its views are already ``size``, so the
    backend's identity view of them is an exact copy). Images skipped as undecodable are
    left out of both arrays."""
    if not getattr(data, "is_stream", False):
        return trainer.encode(data.images, batch_size=batch_size), data.labels
    hs, ys = [], []
    with eval_loader(data, size, batch_size, num_workers, resample, skip_bad_images, resize) as loader:
        for b in loader.epoch(0):
            if len(b.indices):
                hs.append(trainer.encode(b.views, batch_size=batch_size))
                ys.append(b.labels)
    return np.concatenate(hs), np.concatenate(ys)


def whole_view_params(params, size: int):
    """``params`` with every crop box the whole (size x size) view: how a backend that takes
    (images, params) applies the remaining ops to views the workers already cut (a resize to
    the same size is an exact copy)."""
    import dataclasses
    return dataclasses.replace(params, crop=np.tile(np.array([[0, 0, size, size]], np.int64), (len(params), 1)))


def predict_split(predict, data, batch_size: int, size: int, num_workers: int = 1,
                  resample: str = "bilinear", resize: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) of ``predict(images_u8, batch_size)`` over a StreamDataset's
    evaluation views (:func:`eval_loader`)."""
    outs, ys = [], []
    with eval_loader(data, size, batch_size, num_workers, resample, resize=resize) as loader:
        for b in loader.epoch(0):
            outs.append(predict(b.views, batch_size))
            ys.append(b.labels)
    return np.concatenate(outs), np.concatenate(ys)
