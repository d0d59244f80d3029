"""Supervised classification (images today; any model mapping inputs to logits)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from .base import BaseTask


class ClassificationTask(BaseTask):
    """Cross-entropy training with top-1 / top-5 accuracy.

    Args:
        model: maps a batch of inputs to logits (B, num_classes).
        num_classes: number of classes.
        label_smoothing: cross-entropy label smoothing.
        class_names: names used in logged sample predictions.
        **kwargs: optimisation options of :class:`BaseTask`.
    """

    def __init__(self, model: nn.Module, num_classes: int, label_smoothing: float = 0.0,
                 class_names: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        top5 = min(5, num_classes)
        metrics = MetricCollection({
            "acc1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
            "acc5": MulticlassAccuracy(num_classes, top_k=top5, average="micro"),
        })
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.val_samples: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _check_batch(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"model returned logits of shape {tuple(logits.shape)}, expected "
                             f"(B, {self.num_classes}); set model.num_classes to the data's class count")

    def training_step(self, batch, batch_idx: int):
        x, y = batch
        logits = self(x)
        self._check_batch(logits, y)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        self.train_metrics(logits.detach(), y)
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return self.check_loss(loss)

    def _eval_step(self, batch, metrics: MetricCollection, prefix: str) -> torch.Tensor:
        x, y = batch
        if torch.is_tensor(x) and x.dim() == 6:
            # multi-view video evaluation (B, V, C, T, H, W): class probabilities averaged over the V
            # clips x crops, as in TimeSformer / SlowFast; the log of the mean acts as logits
            B, V = x.shape[:2]
            probs = self(x.flatten(0, 1)).softmax(-1).view(B, V, -1).mean(1)
            logits = probs.clamp_min(1e-12).log()
            x = x[:, 0]  # the first view stands for the sample in logged predictions
        else:
            logits = self(x)
        self._check_batch(logits, y)
        loss = F.cross_entropy(logits, y)
        metrics(logits, y)
        self.log(f"{prefix}/loss", loss, on_epoch=True, sync_dist=True)
        self.log_dict(metrics, on_epoch=True, prog_bar=prefix == "val")
        return logits

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        logits = self._eval_step(batch, self.val_metrics, "val")
        if batch_idx == 0:
            # kept for sample-prediction logging (mmzoo.tasks.callbacks.LogSamplePredictions)
            x = batch[0][:, 0] if torch.is_tensor(batch[0]) and batch[0].dim() == 6 else batch[0]  # first view of multi-view clips
            self.val_samples = (x[:16].detach().cpu(), batch[1][:16].cpu(), logits[:16].argmax(-1).cpu())
        return logits.detach()  # for the confusion matrix (mmzoo.monitoring.ConfusionMatrix)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")
