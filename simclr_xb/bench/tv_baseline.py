"""The usual SimCLR data path, as torchvision and lightly users write it: ``ImageFolder`` + a
two-view transform on ``DataLoader`` workers. A standalone script, run by ``bench data``
(``--torchvision-python PATH``) with an interpreter that has torchvision; it imports the
standard library, numpy, PIL, torch and torchvision only (nothing of simclr_xb, whose torch
pin it need not share), and nothing at module level but the standard library, so the rest of
the package can import it (for :func:`rows_from_result`'s keys) without torchvision.

Usage::

    python tv_baseline.py ROOT --size 224 --mode full --workers 2 --batch-size 32 \
        (--files LIST.txt | --count 256 --seed 0) [--short-pairs 64]

``ROOT/train/<class>/*.jpg`` (or ``ROOT/<class>/*``). ``LIST.txt``: one path per line,
relative to the split folder (``<class>/<file>``), the images whose pairs are loaded, in
order. Modes (the view size S):

* ``full``: RandomResizedCrop(S, scale=(0.08, 1)) -> RandomHorizontalFlip ->
  RandomApply([ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8) -> RandomGrayscale(0.2) ->
  RandomApply([GaussianBlur(k, sigma=(0.1, 2.0))], p=0.5) with k ~ 10% of S, odd (only for
  S >= 96, as the project's recipe) -> ToTensor, twice per decoded image;
* ``crop-flip``: RandomResizedCrop -> RandomHorizontalFlip -> ToTensor, twice.

First ``steady_cpu_ms_per_pair``: a ``DataLoader(..., persistent_workers=True)`` over the N
pairs runs two epochs; the CPU of the second one (user + sys of this process, ``RUSAGE_SELF``,
and of the live workers, ``/proc/<pid>/stat``, deltas), / N: no start-up in it (the first
epoch is also the warm-up: page cache, lazy imports).

Then passes of a fresh ``DataLoader(Subset(ImageFolder), batch_size=B, num_workers=W,
shuffle=False, persistent_workers=False)`` iterated to its end, so its workers are joined when
it ends. CPU of a pass = user + sys of this process (``RUSAGE_SELF``) plus that of the joined
workers (``RUSAGE_CHILDREN``), deltas around the pass. Two passes are run: a long one over all
N pairs and a short one over the first M pairs; the printed JSON has both totals and

* ``cpu_ms_per_pair``: the long pass's CPU / N (worker start-up included);
* ``marginal_cpu_ms_per_pair``: (CPU(long) - CPU(short)) / (N - M): the start-up costs of the
  workers (fork, seeding, imports) cancel; what a long training run spends per pair;
* ``pairs_per_s``: N / the wall time of the steady (second) epoch; ``pass_pairs_per_s``: of the
  long fresh pass, worker start-up included.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

RESULT_KEYS = ("mode", "size", "workers", "batch_size", "pairs", "short_pairs", "cpu_s", "short_cpu_s",
               "wall_s", "cpu_ms_per_pair", "marginal_cpu_ms_per_pair", "steady_cpu_ms_per_pair", "pairs_per_s",
               "start_method",
               "versions")


def blur_kernel(size: int) -> int:
    """The Gaussian blur's kernel side: ~10% of the view size, odd (23 at 224 px, 9 at 96 px)."""
    return int(0.1 * size) // 2 * 2 + 1


def view_transform(size: int, mode: str):
    """One view's torchvision transform (see the module docstring)."""
    from torchvision import transforms as T
    if mode not in ("full", "crop-flip"):
        raise ValueError(f"mode {mode!r} is invalid: expected full or crop-flip")
    ops = [T.RandomResizedCrop(size, scale=(0.08, 1.0)), T.RandomHorizontalFlip()]
    if mode == "full":
        ops += [T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8), T.RandomGrayscale(p=0.2)]
        if size >= 96:
            ops.append(T.RandomApply([T.GaussianBlur(blur_kernel(size), sigma=(0.1, 2.0))], p=0.5))
    return T.Compose(ops + [T.ToTensor()])


class TwoViews:
    """The image decoded once by ImageFolder's loader, then ``transform`` applied twice."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, img):
        return self.transform(img), self.transform(img)


def _cpu_s() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def proc_cpu_s(pid: int) -> float:
    """user + sys CPU seconds of a live process (Linux /proc/<pid>/stat; clock-tick resolution)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def steady_cpu_s(pids, run) -> tuple[float, float]:
    """(CPU s, wall s) that this process and the live processes ``pids`` spend during ``run()``:
    RUSAGE_SELF and /proc/<pid>/stat deltas (the workers stay alive, so no start-up is in it)."""
    def now():
        s = resource.getrusage(resource.RUSAGE_SELF)
        return s.ru_utime + s.ru_stime + sum(proc_cpu_s(p) for p in pids)
    c0, t0 = now(), time.perf_counter()
    run()
    return now() - c0, time.perf_counter() - t0


def _steady(dataset, indices, batch_size: int, workers: int) -> tuple[float, float, int]:
    """(CPU s, wall s, pairs) of the second epoch of a persistent-worker DataLoader over ``indices``:
    epoch 1 starts the workers and warms the page cache, epoch 2 is counted."""
    from torch.utils.data import DataLoader, Subset
    loader = DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, num_workers=workers,
                        shuffle=False, persistent_workers=workers > 0)
    count = {"pairs": 0}

    def epoch():
        for (v1, _v2), _labels in loader:
            count["pairs"] += len(v1)
    epoch()
    pids = [w.pid for w in getattr(loader._iterator, "_workers", [])] if workers else []
    if len(pids) != workers:  # a torch whose iterator keeps its workers elsewhere: say so, never undercount
        raise SystemExit(f"tv_baseline: found {len(pids)} DataLoader worker pids, expected {workers}")
    count["pairs"] = 0
    cpu, wall = steady_cpu_s(pids, epoch)
    return cpu, wall, count["pairs"]  # the loader goes with this frame: its workers are shut down


def _pass(dataset, indices, batch_size: int, workers: int) -> tuple[float, float, int]:
    """(CPU s, wall s, pairs) of one fresh DataLoader pass over ``indices``."""
    from torch.utils.data import DataLoader, Subset
    loader = DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, num_workers=workers,
                        shuffle=False, persistent_workers=False)
    c0, t0 = _cpu_s(), time.perf_counter()
    pairs = 0
    for (v1, _v2), _labels in loader:  # exhausted: the iterator shuts its workers down and joins them
        pairs += len(v1)
    del loader
    wall = time.perf_counter() - t0
    return _cpu_s() - c0, wall, pairs


def _split_root(root: str) -> str:
    train = os.path.join(root, "train")
    return train if os.path.isdir(train) else root


def select(dataset, split_root: str, files: list[str] | None, count: int | None, seed: int) -> list[int]:
    """ImageFolder positions of ``files`` (paths relative to the split folder), or ``count``
    positions drawn without replacement with ``seed``."""
    if files is not None:
        pos = {os.path.relpath(p, split_root): i for i, (p, _) in enumerate(dataset.samples)}
        missing = [f for f in files if f not in pos]
        if missing:
            raise SystemExit(f"tv_baseline: {len(missing)} listed files are not in {split_root} "
                             f"(first: {missing[0]})")
        return [pos[f] for f in files]
    import numpy as np
    if count > len(dataset):
        raise SystemExit(f"tv_baseline: --count {count} > {len(dataset)} images in {split_root}")
    return [int(i) for i in np.random.default_rng(seed).choice(len(dataset), count, replace=False)]


def measure(root: str, size: int, mode: str, workers: int, batch_size: int, files: list[str] | None = None,
            count: int | None = None, seed: int = 0, short_pairs: int | None = None) -> dict:
    import multiprocessing

    import PIL
    import torch
    import torchvision
    from torchvision.datasets import ImageFolder
    torch.manual_seed(seed)
    split_root = _split_root(root)
    dataset = ImageFolder(split_root, transform=TwoViews(view_transform(size, mode)))
    idx = select(dataset, split_root, files, count, seed)
    short = short_pairs if short_pairs is not None else max(batch_size * max(workers, 1), len(idx) // 4)
    short = min(short, len(idx) - 1)
    if short < 1:
        raise SystemExit(f"tv_baseline: {len(idx)} pairs are too few (a short and a long pass need >= 2)")
    steady_cpu, steady_wall, steady_pairs = _steady(dataset, idx, batch_size, workers)  # also the warm-up
    short_cpu, _, _ = _pass(dataset, idx[:short], batch_size, workers)
    cpu, wall, pairs = _pass(dataset, idx, batch_size, workers)
    return {"mode": mode, "size": size, "workers": workers, "batch_size": batch_size, "pairs": pairs,
            "short_pairs": short, "cpu_s": cpu, "short_cpu_s": short_cpu, "wall_s": wall,
            "cpu_ms_per_pair": 1000 * cpu / pairs,
            "marginal_cpu_ms_per_pair": 1000 * (cpu - short_cpu) / (pairs - short),
            "steady_cpu_ms_per_pair": 1000 * steady_cpu / steady_pairs,
            "pairs_per_s": steady_pairs / steady_wall, "pass_pairs_per_s": pairs / wall,
            "start_method": multiprocessing.get_start_method(),
            "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                         "pillow": PIL.__version__, "python": platform.python_version()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root")
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--mode", choices=("full", "crop-flip"), required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--files", help="text file: one path per line, relative to the split folder")
    ap.add_argument("--count", type=int, help="pairs drawn at random (instead of --files)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--short-pairs", type=int, default=None)
    a = ap.parse_args(argv)
    if (a.files is None) == (a.count is None):
        ap.error("give exactly one of --files and --count")
    files = None
    if a.files is not None:
        with open(a.files) as f:
            files = [line.strip() for line in f if line.strip()]
    out = measure(a.root, a.size, a.mode, a.workers, a.batch_size, files, a.count, a.seed, a.short_pairs)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
