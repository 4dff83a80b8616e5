"""Frozen features for every image of a dataset, in one HDF5 file, for users' own probes,
retrieval or plots.

File layout (format ``simclr-xb-features``)::

    /<split>/h        float32 (N, feature_dim)  eval-mode h of the identity view (Trainer.encode,
                                                computed in float32 whatever the training precision)
    /<split>/z        float32 (N, head_out)     z = g(h), head in eval mode (only with with_z)
    /<split>/labels   int64 (N,)
    attrs: format, checkpoint (path), step, arch, width, cifar_stem, image_size, feature_dim,
           z_dim (0 without z), data, splits (JSON), classes (JSON), backend, created

h is exactly what ``simclr-xb eval`` probes. The file is written atomically (temp file, fsync,
rename), so a crash leaves either the old file or none.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import h5py
import numpy as np

from .resnet_spec import feature_dim

FORMAT = "simclr-xb-features"
SPLIT_CHOICES = {"train": ("train",), "test": ("test",), "both": ("train", "test")}


def extract_features(ckpt, out: str | Path, data_spec: str | None = None, split: str = "both",
                     with_z: bool = False, backend: str | None = None, device: str | None = None,
                     batch_size: int = 256, root: str | None = None, log=print) -> dict:
    """Encode every image of ``split`` ("train" | "test" | "both") with the encoder of ``ckpt``
    (a :class:`~simclr_xb.checkpoint.Checkpoint`) and write ``out``. Returns a summary dict."""
    from .backend import backend_module, get_backend
    from .data import open_dataset
    from .data.stream import encode_split
    from .evaluate import encoder_weights, pick_backend
    from .train import stream_resample

    if split not in SPLIT_CHOICES:
        raise ValueError(f"split {split!r} is invalid: expected one of {sorted(SPLIT_CHOICES)}")
    # Features are float32 whatever the pre-training precision (a bfloat16-trained checkpoint
    # would otherwise be encoded under bf16 autocast on torch, and refused by MLX).
    cfg = ckpt.config.with_value("train.precision", "float32").validate()
    spec = data_spec or cfg.data.name
    backend = pick_backend(backend, ckpt.backend or None)
    trainer = get_backend(backend).Trainer(cfg, None, device=device, encode_only=True)
    trainer.load_state_dict(encoder_weights(ckpt.weights, cfg.model))
    project = backend_module(backend, "finetune").head_features
    t0 = time.perf_counter()
    groups, classes = {}, None
    for s in SPLIT_CHOICES[split]:
        ds = open_dataset(spec, s, root=root or cfg.data.root, skip_bad_images=cfg.data.skip_bad_images)
        classes = ds.classes
        log(f"encoding {len(ds.labels)} {s} images of {spec} with the {backend} backend on {trainer.device} ...")
        h, labels = encode_split(trainer, ds, batch_size, cfg.augment.image_size, cfg.data.num_workers,
                                 stream_resample(cfg), cfg.data.skip_bad_images, cfg.data.resize)
        g = {"h": h.astype(np.float32), "labels": labels.astype(np.int64)}
        if with_z:
            g["z"] = project(trainer, h)
        groups[s] = g
    m = cfg.model
    attrs = {"format": FORMAT, "checkpoint": str(ckpt.path or ""), "step": int(ckpt.step),
             "arch": m.arch, "width": float(m.width), "cifar_stem": bool(m.cifar_stem),
             "image_size": int(cfg.augment.image_size), "feature_dim": int(feature_dim(m)),
             "z_dim": int(m.head_out) if with_z else 0, "data": spec,
             "splits": json.dumps(list(groups)), "classes": json.dumps(list(classes or [])),
             "backend": backend, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path = write_features(out, groups, attrs)
    return {"path": str(path), "splits": {s: int(len(g["labels"])) for s, g in groups.items()},
            "feature_dim": attrs["feature_dim"], "z_dim": attrs["z_dim"], "backend": backend,
            "wall_s": round(time.perf_counter() - t0, 2)}


def write_features(path: str | Path, groups: dict[str, dict[str, np.ndarray]], attrs: dict) -> Path:
    """Write ``{split: {name: array}}`` and ``attrs`` to ``path`` atomically."""
    from .checkpoint import atomic_write

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            for k, v in attrs.items():
                f.attrs[k] = v
            for split, arrays in groups.items():
                grp = f.create_group(split)
                for name, a in arrays.items():
                    grp.create_dataset(name, data=a)
            f.flush()

    return atomic_write(path, write, label="feature file ")


def load_features(path: str | Path) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """({split: {"h", "labels"[, "z"]}}, attrs) of a features file."""
    path = Path(path)
    with h5py.File(path, "r") as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        if attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is not a simclr-xb features file (format {attrs.get('format')!r})")
        groups = {s: {k: np.asarray(ds[()]) for k, ds in f[s].items()} for s in json.loads(attrs["splits"])}
    return groups, attrs
