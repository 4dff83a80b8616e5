"""Supervised fine-tuning on PyTorch: the SimCLR encoder + a linear classifier, trained end to
end with cross-entropy (the backend half of :mod:`simclr_xb.finetune`, which has the recipe).

Everything is reused from this backend: :class:`.resnet.ResNet` (the encoder), ``nn.Linear``
(the classifier ``fc``), :func:`.augment.augment` (the views), :class:`.lars.LARS` (with every
parameter excluded it is plain (Nesterov) momentum SGD, see :func:`simclr_xb.finetune.excluded_flags`)
and :func:`.step.set_weights` / :func:`.step.get_weights` (canonical names, no layout change).

:func:`head_features` projects frozen h through a pre-training Trainer's head (z, for
``simclr-xb features --with-z``). Mirrored name for name in ``backends/mlx/finetune.py``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from simclr_xb.augment import ViewParams
from simclr_xb.config import AugmentConfig, ModelConfig
from simclr_xb.finetune import FinetuneConfig, classifier_specs, excluded_flags
from simclr_xb.resnet_spec import check_weights, feature_dim
from simclr_xb.state import check_images, check_labelled

from .augment import augment
from .convert import resolve_device, to_numpy, to_tensor
from .lars import LARS
from .layers import NormLayer, batch_norm
from .resnet import ResNet
from .step import eval_identity_views, get_weights, set_weights


class Classifier(nn.Module):
    """encoder f (``encoder.*``) + linear classifier ``fc``: x (N, 3, S, S) -> logits (N, C)."""

    def __init__(self, cfg: ModelConfig, num_classes: int, norm_layer: NormLayer = batch_norm):
        super().__init__()
        self.encoder = ResNet(cfg, norm_layer)
        self.fc = nn.Linear(feature_dim(cfg), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(x))


class FinetuneTrainer:
    """Fine-tuning state on one device: :class:`Classifier` + optimizer.

    model_cfg, aug_cfg: the pre-training config's model and augment sections (the views are
    ``aug_cfg.image_size``); weights: canonical start weights (``encoder.*``, ``fc.*``, e.g.
    :func:`simclr_xb.finetune.initial_weights`); ft: the recipe (optimizer, momentum, weight
    decay, precision). The learning rate comes with each step.
    """

    def __init__(self, model_cfg: ModelConfig, aug_cfg: AugmentConfig, num_classes: int,
                 weights: dict[str, np.ndarray], ft: FinetuneConfig, device: str | None = None):
        ft.validate()
        self.aug_cfg, self.num_classes = aug_cfg, int(num_classes)
        self._device = resolve_device(device)
        self.dtype = torch.float64 if ft.precision == "float64" else torch.float32
        self.amp = ft.precision == "bfloat16"
        self.specs = classifier_specs(model_cfg, self.num_classes)
        check_weights(weights, self.specs, "fine-tuning weights")
        with torch.device("meta"):
            model = Classifier(model_cfg, self.num_classes)
        self.model = model.to_empty(device=self._device).to(self.dtype)
        set_weights(self.model, weights, where="fine-tuning weights")
        self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = LARS(self.model.named_parameters(), excluded_flags(self.specs, ft.optimizer),
                              lr=0.0, momentum=ft.momentum, weight_decay=ft.weight_decay, eta=ft.eta,
                              nesterov=ft.nesterov)

    @property
    def device(self) -> str:
        return str(self._device)

    def _autocast(self):
        return torch.autocast(self._device.type, dtype=torch.bfloat16, enabled=self.amp)

    def _views(self, images_u8, params: ViewParams) -> torch.Tensor:
        x = augment(to_tensor(images_u8, self._device), params, self.aug_cfg, self.dtype)
        return x.contiguous(memory_format=torch.channels_last)

    def train_step(self, images_u8: np.ndarray, labels: np.ndarray, params: ViewParams,
                   lr: float) -> dict[str, float]:
        """One step of cross-entropy on the views ``params`` of uint8 NHWC ``images_u8`` with
        BatchNorm in train mode -> {"loss", "acc" (percent, on these views)}."""
        check_labelled(images_u8, labels, params)
        # Views under inference_mode, then cloned into a normal tensor: the augment module
        # keeps per-thread CPU scratch buffers, and one first allocated under inference_mode
        # (e.g. by Trainer.encode) cannot be written outside it. Costs one copy of the batch.
        with torch.inference_mode():
            x = self._views(images_u8, params)
        x = x.clone()
        y = to_tensor(np.asarray(labels, dtype=np.int64), self._device)
        self.model.train()
        with self._autocast():
            logits = self.model(x)
        logits = logits.to(self.dtype)
        loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.set_lr(lr)
        self.optimizer.step()
        acc = (logits.detach().argmax(dim=1) == y).to(self.dtype).mean() * 100
        loss_v, acc_v = torch.stack([loss.detach(), acc]).tolist()  # one sync
        return {"loss": loss_v, "acc": acc_v}

    def predict(self, images_u8: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Eval-mode logits (N, C) float32 of the identity view (whole image resized)."""
        check_images(images_u8, "images")
        with torch.inference_mode(), self._autocast():
            return eval_identity_views(self.model, images_u8, batch_size, self.num_classes,
                                       lambda chunk, params: self.model(self._views(chunk, params)))

    def state_dict(self) -> dict[str, np.ndarray]:
        """Canonical weights of the fine-tuned model (``encoder.*``, ``fc.weight``, ``fc.bias``)."""
        return get_weights(self.model, float_dtype=np.float64 if self.dtype == torch.float64 else np.float32)


def head_features(trainer, h: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """z = g(h) in eval mode (BN running stats) for a pre-training ``step.Trainer`` -> (N, head_out) float32."""
    head = trainer.model.head
    was = head.training
    head.eval()
    out = []
    try:
        with torch.inference_mode():
            for i in range(0, len(h), batch_size):
                t = to_tensor(np.ascontiguousarray(h[i:i + batch_size]), trainer._device, trainer.dtype)
                out.append(head(t).float().cpu())
    finally:
        head.train(was)
    if not out:
        return np.zeros((0, trainer.cfg.model.head_out), dtype=np.float32)
    return to_numpy(torch.cat(out), np.float32)


__all__ = ["Classifier", "FinetuneTrainer", "head_features"]
