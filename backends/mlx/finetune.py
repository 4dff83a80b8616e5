"""Supervised fine-tuning on MLX: the SimCLR encoder + a linear classifier, trained end to end
with cross-entropy (the backend half of :mod:`simclr_xb.finetune`, which has the recipe).

Everything is reused from this backend: :class:`.resnet.ResNet` (the encoder), ``nn.Linear``
(the classifier ``fc``), :func:`.augment.augment` (the views), :class:`.lars.LARS` (with every
parameter excluded it is plain (Nesterov) momentum SGD, see :func:`simclr_xb.finetune.excluded_flags`),
:func:`.step.cross_entropy` and :mod:`.convert` (canonical names, the OIHW <-> OHWI layout).

:func:`head_features` projects frozen h through a pre-training Trainer's head (z, for
``simclr-xb features --with-z``). Mirrored name for name in ``backends/torch/finetune.py``.
Precision: "float32", or "float64" on the CPU; "bfloat16" is refused (as the MLX Trainer).
Runs eagerly (MLX is lazy; one ``mx.eval`` per step).
"""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from simclr_xb.augment import ViewParams
from simclr_xb.config import AugmentConfig, ModelConfig
from simclr_xb.finetune import FinetuneConfig, classifier_specs, excluded_flags
from simclr_xb.resnet_spec import check_weights, feature_dim
from simclr_xb.state import check_images, check_labelled

from . import convert
from .augment import augment
from .lars import LARS
from .resnet import ResNet
from .step import cross_entropy, eval_identity_views


class Classifier(nn.Module):
    """encoder f (``encoder.*``) + linear classifier ``fc``: x (N, S, S, 3) -> logits (N, C)."""

    def __init__(self, cfg: ModelConfig, num_classes: int):
        super().__init__()
        self.encoder = ResNet(cfg)
        self.fc = nn.Linear(feature_dim(cfg), num_classes)

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc(self.encoder(x))


class FinetuneTrainer:
    """Fine-tuning state: :class:`Classifier` + optimizer (same interface as the torch backend).

    model_cfg, aug_cfg: the pre-training config's model and augment sections; weights:
    canonical start weights (``encoder.*``, ``fc.*``); ft: the recipe; device: "cpu", "gpu"
    or None (GPU when MLX has one).
    """

    def __init__(self, model_cfg: ModelConfig, aug_cfg: AugmentConfig, num_classes: int,
                 weights: dict[str, np.ndarray], ft: FinetuneConfig, device: str | None = None):
        ft.validate()
        if ft.precision == "bfloat16":
            raise NotImplementedError("fine-tuning precision 'bfloat16' is not supported by the MLX "
                                      "backend: use 'float32'")
        self.aug_cfg, self.num_classes = aug_cfg, int(num_classes)
        self.dtype = ft.precision
        self._dev = convert.device_for(self.dtype, device)
        self.specs = classifier_specs(model_cfg, self.num_classes)
        check_weights(weights, self.specs, "fine-tuning weights")
        with mx.stream(self._dev):
            self.model = Classifier(model_cfg, self.num_classes)
            convert.set_canonical(self.model, weights, self.dtype)
            flags = excluded_flags(self.specs, ft.optimizer)
            self.optimizer = LARS(0.0, ft.momentum, ft.weight_decay, ft.eta, ft.nesterov,
                                  convert.tree_from_canonical(flags), convert.mx_dtype(self.dtype))
            self.optimizer.init(self.model.trainable_parameters())
            mx.eval(self.model.state, self.optimizer.state)

        def loss_fn(x, y):
            logits = self.model(x)
            acc = mx.mean((mx.argmax(logits, axis=1) == y).astype(logits.dtype)) * 100
            return cross_entropy(logits, y), acc

        self._loss_and_grad = nn.value_and_grad(self.model, loss_fn)

    @property
    def device(self) -> str:
        return convert.device_name(self._dev)

    def train_step(self, images_u8: np.ndarray, labels: np.ndarray, params: ViewParams,
                   lr: float) -> dict[str, float]:
        """One step of cross-entropy on the views ``params`` of uint8 NHWC ``images_u8`` with
        BatchNorm in train mode -> {"loss", "acc" (percent, on these views)}."""
        check_labelled(images_u8, labels, params)
        with mx.stream(self._dev):
            x = augment(np.asarray(images_u8), params, self.aug_cfg, convert.mx_dtype(self.dtype))
            y = mx.array(np.asarray(labels, dtype=np.int32))
            self.model.train()
            (loss, acc), grads = self._loss_and_grad(x, y)
            self.optimizer.learning_rate = lr
            self.optimizer.update(self.model, grads)
            mx.eval(loss, acc, self.model.state, self.optimizer.state)
        return {"loss": loss.item(), "acc": acc.item()}

    def predict(self, images_u8: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Eval-mode logits (N, C) float32 of the identity view (whole image resized)."""
        check_images(images_u8, "images")

        def logits_of(chunk, params):
            x = augment(chunk, params, self.aug_cfg, convert.mx_dtype(self.dtype))
            return convert.to_numpy(self.model(x).astype(mx.float32))

        with mx.stream(self._dev):
            return eval_identity_views(self.model, images_u8, batch_size, self.num_classes, logits_of)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Canonical weights of the fine-tuned model (``encoder.*``, ``fc.weight``, ``fc.bias``)."""
        return convert.get_canonical(self.model)


def head_features(trainer, h: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """z = g(h) in eval mode (BN running stats) for a pre-training ``step.Trainer`` -> (N, head_out) float32."""
    head = trainer.model.head
    out = []
    head.eval()
    try:
        with mx.stream(trainer._dev):
            for i in range(0, len(h), batch_size):
                t = convert.to_mx(np.asarray(h[i:i + batch_size]), trainer.dtype)
                out.append(convert.to_numpy(head(t).astype(mx.float32)))
    finally:
        head.train()
    if not out:
        return np.zeros((0, trainer.cfg.model.head_out), dtype=np.float32)
    return np.concatenate(out)


__all__ = ["Classifier", "FinetuneTrainer", "head_features"]
