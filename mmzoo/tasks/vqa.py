"""Visual question answering as classification over a fixed answer vocabulary, with accuracy per
question type (e.g. shapes_vqa's exist / colour / count / position)."""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics import Metric

from .base import BaseTask


class PerTypeAccuracy(Metric):
    """Accuracy overall and within each question type; sums are reduced across processes.

    Args:
        num_types: number of question types (``qtype`` values 0..num_types-1).
    """

    full_state_update = False

    def __init__(self, num_types: int) -> None:
        super().__init__()
        self.num_types = num_types
        self.add_state("correct", default=torch.zeros(num_types, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(num_types, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor, qtype: torch.Tensor) -> None:
        """preds, target, qtype: (B,) integer tensors."""
        if qtype.min() < 0 or qtype.max() >= self.num_types:
            raise ValueError(f"question types must be in 0..{self.num_types - 1}, got values "
                             f"{sorted(set(qtype.tolist()))}; set task.question_types to the data's types")
        self.correct += torch.bincount(qtype[preds == target], minlength=self.num_types)
        self.total += torch.bincount(qtype, minlength=self.num_types)

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(overall accuracy, per-type accuracies (num_types,)); a type without samples reads NaN."""
        overall = self.correct.sum() / self.total.sum().clamp_min(1)
        per_type = self.correct / self.total.clamp_min(1)
        per_type = torch.where(self.total > 0, per_type, torch.full_like(per_type, float("nan")))
        return overall, per_type


class VQATask(BaseTask):
    """Cross-entropy over answers; accuracy overall (``acc``) and per question type (``acc_<type>``).

    Batches are dicts with ``image``, ``text`` (B, L), ``text_padding_mask`` (B, L), ``answer`` (B,),
    ``qtype`` (B,); the model maps ``(image, text, text_padding_mask)`` to logits (B, num_classes).

    Args:
        model: e.g. a :class:`mmzoo.models.FusionModel`.
        num_classes: answer vocabulary size.
        class_names: the answers (sample-prediction logging).
        question_types: names of the ``qtype`` values, used in metric names.
        label_smoothing: cross-entropy label smoothing.
        **kwargs: optimisation options of :class:`BaseTask`.
    """

    def __init__(self, model: nn.Module, num_classes: int, class_names: Optional[list[str]] = None,
                 question_types: Optional[list[str]] = None, label_smoothing: float = 0.0, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.question_types = list(question_types) if question_types else ["all"]
        self.label_smoothing = label_smoothing
        n = len(self.question_types)
        self.train_acc, self.val_acc, self.test_acc = PerTypeAccuracy(n), PerTypeAccuracy(n), PerTypeAccuracy(n)
        self.val_samples: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.model(batch["image"], batch["text"], batch.get("text_padding_mask"))

    def _step(self, batch: dict[str, Any], metric: PerTypeAccuracy, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch)
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"model returned logits of shape {tuple(logits.shape)}, expected "
                             f"(B, {self.num_classes}); set model.num_classes to the number of answers")
        target = batch["answer"]
        loss = F.cross_entropy(logits, target, label_smoothing=self.label_smoothing if prefix == "train" else 0.0)
        qtype = batch.get("qtype", torch.zeros_like(target))
        metric.update(logits.detach().argmax(-1), target, qtype)
        self.log(f"{prefix}/loss", loss, on_step=prefix == "train", on_epoch=True, prog_bar=prefix == "train",
                 sync_dist=prefix != "train", batch_size=target.shape[0])
        return loss, logits

    def _log_accuracy(self, metric: PerTypeAccuracy, prefix: str) -> None:
        if int(metric.total.sum()) == 0:  # the same on every rank: every rank saw batches or none did
            return
        self.settle_epoch_metrics()  # compute() below gathers across ranks (see BaseTask.settle_epoch_metrics)
        overall, per_type = metric.compute()
        self.log(f"{prefix}/acc", overall, prog_bar=prefix == "val")
        if len(self.question_types) > 1:
            for name, acc in zip(self.question_types, per_type):
                if not torch.isnan(acc):
                    self.log(f"{prefix}/acc_{name}", acc)
        metric.reset()

    def training_step(self, batch, batch_idx: int):
        loss, _ = self._step(batch, self.train_acc, "train")
        return self.check_loss(loss)

    def on_train_epoch_end(self) -> None:
        self._log_accuracy(self.train_acc, "train")

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        _, logits = self._step(batch, self.val_acc, "val")
        if batch_idx == 0:
            # kept for sample-prediction logging (mmzoo.tasks.callbacks.LogSamplePredictions)
            self.val_samples = (batch["image"][:16].detach().cpu(), batch["answer"][:16].cpu(),
                                logits[:16].argmax(-1).cpu())
            self.val_questions = [str(q) for q in batch.get("question", [])][:16]
        return logits.detach()  # for the confusion matrix (mmzoo.monitoring.ConfusionMatrix)

    def on_validation_epoch_end(self) -> None:
        self._log_accuracy(self.val_acc, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, self.test_acc, "test")

    def on_test_epoch_end(self) -> None:
        self._log_accuracy(self.test_acc, "test")
