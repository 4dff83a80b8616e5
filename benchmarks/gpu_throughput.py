"""GPU throughput of the PyTorch backend's full SimCLR training step: images/s and TFLOP/s.

What is timed: ``Trainer.train_step`` (the real step: both views augmented on the device, ONE
encoder + head forward over the 2N views, NT-Xent, backward, LARS) on synthetic uint8 images,
after warm-up steps (more with torch.compile, whose first calls compile). ``images/s`` counts
source images (each step trains on 2N views of N images). ``TFLOP/s`` = the model's
forward + backward FLOPs per step (counted once by ``torch.utils.flop_counter.FlopCounterMode``
on the eager model over 2N views: convolutions and matmuls, the usual convention; the
augmentation, BN, NT-Xent and LARS are not counted) divided by the measured step time.

Configurations (each with and without ``torch.compile``; bf16 autocast and channels_last
always, as the trainer does with ``train.precision = "bfloat16"``):

* ``resnet50-224``: the ``imagenet`` preset, ResNet-50, 224 px views from 256 px images;
* ``resnet18-cifar``: the ``cifar`` preset with ResNet-18 (CIFAR stem), 32 px.

Data parallel: started under torchrun (``torchrun --nproc-per-node 8 benchmarks/gpu_throughput.py``)
every rank runs the same step with DDP, global BN (SyncBatchNorm) and global negatives;
``--batch`` is then per GPU and the reported images/s is the global rate (rank 0 prints).

Usage::

    python benchmarks/gpu_throughput.py                      # both configs, compile off and on
    python benchmarks/gpu_throughput.py --configs resnet18-cifar --batch 1024 --json out.json
    python benchmarks/gpu_throughput.py --device cpu --tiny  # a seconds-long smoke test

Not run in this project's CI (no GPU there); docs/distributed.md says so.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from simclr_xb.augment import sample_pair
from simclr_xb.config import preset
from simclr_xb.distributed import from_env

CONFIGS = {
    # name: (preset, overrides, source image side, default per-GPU batch)
    "resnet50-224": ("imagenet", {"model.arch": "resnet50"}, 256, 128),
    "resnet18-cifar": ("cifar", {"model.arch": "resnet18"}, 32, 512),
}
TINY = {"model.arch": "resnet18", "model.width": 0.125, "augment.image_size": 16}


def make_config(name: str, batch: int, world: int, compile_: bool, tiny: bool):
    pre, over, _, _ = CONFIGS[name]
    cfg = preset(pre)
    for k, v in {**over, **(TINY if tiny else {}), "train.batch_size": batch * world,
                 "train.precision": "bfloat16", "train.channels_last": True,
                 "train.compile": compile_}.items():
        cfg = cfg.with_value(k, v)
    return cfg.validate()


def model_flops(trainer, n_views: int) -> float:
    """Forward + backward FLOPs of encoder + head over ``n_views`` views (eager model)."""
    from torch.utils.flop_counter import FlopCounterMode
    s = trainer.cfg.augment.image_size
    x = torch.rand(n_views, 3, s, s, device=trainer.device).contiguous(memory_format=torch.channels_last)
    model = trainer.model
    saved = {k: v.clone() for k, v in model.state_dict().items()}  # BN running stats move
    with FlopCounterMode(display=False) as counter:
        with trainer._autocast():
            _, z = model(x)
        z.float().square().mean().backward()
    model.zero_grad(set_to_none=True)
    model.load_state_dict(saved)
    return float(counter.get_total_flops())


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench(name: str, batch: int, steps: int, warmup: int, compile_: bool, device: str | None,
          tiny: bool, dist) -> dict:
    from simclr_xb.backends.torch.step import Trainer
    world = dist.world if dist is not None else 1
    rank = dist.rank if dist is not None else 0
    cfg = make_config(name, batch, world, compile_, tiny)
    side = 20 if tiny else CONFIGS[name][2]
    trainer = Trainer(cfg, None, device=device, dist=dist)
    rng = np.random.default_rng(rank)
    images = rng.integers(0, 256, (batch, side, side, 3), dtype=np.uint8)
    flops = model_flops(trainer, 2 * batch)
    views = [sample_pair(cfg.augment, batch, (side, side), 0, 0, s, rank) for s in range(4)]
    for s in range(warmup + (10 if compile_ and not tiny else 0)):
        trainer.train_step(images, None, *views[s % 4], 0.1)
    sync(trainer.device)
    t0 = time.perf_counter()
    for s in range(steps):
        trainer.train_step(images, None, *views[s % 4], 0.1)  # reads the loss: one sync per step
    sync(trainer.device)
    dt = (time.perf_counter() - t0) / steps
    out = {"config": name, "compile": compile_, "device": trainer.device, "world": world,
           "batch_per_rank": batch, "global_batch": batch * world, "step_s": dt,
           "images_per_s": batch * world / dt, "views_per_s": 2 * batch * world / dt,
           "gflop_per_view": flops / (2 * batch) / 1e9, "tflop_per_s": flops * world / dt / 1e12}
    if trainer.device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name()
        out["max_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {list(CONFIGS)}")
    ap.add_argument("--batch", type=int, default=None, help="images per GPU (default: per config)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--compile", choices=["off", "on", "both"], default="both")
    ap.add_argument("--device", default=None, help="default: cuda (cuda:LOCAL_RANK under torchrun)")
    ap.add_argument("--tiny", action="store_true", help="tiny model and images (smoke test, CPU)")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args(argv)
    if a.device is None and not torch.cuda.is_available():
        print("no CUDA device: pass --device cpu (with --tiny for a smoke test)", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dist = from_env("torch")
    compiles = {"off": [False], "on": [True], "both": [False, True]}[a.compile]
    results = []
    for name in a.configs.split(","):
        if name not in CONFIGS:
            ap.error(f"unknown config {name!r}: expected one of {list(CONFIGS)}")
        for c in compiles:
            batch = a.batch or (8 if a.tiny else CONFIGS[name][3])
            r = bench(name, batch, a.steps, a.warmup, c, a.device, a.tiny, dist)
            results.append(r)
            if dist is None or dist.is_main:
                print(f"{r['config']:15s} compile={str(c):5s} {r['device']:8s} x{r['world']} batch "
                      f"{r['global_batch']:5d}: {r['step_s'] * 1e3:8.1f} ms/step {r['images_per_s']:9.1f} img/s "
                      f"{r['tflop_per_s']:7.2f} TFLOP/s ({r['gflop_per_view']:.2f} GFLOP per view fwd+bwd)",
                      flush=True)
    if a.json and (dist is None or dist.is_main):
        with open(a.json, "w") as f:
            json.dump({"results": results, "torch": torch.__version__}, f, indent=2)
    if dist is not None:
        dist.barrier()
        dist.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
