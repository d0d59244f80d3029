"""The wav2vec 2.0 pretraining objective (fairseq ``Wav2vecCriterion`` with the base recipe's weights)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Wav2Vec2Loss(nn.Module):
    """Contrastive loss + diversity loss + feature penalty.

    fairseq sums the contrastive cross-entropy over the M masked steps, adds the extra losses multiplied
    by M (``sample_size``) and divides gradients by M; the per-step value returned here is that total / M:
    ``mean CE + diversity_weight * (GV - prob_perplexity) / GV + feature_pen_weight * mean(features^2)``.

    Args:
        diversity_weight: weight of the codebook diversity loss (0.1).
        feature_pen_weight: weight of the L2 penalty on conv features (10).
    """

    def __init__(self, diversity_weight: float = 0.1, feature_pen_weight: float = 10.0) -> None:
        super().__init__()
        self.diversity_weight = diversity_weight
        self.feature_pen_weight = feature_pen_weight

    def forward(self, out) -> dict[str, torch.Tensor]:
        """``out``: a :class:`~mmzoo.models.wav2vec2.Wav2Vec2PretrainOutput`. Returns a dict of scalars."""
        logits = out.logits  # (N, 1 + K), positive in column 0
        target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        sample_size = logits.shape[0]
        contrastive = F.cross_entropy(logits, target, reduction="sum")
        diversity = (out.num_vars - out.prob_perplexity) / out.num_vars
        total = contrastive + sample_size * (self.diversity_weight * diversity
                                             + self.feature_pen_weight * out.features_pen)
        with torch.no_grad():
            correct = (logits.argmax(-1) == 0).float().mean()
        return {"loss": total / sample_size, "contrastive": contrastive / sample_size, "diversity": diversity,
                "features_pen": out.features_pen, "accuracy": correct}
