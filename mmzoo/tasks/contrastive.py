"""Contrastive image-text training (CLIP), with retrieval and zero-shot evaluation."""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..losses import ContrastiveLoss
from .base import BaseTask
from .retrieval import retrieval_recall
from ..data.templates import check_templates, load_templates
from .zeroshot import DEFAULT_TEMPLATES, build_zeroshot_classifier, zeroshot_evaluate


def _gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate (N_r, D) tensors of every rank (uneven N_r allowed), in rank order."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    world = dist.get_world_size()
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    max_n = int(max(s.item() for s in sizes))
    padded = torch.zeros(max_n, *x.shape[1:], dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    out = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(out, padded)
    return torch.cat([o[: int(s.item())] for o, s in zip(out, sizes)])


class ContrastiveTask(BaseTask):
    """CLIP training: symmetric InfoNCE over the (optionally globally gathered) batch.

    Validation/test report the loss, image<->text retrieval R@K over the whole split, and zero-shot
    classification accuracy when the data module offers ``zeroshot_dataloader(split)`` and
    ``class_names`` (seen / held-out compositions separately when batches flag ``heldout``).

    Args:
        model: a CLIP-like model: ``forward(images, tokens)`` -> object with ``image_features``,
            ``text_features``, ``logit_scale``; ``encode_image``, ``encode_text``.
        local_loss: distributed loss over local rows only (see :class:`mmzoo.losses.ContrastiveLoss`).
        gather_with_grad: gather features from all ranks with gradient.
        zeroshot_templates: prompt templates (list, or a path to a file with one per line); default: the
            data module's ``ZEROSHOT_TEMPLATES`` if it has them, else mmzoo's defaults.
        retrieval_ks: the K of the logged R@K.
        **kwargs: optimisation options of :class:`BaseTask`.
    """

    def __init__(self, model: nn.Module, local_loss: bool = False, gather_with_grad: bool = True,
                 zeroshot_templates: Optional[Sequence[str] | str] = None,
                 retrieval_ks: Sequence[int] = (1, 5, 10), **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.loss_fn = ContrastiveLoss(local_loss=local_loss, gather_with_grad=gather_with_grad)
        # checked now, before any training: a file's errors name the file and line, a list's the template
        if isinstance(zeroshot_templates, (str, os.PathLike)):
            zeroshot_templates = load_templates(zeroshot_templates)
        elif zeroshot_templates is not None and len(zeroshot_templates) > 0:
            zeroshot_templates = check_templates(zeroshot_templates, "task.zeroshot_templates")
        self.zeroshot_templates = zeroshot_templates
        self.retrieval_ks = tuple(retrieval_ks)
        self._eval_feats: dict[str, list[torch.Tensor]] = {"image": [], "text": []}
        self._zeroshot: dict[str, float] = {}
        # (images, targets, predictions) of zero-shot classification, for LogSamplePredictions
        self.val_samples: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None
        self.class_names: list[str] = []

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        return self.model(images, tokens)

    def training_step(self, batch: dict[str, Any], batch_idx: int):
        out = self(batch["image"], batch["text"])
        loss = self.loss_fn(out.image_features, out.text_features, out.logit_scale)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/logit_scale", out.logit_scale.detach())
        return self.check_loss(loss)

    # -- evaluation ---------------------------------------------------------------------------------
    def _eval_step(self, batch: dict[str, Any], batch_idx: int, prefix: str):
        """Forward one evaluation batch, log the loss, keep the features; returns the model output."""
        if batch_idx == 0:
            # weights are fixed during evaluation: run zero-shot once, at the start, so that its sample
            # predictions are ready when callbacks run at the epoch's end
            self._zeroshot = self._run_zeroshot(prefix)
        out = self(batch["image"], batch["text"])
        loss = self.loss_fn(out.image_features, out.text_features, out.logit_scale)
        self.log(f"{prefix}/loss", loss, on_epoch=True, sync_dist=True, batch_size=batch["image"].shape[0])
        self._eval_feats["image"].append(out.image_features.float())
        self._eval_feats["text"].append(out.text_features.float())
        return out

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    def _templates(self) -> Sequence[str]:
        if self.zeroshot_templates:
            return list(self.zeroshot_templates)
        dm = self.trainer.datamodule
        return getattr(dm, "zeroshot_templates", None) or DEFAULT_TEMPLATES

    def _epoch_end(self, prefix: str) -> None:
        self.settle_epoch_metrics()  # the gathers below are collectives (see BaseTask.settle_epoch_metrics)
        images = _gather_rows(torch.cat(self._eval_feats["image"]))
        texts = _gather_rows(torch.cat(self._eval_feats["text"]))
        self._eval_feats = {"image": [], "text": []}
        metrics = {f"{prefix}/{k}": v for k, v in retrieval_recall(images, texts, ks=self.retrieval_ks).items()}
        metrics.update(self._zeroshot)
        self._zeroshot = {}
        metrics[f"{prefix}/logit_scale"] = self.model.logit_scale.exp().item()
        # every rank holds the same numbers (gathered features, the same zero-shot set): log them on every
        # rank, so that a checkpoint monitoring one of them decides alike everywhere
        self.log_dict(metrics)

    @torch.no_grad()
    def _run_zeroshot(self, prefix: str) -> dict[str, float]:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "zeroshot_dataloader") or not getattr(dm, "class_names", None):
            return {}
        # every rank evaluates the same (small) zero-shot set: identical numbers, no gathering needed
        self.class_names = list(dm.class_names)
        classifier = build_zeroshot_classifier(self.model, dm.tokenizer, self.class_names, self._templates(),
                                               getattr(dm, "context_length", None))
        loader = dm.zeroshot_dataloader(prefix)
        zs = zeroshot_evaluate(self.model, classifier, loader, num_classes=len(self.class_names))
        if prefix == "val":
            first = next(iter(loader))
            images = first["image"][:16].to(self.device)
            preds = (F.normalize(self.model.encode_image(images).float(), dim=-1) @ classifier).argmax(-1)
            self.val_samples = (images.cpu(), first["label"][:16].cpu(), preds.cpu())
        return {f"{prefix}/zeroshot_{k}": zs[k] for k in ("top1", "top5", "top1_seen", "top1_heldout") if k in zs}

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")
