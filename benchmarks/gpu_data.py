"""GPU training from a JPEG folder: ResNet-50 bf16 at 224 px fed by this machine's CPU workers.

Issue 12's GPU check, as one short prepared script. It

1. generates an ImageNet-like JPEG folder (``simclr_xb.bench.data.make_jpeg_folder``: shorter
   side mostly 300-500 px, some up to 2000, aspect 0.5-2, quality 75-95), in parallel on the
   machine's cores, or reuses one (``--folder``);
2. times the model-only ceiling: ``Trainer.train_step(..., cropped=True)`` on views already in
   memory (the same step the training loop runs on streamed data: flip, jitter, grayscale
   and blur on the GPU, ResNet-50 + head forward/backward in bf16 + channels_last, NT-Xent,
   LARS);
3. times end to end: the same step fed by :class:`simclr_xb.data.StreamLoader` with
   ``--workers`` decode processes (decode once, crop both views from the original image,
   resize; ``data.resize`` as configured), reporting images/s and the fraction of wall time
   the step loop spent waiting for the next batch.

``images/s`` counts source images (each step trains on 2N views). Prints one JSON object (also
written to ``--json``).

Usage::

    python benchmarks/gpu_data.py                          # 8,000 files, batch 256, cores - 2 workers
    python benchmarks/gpu_data.py --device cpu --tiny      # a seconds-long smoke test (CPU)

Not run in CI (no GPU there); tests/test_bench.py runs the smoke test.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def _make_part(args) -> int:
    from simclr_xb.bench.data import make_jpeg_folder
    root, n, seed = args
    make_jpeg_folder(Path(root), n, seed=seed)
    return n


def make_folder(root: Path, n: int, procs: int) -> Path:
    """ROOT/part-<k>/train/<class>/*.jpg in ``procs`` parallel parts; the StreamDataset reads
    them as one folder of classes ``c00`` .. ``c09`` through a symlinked train/ tree."""
    per = max(1, n // procs)
    parts = [(str(root / f"part-{k}"), per, k) for k in range(procs)]
    with ProcessPoolExecutor(procs) as ex:
        list(ex.map(_make_part, parts))
    train = root / "all" / "train"
    for k in range(procs):
        for cdir in sorted((root / f"part-{k}" / "train").iterdir()):
            dst = train / cdir.name
            dst.mkdir(parents=True, exist_ok=True)
            for f in cdir.iterdir():
                link = dst / f"p{k}-{f.name}"
                if not link.exists():
                    link.symlink_to(f)
    return root / "all"


def main(argv=None) -> int:  # noqa: C901 - one linear script: folder, ceiling, end to end, report
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", default=None, help="an existing ROOT/train/<class>/*.jpg folder")
    ap.add_argument("--files", type=int, default=8000)
    ap.add_argument("--work-dir", default="runs/gpu-data")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--device", default=None, help="default: cuda")
    ap.add_argument("--tiny", action="store_true", help="ResNet-18 x0.125 at 32 px, 40 files (smoke test)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    import torch

    from simclr_xb.augment import sample_pair
    from simclr_xb.backends.torch.step import Trainer
    from simclr_xb.config import preset
    from simclr_xb.data import StreamLoader, open_dataset
    from simclr_xb.data.decode import resolve_resize
    if a.device is None and not torch.cuda.is_available():
        print("no CUDA device: pass --device cpu (with --tiny for a smoke test)", file=sys.stderr)
        return 2
    device = a.device or "cuda"
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    n_files = 40 if a.tiny else a.files
    batch = min(a.batch, 8) if a.tiny else a.batch
    t0 = time.perf_counter()
    root = Path(a.folder) if a.folder else make_folder(Path(a.work_dir), n_files, min(16, os.cpu_count() or 1))
    gen_s = time.perf_counter() - t0
    ds = open_dataset(f"folder:{root}")
    cfg = preset("imagenet")
    over = {"model.arch": "resnet50", "train.batch_size": batch, "train.precision": "bfloat16",
            "train.channels_last": True, "data.num_workers": a.workers}
    if a.tiny:
        over.update({"model.arch": "resnet18", "model.width": 0.125, "augment.image_size": 32})
    for k, v in over.items():
        cfg = cfg.with_value(k, v)
    cfg = cfg.validate()
    S = cfg.augment.image_size
    trainer = Trainer(cfg, None, device=device)
    spe = len(ds) // batch
    if spe < 2:
        print(f"{len(ds)} files make fewer than 2 batches of {batch}", file=sys.stderr)
        return 2

    def make_params(epoch, step, idx, hw):
        return list(sample_pair(cfg.augment, len(idx), hw, 0, epoch, epoch * spe + step, 0))

    def sync():
        if trainer.device.startswith("cuda"):
            torch.cuda.synchronize()

    # Model-only ceiling: the first batches, kept in memory, stepped over and over.
    with StreamLoader(ds, batch, make_params, S, num_workers=a.workers, resize=cfg.data.resize) as L:
        kept = []
        for b in L.epoch(0):
            kept.append(b)
            if len(kept) == 2:
                break
    for s in range(a.warmup):
        b = kept[s % 2]
        trainer.train_step(b.views, None, *b.params, 0.1, cropped=True)
    sync()
    t0 = time.perf_counter()
    for s in range(a.steps):
        b = kept[s % 2]
        trainer.train_step(b.views, None, *b.params, 0.1, cropped=True)  # reads the loss: one sync
    sync()
    ceiling_s = (time.perf_counter() - t0) / a.steps
    # End to end: the workers decode while the GPU steps; time blocked on the loader is "wait".
    done, wait, epoch = 0, 0.0, 0
    total = a.warmup + a.steps
    with StreamLoader(ds, batch, make_params, S, num_workers=a.workers, resize=cfg.data.resize) as L:
        while done < total:
            it = L.epoch(epoch)
            while done < total:
                tw = time.perf_counter()
                try:
                    b = next(it)
                except StopIteration:
                    break
                if done == a.warmup:
                    sync()
                    t0, wait = time.perf_counter(), 0.0
                elif done > a.warmup:
                    wait += time.perf_counter() - tw
                trainer.train_step(b.views, None, *b.params, 0.1, cropped=True)
                done += 1
            epoch += 1
        sync()
        window = time.perf_counter() - t0  # a.steps steps and the a.steps - 1 waits between them
    e2e_s = window / a.steps
    wait_frac = wait / window
    out = {"device": trainer.device, "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
           "cpus": os.cpu_count(), "workers": a.workers, "resize": resolve_resize(cfg.data.resize),
           "arch": cfg.model.arch, "width": cfg.model.width, "image_size": S, "batch": batch,
           "precision": "bfloat16 + channels_last", "files": len(ds), "folder_s": round(gen_s, 1),
           "steps": a.steps, "model_only_images_per_s": batch / ceiling_s,
           "end_to_end_images_per_s": batch / e2e_s, "end_to_end_vs_model_only": ceiling_s / e2e_s,
           "data_wait_fraction": wait_frac, "torch": torch.__version__}
    print(json.dumps(out, indent=1), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
