"""``bench data``'s end-to-end rows: SimCLR training images/s from the generated JPEG folder
on the torch backend (CPU), against the same step on data already in memory.

The trainer is :mod:`.train`'s (``ARCHS``: ResNet-50 width x0.25 at 224 px with blur at full
size; the tiny network at ``size="tiny"``) and the loader is the training loop's own
(:func:`simclr_xb.train.stream_train_loader`, 2 spawned workers). Three steps are timed
round-robin (:func:`.train._time_interleaved`), ``steps`` per run:

* ``e2e``: the next batch from the StreamLoader (the workers decode, crop and resize the two
  views of every image), then ``train_step(views, ..., cropped=True)``: flip, jitter,
  grayscale and blur batched in the step, forward, NT-Xent, backward, LARS;
* ``in-memory``: the same ``cropped=True`` step on batches already decoded (held in memory,
  cycled): the ceiling for a data path whose decode costs nothing;
* ``model``: the step on views already augmented (``views=``): the model-only ceiling of the
  ``train`` suite.

The workers share the machine's cores with the step (torch's intra-op threads = the cores):
on a 2-core machine the e2e step pays for the decode with its own CPU time; on a GPU machine
the step runs on the device and the workers have the CPUs to themselves.

The workers run ahead (prefetch = 2 batches); left running while the other steps are timed,
they would fill the ring for free. So every e2e run is one epoch of a subset of exactly
``lead + steps`` batches: the first ``lead`` = 2 untimed (the workers are then busy on the next
ones, the steady state), ``steps`` timed, and the epoch ends with the workers idle.
"""
from __future__ import annotations

import numpy as np

from .common import Timing, rate

E2E_ARCH = {"full": "resnet50-w0.25-224px-blur", "tiny": "resnet18-w8-cifar-16px"}
LEAD = 2  # = the StreamLoader's prefetch in stream_train_loader


def rows(ds, size: str, log, threads: int, steps: int | None = None, repeats: int | None = None,
         workers: int = 2) -> list[dict]:
    """The three ``e2e`` rows (module docstring); torch runs ``threads`` intra-op threads."""
    import torch

    from simclr_xb.augment import ViewParams
    from simclr_xb.backends.torch.api import Trainer
    from simclr_xb.backends.torch.augment import augment_cropped
    from simclr_xb.train import stream_train_loader

    from .train import ARCHS, _config, _time_interleaved
    arch = E2E_ARCH[size]
    model, aug, batch, _ = ARCHS[size][arch]
    if size == "tiny":
        batch = 4
    steps = steps or (1 if size == "tiny" else 4)
    repeats = repeats or (1 if size == "tiny" else 3)
    cfg = _config(model, aug, batch, "float32", False)
    cfg = cfg.with_value("data.num_workers", workers)
    need = (LEAD + steps) * batch
    if len(ds) < need:
        raise ValueError(f"bench data end to end: {len(ds)} files, expected >= {need} "
                         f"({LEAD} + {steps} batches of {batch})")
    torch.set_num_threads(threads)
    tr = Trainer(cfg, None, device="cpu")
    loader = stream_train_loader(cfg, ds.subset(np.arange(need)), batch, 0, 1)
    state = {"epoch": 0}
    try:
        held = list(loader.epoch(0))  # the in-memory batches (decoded once, untimed)
        b0 = held[0]
        x = augment_cropped(torch.from_numpy(b0.views), ViewParams.concat(list(b0.params)), cfg.augment)

        def fresh_pass():
            state["epoch"] += 1
            state["it"] = loader.epoch(state["epoch"])
            for _ in range(LEAD):
                next(state["it"])

        def e2e(k):
            b = next(state["it"])
            tr.train_step(b.views, None, *b.params, 0.1, cropped=True)

        def in_memory(k):
            b = held[k % len(held)]
            tr.train_step(b.views, None, *b.params, 0.1, cropped=True)

        def model_only(k):
            tr.train_step(b0.views, None, *b0.params, 0.1, cropped=True, views=x)
        t = _time_interleaved({"e2e": e2e, "in-memory": in_memory, "model": model_only}, steps, repeats,
                              before={"e2e": fresh_pass})
    finally:
        state.clear()
        loader.close()
    threads = torch.get_num_threads()
    note = (f"the {workers} data workers share the {threads} cores with the step's {threads} torch threads "
            "(a CPU-only machine: the decode takes the step's CPU time)")
    out = []
    for mode in ("e2e", "in-memory", "model"):
        tm: Timing = t[mode]
        out.append({"bench": "e2e", "arch": arch, "mode": mode, "batch": batch, "image_size": aug.image_size,
                    "workers": workers if mode == "e2e" else 0, "torch_threads": threads,
                    "images_per_s": batch / tm.median, **tm.to_dict(), **rate(batch, tm)})
    out[0]["of_in_memory"] = t["in-memory"].median / t["e2e"].median
    out[0]["of_model_ceiling"] = t["model"].median / t["e2e"].median
    out[0]["note"] = note
    log(f"data end to end {arch}: {out[0]['images_per_s']:.1f} img/s from the JPEG folder, "
        f"{out[1]['images_per_s']:.1f} img/s in memory, {out[2]['images_per_s']:.1f} img/s model only "
        f"({100 * out[0]['of_model_ceiling']:.0f}% of the ceiling; {note})")
    return out
