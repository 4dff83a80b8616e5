"""A seeded, sharded, resumable batch loader with background prefetch threads.

Order. Epoch ``e``'s permutation of the N images is drawn from
``SeedSequence([seed, STREAM_SHUFFLE, e])`` (identity if ``shuffle=False``), the same on every
rank. ``batch_size`` is the PER-RANK batch; the GLOBAL batch is ``batch_size * world``. Step
``s`` of the epoch takes the global batch ``perm[s*G : (s+1)*G]`` (G = batch_size * world) and
rank ``r`` gets its ``r``-th slice of ``batch_size``. So the ranks' batches at a step are
disjoint, their union (in rank order) is exactly the batch a single rank with batch ``G``
gets at that step, and "2 ranks x batch 4" sees the same images as "1 rank x batch 8".

Steps per epoch: ``N // G`` with ``drop_last=True`` (pre-training: every step full, the
last ``N % G`` images of the permutation are left out this epoch); ``ceil(N / G)`` with
``drop_last=False``, where the last, short global batch is split over the ranks as evenly as
possible (``numpy.array_split``; a rank may get an empty last batch when fewer images than
ranks are left). Every rank always has the same number of steps.

Resume: ``loader.epoch(e, start_step=s)`` yields exactly the batches ``s, s+1, ...`` that a
full pass over epoch ``e`` yields; :meth:`BatchLoader.indices` gives any step's indices with
no data copied.

Threads: ``num_workers`` daemon threads (0 = produce in the caller's thread) gather the
batches ahead of the consumer, at most ``prefetch`` per worker queued, and deliver them in
order. Leaving the loop early (``break``, an exception), closing the iterator, calling
:meth:`BatchLoader.close` or leaving ``with BatchLoader(...)`` sets a stop event and joins the
threads. An exception in a worker is re-raised in the consumer.
"""
from __future__ import annotations

import math
import queue
import threading
import weakref
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from ..augment import STREAM_SHUFFLE
from .common import Dataset

THREAD_PREFIX = "simclr-xb-loader"
_POLL_S = 0.05


class Batch(NamedTuple):
    images: np.ndarray   # (B, H, W, C), the source dtype (uint8 for a Dataset)
    labels: np.ndarray   # int64 (B,)
    indices: np.ndarray  # int64 (B,), positions in the source arrays


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


class _Closes:
    """Context manager and finaliser around ``close()`` (which must be idempotent)."""

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass


class BatchLoader(_Closes):
    """Batches of ``(images, labels, indices)``; see the module docstring for the order rules.

    data: a :class:`Dataset`, or an images array (then ``labels`` is required).
    """

    def __init__(self, data: Dataset | np.ndarray, labels: np.ndarray | None = None,
                 batch_size: int | None = None, seed: int = 0, rank: int = 0, world: int = 1,
                 drop_last: bool = True, shuffle: bool = True, prefetch: int = 2, num_workers: int = 1):
        if isinstance(data, Dataset):
            if labels is not None:
                raise ValueError("BatchLoader: pass labels only with an images array, not with a Dataset")
            images, labels = data.images, data.labels
        else:
            images = np.asarray(data)
            if labels is None:
                raise ValueError("BatchLoader: labels are required with an images array")
        labels = np.asarray(labels)
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"BatchLoader: {images.shape[0]} images but {labels.shape[0]} labels")
        if batch_size is None or int(batch_size) < 1:
            raise ValueError(f"BatchLoader: batch_size must be an integer >= 1, got {batch_size}")
        if int(world) < 1 or not 0 <= int(rank) < int(world):
            raise ValueError(f"BatchLoader: rank {rank} / world {world} is invalid: expected world >= 1 "
                             f"and 0 <= rank < world")
        if int(prefetch) < 1 or int(num_workers) < 0:
            raise ValueError(f"BatchLoader: prefetch must be >= 1 and num_workers >= 0, got "
                             f"prefetch={prefetch}, num_workers={num_workers}")
        self.images, self.labels = images, labels.astype(np.int64, copy=False)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.rank, self.world = int(rank), int(world)
        self.drop_last, self.shuffle = bool(drop_last), bool(shuffle)
        self.prefetch, self.num_workers = int(prefetch), int(num_workers)
        n, g = len(self), self.global_batch
        if self.drop_last and n < g:
            raise ValueError(f"BatchLoader: batch_size {self.batch_size} x world {self.world} = global batch "
                             f"{g} is larger than the dataset ({n} images; each rank's shard would be "
                             f"{n // self.world}): no full batch per epoch. Lower the batch size or pass "
                             f"drop_last=False")
        self._active: weakref.WeakSet[_EpochIterator] = weakref.WeakSet()

    # --- order (pure functions of seed, epoch, step, rank) -------------------------------
    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world

    @property
    def steps_per_epoch(self) -> int:
        n, g = len(self), self.global_batch
        return n // g if self.drop_last else math.ceil(n / g)

    def permutation(self, epoch: int) -> np.ndarray:
        """The global order of epoch ``epoch`` (identical on every rank)."""
        if not self.shuffle:
            return np.arange(len(self), dtype=np.int64)
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
            [self.seed, STREAM_SHUFFLE, int(epoch)])))
        return rng.permutation(len(self)).astype(np.int64)

    def indices(self, epoch: int, step: int, perm: np.ndarray | None = None) -> np.ndarray:
        """This rank's indices at ``step`` of ``epoch``."""
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} is outside the epoch's {self.steps_per_epoch} steps")
        perm = self.permutation(epoch) if perm is None else perm
        g, b = self.global_batch, self.batch_size
        glob = perm[step * g:(step + 1) * g]
        if len(glob) == g:
            return glob[self.rank * b:(self.rank + 1) * b]
        return np.array_split(glob, self.world)[self.rank]

    def _make(self, epoch: int, step: int, perm: np.ndarray) -> Batch:
        idx = self.indices(epoch, step, perm)
        return Batch(self.images[idx], self.labels[idx], idx)

    # --- iteration -------------------------------------------------------------------------
    def epoch(self, epoch: int, start_step: int = 0) -> _EpochIterator:
        """Iterate this rank's batches of ``epoch`` from ``start_step`` (for exact resume)."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} is outside [0, {self.steps_per_epoch}]")
        it = _EpochIterator(self, int(epoch), int(start_step))
        self._active.add(it)
        return it

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)

    def close(self) -> None:
        """Stop and join every background thread of every open epoch iterator."""
        for it in list(self._active):
            it.close()


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _work(make, epoch: int, perm: np.ndarray, steps: range, q: queue.Queue, stop: threading.Event) -> None:
    """A worker's loop. It holds no reference to the iterator, so dropping the iterator (e.g.
    ``break`` out of a for loop) finalises it, which stops and joins this thread."""
    for step in steps:
        if stop.is_set():
            return
        try:
            item = make(epoch, step, perm)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            _put(q, _Failure(e), stop)
            return
        if not _put(q, item, stop):
            return


class _EpochIterator(_Closes):
    """In-order batches of one epoch; of k workers, worker w builds steps start + w, start + w + k, ..."""

    def __init__(self, loader: BatchLoader, epoch: int, start: int):
        self.loader, self.epoch, self.start, self.next_step = loader, epoch, start, start
        self.end = loader.steps_per_epoch
        self.perm = loader.permutation(epoch)
        self.stop = threading.Event()
        k = min(loader.num_workers, max(self.end - start, 0))
        self.queues = [queue.Queue(maxsize=loader.prefetch) for _ in range(k)]
        self.threads = [threading.Thread(
            target=_work, args=(loader._make, epoch, self.perm, range(start + w, self.end, k),
                                self.queues[w], self.stop),
            daemon=True, name=f"{THREAD_PREFIX}-e{epoch}-w{w}") for w in range(k)]
        for t in self.threads:
            t.start()

    def __iter__(self) -> _EpochIterator:
        return self

    def __len__(self) -> int:
        return max(self.end - self.next_step, 0)

    def __next__(self) -> Batch:
        if self.next_step >= self.end or self.stop.is_set():
            self.close()
            raise StopIteration
        if not self.queues:
            item = self.loader._make(self.epoch, self.next_step, self.perm)
        else:
            q = self.queues[(self.next_step - self.start) % len(self.queues)]
            while True:
                try:
                    item = q.get(timeout=_POLL_S)
                    break
                except queue.Empty:
                    if self.stop.is_set():
                        raise StopIteration from None
        if isinstance(item, _Failure):
            self.close()
            raise item.exc
        self.next_step += 1
        if self.next_step >= self.end:
            self.close()
        return item

    def close(self) -> None:
        """Stop the workers, drop what they queued, join them. Idempotent."""
        self.stop.set()
        for q in self.queues:  # unblock producers waiting on a full queue
            try:
                while True:
                    q.get_nowait()
            except queue.Empty:
                pass
        for t in self.threads:
            if t is not threading.current_thread():
                t.join()
        self.threads = []
