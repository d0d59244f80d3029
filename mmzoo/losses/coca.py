"""CoCa's objective: contrastive + captioning (Yu et al. 2022, eq. 4)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .contrastive import ContrastiveLoss


class CoCaLoss(nn.Module):
    """``caption_weight * CE(next token) + contrastive_weight * CLIP loss`` (paper: 2.0 and 1.0).

    The captioning term is teacher-forced cross-entropy: position t predicts token t+1; targets equal to
    ``pad_token_id`` are ignored (CLIP's tokenizer pads with id 0).

    Args:
        caption_weight: weight of the captioning cross-entropy.
        contrastive_weight: weight of the contrastive loss.
        pad_token_id: id ignored in the captioning targets.
        **contrastive_kwargs: options of :class:`ContrastiveLoss` (``local_loss``, ``gather_with_grad``).
    """

    def __init__(self, caption_weight: float = 2.0, contrastive_weight: float = 1.0, pad_token_id: int = 0,
                 **contrastive_kwargs: Any) -> None:
        super().__init__()
        self.caption_weight = caption_weight
        self.contrastive_weight = contrastive_weight
        self.pad_token_id = pad_token_id
        self.contrastive = ContrastiveLoss(**contrastive_kwargs)

    def forward(self, out, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """``out``: a :class:`~mmzoo.models.coca.CoCaOutput`; ``tokens`` (B, L) the input ids.
        Returns ``{"loss", "caption_loss", "contrastive_loss"}``."""
        contrastive = self.contrastive(out.image_features, out.text_features, out.logit_scale)
        logits = out.logits[:, :-1]  # (B, L-1, V): predictions of tokens 1..L-1
        caption = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1),
                                  ignore_index=self.pad_token_id)
        loss = self.caption_weight * caption + self.contrastive_weight * contrastive
        return {"loss": loss, "caption_loss": caption.detach(), "contrastive_loss": contrastive.detach()}
