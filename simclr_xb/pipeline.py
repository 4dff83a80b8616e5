"""Training steps one ahead of their metrics: the host prepares step s + 1 while step s computes.

A backend whose Trainer has ``train_step_async`` (MLX: ``mx.async_eval``) returns at once with
a pending step; reading its loss (``.result()``) is what waits. :class:`StepPipeline` launches
step s + 1 BEFORE it reads step s's metrics, so loading the batch, sampling the views and
building the graph of s + 1 overlap the computation of s, and the loop reads each loss one step
late. The loop body sees exactly what it saw before, in the same order: (t0, lr, metrics) of
step s, then of s + 1.

It launches ahead only when nothing the loop does after step s needs the state of step s
alone: never across an epoch's end (the next batch is not at hand), never into a checkpoint
(the step after a save would be in the saved state), never with a distributed context (the
per-step stop collective), never past the last step, and never once a stop was requested.
If the loop stops anyway with a step in flight (a signal arriving in between, or an exception),
:meth:`discard` undoes that step (``keep_before``), so the state is the one after the last
step the loop counted. The non-finite guard needs no sync: with ``skip_nonfinite`` the backend
keeps the old state branch-free inside the step; without it the loop stops at the first
non-finite loss and writes no checkpoint, so the step launched after it changes nothing on
disk. Backends without ``train_step_async`` (torch) run one synchronous step at a time.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator


class StepPipeline:
    """``launch(batch, step, keep_before) -> pending`` (with ``.result()`` and ``.discard()``)
    or, for a synchronous trainer, ``run_sync(batch, step) -> dict`` (``batch``: one item of
    the loader's epoch iterator, passed through);
    ``lr_of(step)``; ``may_launch(step) -> bool`` says whether step ``step`` may start while the
    previous one's metrics are unread."""

    def __init__(self, trainer, launch: Callable, run_sync: Callable, lr_of: Callable[[int], float],
                 may_launch: Callable[[int], bool]):
        self.lagged = hasattr(trainer, "train_step_async")
        self._launch, self._run_sync, self._lr_of, self._may_launch = launch, run_sync, lr_of, may_launch
        self._pending = None  # the step launched ahead whose metrics the loop has not read

    def run(self, batches: Iterable, step: int) -> Iterator[tuple[float, float, dict]]:
        """Yield (t0, lr, metrics) of each step in order, starting at ``step``; the caller
        counts the steps as before."""
        it = iter(batches)
        if not self.lagged:
            for batch in it:
                t0 = time.perf_counter()
                yield t0, self._lr_of(step), self._run_sync(batch, step)
                step += 1
            return
        nxt = next(it, None)
        if nxt is None:
            return
        t0 = time.perf_counter()
        cur = self._launch(nxt, step, False)
        try:
            while cur is not None:
                nxt = next(it, None) if self._may_launch(step + 1) else None
                ahead, t_next = None, time.perf_counter()
                if nxt is not None:
                    ahead = self._launch(nxt, step + 1, True)
                    self._pending = ahead
                m = cur.result()  # the one wait per step, one step late
                yield t0, self._lr_of(step), m
                self._pending = None
                if ahead is None:
                    # not launched ahead: finish this epoch (or stop) one synchronous step at a time
                    nxt = next(it, None)
                    if nxt is None:
                        return
                    t_next = time.perf_counter()
                    ahead = self._launch(nxt, step + 1, False)
                cur, t0, step = ahead, t_next, step + 1
        finally:
            self.discard()

    def discard(self) -> None:
        """Undo a step launched ahead that the loop will not count (it stopped first)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.discard()
