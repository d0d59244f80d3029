"""CLIP's symmetric contrastive (InfoNCE) loss (Radford et al. 2021, sec. 2.3 and fig. 3).

Image i and text i of a batch are a positive pair, every other pairing a negative. The loss is the mean
of the cross-entropy over each row of the image->text logits and each row of the text->image logits.
With data parallelism the negatives come from the global batch: features are gathered from all ranks
(see :mod:`mmzoo.losses.distributed`).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .distributed import all_gather_no_grad, all_gather_with_grad, dist_info


class ContrastiveLogits(NamedTuple):
    """Logits of :class:`ContrastiveLoss` and the index of the positive of each row.

    logits_per_image: (N, M) image rows against text columns.
    logits_per_text: (N, M) text rows against image columns.
    labels: (N,) column of each row's positive. Single process or ``local_loss=False``: N = M = global
        batch; ``local_loss=True``: N = local batch, M = global batch, labels offset by ``rank * N``.
    """

    logits_per_image: torch.Tensor
    logits_per_text: torch.Tensor
    labels: torch.Tensor


class ContrastiveLoss(nn.Module):
    """CLIP loss: ``(CE(logits_per_image, labels) + CE(logits_per_text, labels)) / 2``.

    Inputs follow :class:`mmzoo.models.clip.CLIPOutput`: L2-normalised features and ``logit_scale``
    already exponentiated (the multiplier, not its log). Rank and world size are read at call time, so
    the module may be built before the process group exists.

    Args:
        local_loss: distributed only. True: each rank scores only its own rows against all gathered
            columns (O(B * W*B) logits instead of O((W*B)^2)); the mean over ranks of the per-rank losses
            equals the global loss. False: each rank computes the full global loss.
        gather_with_grad: distributed only. True: gradients flow through the gather to the rank that owns
            each feature, so with DDP's gradient averaging the update is the gradient of the global loss
            (both ``local_loss`` settings). False: other ranks' features are detached and only the local
            slice carries gradient; the loss value is unchanged, but the gradient only has this rank's
            loss's terms (with ``local_loss=False`` the local features get the exact global-loss
            gradient, which DDP then divides by the world size; with ``local_loss=True`` the terms where
            the local features act as other ranks' negatives are dropped).
        cache_labels: keep the label tensor per (device, rows, offset) instead of rebuilding it each step.
    """

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = True, cache_labels: bool = True):
        super().__init__()
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels
        self._labels: dict[tuple[torch.device, int, int], torch.Tensor] = {}

    def extra_repr(self) -> str:
        return (f"local_loss={self.local_loss}, gather_with_grad={self.gather_with_grad}, "
                f"cache_labels={self.cache_labels}")

    def _get_labels(self, device: torch.device, num_rows: int, offset: int) -> torch.Tensor:
        key = (device, num_rows, offset)
        labels = self._labels.get(key)
        if labels is None:
            labels = torch.arange(offset, offset + num_rows, device=device, dtype=torch.long)
            if self.cache_labels:
                self._labels[key] = labels
        return labels

    def logits_and_labels(self, image_features: torch.Tensor, text_features: torch.Tensor,
                          logit_scale: torch.Tensor | float,
                          logit_bias: Optional[torch.Tensor | float] = None) -> ContrastiveLogits:
        """The logits the loss is computed from and their labels (e.g. for retrieval accuracy:
        ``(logits_per_image.argmax(-1) == labels).float().mean()``)."""
        if image_features.ndim != 2 or image_features.shape != text_features.shape:
            raise ValueError(f"ContrastiveLoss expects paired (batch, dim) features of the same shape; got "
                             f"image_features {tuple(image_features.shape)} and text_features "
                             f"{tuple(text_features.shape)}")
        rank, world_size = dist_info()
        local_batch = image_features.shape[0]
        if world_size > 1:
            gather = all_gather_with_grad if self.gather_with_grad else all_gather_no_grad
            all_image, all_text = gather(image_features), gather(text_features)  # (W*B, D) each
        else:
            all_image, all_text = image_features, text_features

        if world_size > 1 and self.local_loss:
            logits_per_image = logit_scale * image_features @ all_text.T  # (B, W*B)
            logits_per_text = logit_scale * text_features @ all_image.T  # (B, W*B)
            labels = self._get_labels(image_features.device, local_batch, rank * local_batch)
        else:
            logits_per_image = logit_scale * all_image @ all_text.T  # (W*B, W*B)
            logits_per_text = logits_per_image.T
            labels = self._get_labels(image_features.device, all_image.shape[0], 0)

        if logit_bias is not None:
            logits_per_image = logits_per_image + logit_bias
            logits_per_text = logits_per_text + logit_bias
        return ContrastiveLogits(logits_per_image, logits_per_text, labels)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor | float,
                logit_bias: Optional[torch.Tensor | float] = None) -> torch.Tensor:
        """Scalar loss; arguments as in :class:`mmzoo.models.clip.CLIPOutput`."""
        logits_per_image, logits_per_text, labels = self.logits_and_labels(
            image_features, text_features, logit_scale, logit_bias)
        return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
