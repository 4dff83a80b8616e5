"""The kNN monitor: the weighted kNN of ``simclr-xb eval`` measured while pre-training runs.

Every ``train.monitor_every`` epochs (at the epoch's last step) and at the run's last step,
rank 0 encodes a fixed subset of the training split (the bank: ``train.monitor_train``
images) and of the test split (``train.monitor_eval`` images), both drawn once from
``train.seed`` (:func:`simclr_xb.augment.sample_subset`; the whole split when it is smaller),
and scores :func:`simclr_xb.evaluate.knn_classify` (k = 200, tau = 0.1; Wu et al. 2018), the
same function and features as ``simclr-xb eval``. The result goes into that step's
metrics.jsonl record (``knn_top1``, ``knn_top5``, ``knn_s``), the progress line and
training.png.

Isolation: the features come from a second Trainer of the same backend, on the same device,
in float32 (as ``simclr-xb eval`` computes them), into which the current encoder weights are
copied for each check, and whose eval-mode ``encode`` reads the running BN statistics. The
training model, its BN buffers, momenta and compiled step are never called, so the monitor
cannot change the trajectory (tests/test_monitor.py compares runs with it on and off, in one
process and in two data-parallel ranks), and its value equals ``simclr-xb eval``'s kNN on a
checkpoint of the same step and the same images.

Checks come only at an epoch's last step and at the run's last step: there the MLX step
pipeline (simclr_xb/pipeline.py) has no step in flight (it never launches ahead across an
epoch's end or past the last step), so ``trainer.state_dict()`` is the state after that step
(the MLX case of the eval-equality test checks it).

Cost: one forward of ``monitor_train + monitor_eval`` images per check (the demo, 2000 +
2000 images of 32 px: docs in README.md "Watching a run"). ``train.monitor_every = 0`` turns it
off. Other ranks wait at the next step's collective while rank 0 checks.
"""
from __future__ import annotations

import time

import numpy as np

from .augment import sample_subset

KNN_K, KNN_T = 200, 0.1  # simclr-xb eval's defaults (SIMCLR-FACTS.md, "Evaluation")


class KnnMonitor:
    """``after_step(trainer, step)`` returns ``{knn_top1, knn_top5, knn_s}`` when a check is
    due at ``step`` (1-based count of finished steps), else ``{}``."""

    def __init__(self, cfg, backend: str, device: str | None, bank_images, bank_labels,
                 eval_images, eval_labels, num_classes: int, steps_per_epoch: int, end_step: int):
        self.cfg = cfg
        self.backend, self.device = backend, device
        self.bank = (bank_images, np.asarray(bank_labels, np.int64))
        self.test = (eval_images, np.asarray(eval_labels, np.int64))
        self.num_classes = int(num_classes)
        self.spe, self.end = int(steps_per_epoch), int(end_step)
        self.every = int(cfg.train.monitor_every)
        self.last: dict | None = None
        self._encoder = None
        self.log = print
        self.failed: str | None = None  # why a check failed; the monitor is then off

    @classmethod
    def for_run(cls, cfg, backend: str, device: str | None, dataset, steps_per_epoch: int,
                end_step: int, log=print) -> KnnMonitor | None:
        """The monitor of a training run on ``dataset`` (the training split), or None when it is
        off (``train.monitor_every = 0``) or cannot run (no labels, no test split: logged)."""
        if cfg.train.monitor_every == 0:
            return None
        from .data import open_dataset
        if getattr(dataset, "labels", None) is None or not getattr(dataset, "classes", None):
            log("kNN monitor off: the training data has no labels")
            return None
        if getattr(dataset, "name", None) != cfg.data.name:
            log(f"kNN monitor off: the training split was passed in ({dataset.name!r}), so its "
                f"test split is unknown (data.name = {cfg.data.name!r})")
            return None
        try:
            test = open_dataset(cfg.data.name, "test", root=cfg.data.root)
        except (OSError, ValueError) as e:
            log(f"kNN monitor off: no test split to score ({e}); set train.monitor_every=0 to "
                f"silence this")
            return None
        if list(test.classes) != list(dataset.classes):
            log("kNN monitor off: the test split's classes differ from the training split's")
            return None
        seed, t = cfg.train.seed, cfg.train
        bi = sample_subset(seed, len(dataset.labels), t.monitor_train, "train")
        ei = sample_subset(seed, len(test.labels), t.monitor_eval, "test")
        if getattr(dataset, "is_stream", False):  # folder:/wds: the subsets stay indexes, decoded per check
            m = cls(cfg, backend, device, dataset.subset(bi), dataset.labels[bi], test.subset(ei),
                    test.labels[ei], len(dataset.classes), steps_per_epoch, end_step)
        else:
            m = cls(cfg, backend, device, dataset.images[bi], dataset.labels[bi], test.images[ei],
                    test.labels[ei], len(dataset.classes), steps_per_epoch, end_step)
        m.log = log
        return m

    def due(self, step: int) -> bool:
        epoch_end = step % self.spe == 0 and (step // self.spe) % self.every == 0
        return step == self.end or epoch_end

    def _eval_trainer(self):
        """A float32 Trainer of the run's model (``simclr-xb eval``'s features), built once."""
        if self._encoder is None:
            from .backend import get_backend
            cfg = self.cfg
            if cfg.train.precision == "bfloat16":
                cfg = cfg.with_value("train.precision", "float32")
            cfg = cfg.with_value("train.compile", False).validate()
            self._encoder = get_backend(self.backend).Trainer(cfg, None, device=self.device, encode_only=True)
        return self._encoder

    def check(self, trainer, step: int) -> dict:
        """Score the current encoder of ``trainer`` now; returns the record fields."""
        from .evaluate import encoder_weights, knn_classify
        t0 = time.perf_counter()
        enc = self._eval_trainer()
        enc.load_state_dict(encoder_weights(trainer.state_dict(), self.cfg.model))
        bank, bank_y = self._encode(enc, *self.bank)
        test, test_y = self._encode(enc, *self.test)
        r = knn_classify(bank, bank_y, test, test_y, k=KNN_K, temperature=KNN_T,
                         num_classes=self.num_classes)
        self.last = {"knn_top1": r["top1"], "knn_top5": r["top5"],
                     "knn_s": round(time.perf_counter() - t0, 3)}
        if self.last["knn_top5"] is None:
            del self.last["knn_top5"]
        return dict(self.last)

    def _encode(self, enc, images, labels):
        """(h, labels): in-memory images as they are; a StreamDataset subset through its
        evaluation views (simclr_xb.data.stream.encode_split)."""
        if not getattr(images, "is_stream", False):
            return enc.encode(images, batch_size=256), labels
        from .data.stream import encode_split
        from .train import stream_resample
        d = self.cfg.data
        return encode_split(enc, images, 256, self.cfg.augment.image_size, d.num_workers,
                            stream_resample(self.cfg), d.skip_bad_images, d.resize)

    def after_step(self, trainer, step: int) -> dict:
        """:meth:`check` when due. A failing check (e.g. out of memory) never fails the run: it
        is logged and the monitor stays off for the rest of the run."""
        if self.failed is not None or not self.due(step):
            return {}
        try:
            return self.check(trainer, step)
        except Exception as e:  # noqa: BLE001 - a monitor must never stop training
            self.failed = f"{type(e).__name__}: {e}"
            self.log(f"warning: the kNN monitor failed at step {step} ({self.failed}); it is off for "
                     f"the rest of the run")
            return {}

    def shown(self) -> dict:
        """The progress line's field: the latest kNN top-1."""
        return {"knn": f"{self.last['knn_top1']:.1f}%"} if self.last else {}
