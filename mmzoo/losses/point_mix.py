"""Point-BERT's point patch mixing (Yu et al. 2022, section 3.3) and the MoCo InfoNCE term it builds on.

A cloud's patches are normalised to their centres, so two clouds mix without any alignment: the virtual
cloud keeps a fraction ``r`` of cloud A's patches (each with its centre and its dVAE token) and takes
the other ``1 - r`` from cloud B. Its feature (query ``q``, online encoder) is contrasted against both
clouds' momentum-encoder features (keys ``k_A``, ``k_B``), weighted by the mixing ratio, with the MoCo
queue as negatives:

    L = r * InfoNCE(q, k_A) + (1 - r) * InfoNCE(q, k_B),
    InfoNCE(q, k) = -log exp(q.k / t) / (exp(q.k / t) + sum_n exp(q.n / t)),  n over the queue,

the paper's equation, each term in MoCo's form (one positive key, the queue's K negatives), so ``r = 1``
is exactly the MoCo term of the virtual cloud. The reference code also counts the batch's other keys as
negatives (``l_pos`` is a B x B matrix there); mmzoo keeps the paper's form.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def moco_infonce(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float,
                 reduction: str = "mean") -> torch.Tensor:
    """MoCo's InfoNCE (He et al. 2020, eq. 1): positive ``query . key``, negatives ``query . queue``.

    Args:
        query: (B, D) L2-normalised online features.
        key: (B, D) L2-normalised momentum-encoder features of the same clouds (no gradient expected).
        queue: (K, D) L2-normalised negatives.
        temperature: softmax temperature ``t``.
        reduction: "mean" (a scalar) or "none" (one loss per query, (B,)).
    """
    if query.shape != key.shape or query.dim() != 2 or queue.dim() != 2 or queue.shape[1] != query.shape[1]:
        raise ValueError(f"moco_infonce expects query and key (B, D) and queue (K, D); got {tuple(query.shape)}, "
                         f"{tuple(key.shape)} and {tuple(queue.shape)}")
    logits = torch.cat([(query * key).sum(-1, keepdim=True), query @ queue.T], dim=1) / temperature  # (B, 1 + K)
    loss = torch.logsumexp(logits, dim=1) - logits[:, 0]
    return loss.mean() if reduction == "mean" else loss


class PatchMix(NamedTuple):
    """A batch of virtual clouds from :func:`mix_point_patches`.

    neighborhood: (B, G, K, 3) patches, each cloud's own where ``from_self``, its partner's elsewhere.
    centers: (B, G, 3) their centres.
    tokens: (B, G) their dVAE tokens (None when none were given).
    from_self: (B, G) bool, True where the patch is the cloud's own.
    ratio: (B,) the fraction of own patches, ``from_self.mean(1)`` (the weight of the own key).
    partner: (B,) index of the cloud the other patches come from.
    """

    neighborhood: torch.Tensor
    centers: torch.Tensor
    tokens: Optional[torch.Tensor]
    from_self: torch.Tensor
    ratio: torch.Tensor
    partner: torch.Tensor


def mix_point_patches(neighborhood: torch.Tensor, centers: torch.Tensor, ratio: torch.Tensor,
                      tokens: Optional[torch.Tensor] = None, partner: Optional[torch.Tensor] = None,
                      generator: Optional[torch.Generator] = None) -> PatchMix:
    """Point patch mixing: cloud ``i`` keeps ``round(ratio[i] * G)`` of its patches, drawn at random, and
    takes the patches at the other positions from cloud ``partner[i]``; a patch moves with its centre
    and its token.

    Args:
        neighborhood: (B, G, K, 3) centre-normalised patches.
        centers: (B, G, 3) patch centres.
        ratio: (B,) requested fraction of own patches, in [0, 1].
        tokens: (B, G) dVAE tokens of the patches (the virtual cloud's MPM targets), optional.
        partner: (B,) partner of each cloud; default the batch reversed (the reference code's ``flip(0)``).
        generator: random source for the choice of patches.
    Returns:
        a :class:`PatchMix`; its ``ratio`` is the realised fraction ``round(ratio * G) / G``.
    """
    B, G = centers.shape[:2]
    if neighborhood.shape[:2] != (B, G) or ratio.shape != (B,):
        raise ValueError(f"mix_point_patches: neighborhood (B, G, K, 3), centers (B, G, 3) and ratio (B,) must "
                         f"agree; got {tuple(neighborhood.shape)}, {tuple(centers.shape)}, {tuple(ratio.shape)}")
    if ((ratio < 0) | (ratio > 1)).any():
        raise ValueError(f"mix_point_patches: ratios must lie in [0, 1], got {ratio.tolist()}")
    device = centers.device
    if partner is None:
        partner = torch.arange(B - 1, -1, -1, device=device)
    keep = (ratio.float() * G).round().long().to(device)  # (B,) own patches (round half to even)
    noise = torch.rand(B, G, generator=generator, device=device if generator is None else generator.device)
    rank = noise.to(device).argsort(1).argsort(1)  # a random permutation of 0..G-1 per cloud
    from_self = rank < keep.unsqueeze(1)  # (B, G), exactly keep[i] True per row
    nb = torch.where(from_self[..., None, None], neighborhood, neighborhood[partner])
    ce = torch.where(from_self[..., None], centers, centers[partner])
    tk = None if tokens is None else torch.where(from_self, tokens, tokens[partner])
    return PatchMix(nb, ce, tk, from_self, keep.to(centers.dtype) / G, partner)


class PointPatchMixLoss(nn.Module):
    """The mixing contrast of Point-BERT (section 3.3): ``r * InfoNCE(q, k_A) + (1 - r) * InfoNCE(q, k_B)``,
    averaged over the virtual clouds (see the module docstring).

    Args:
        temperature: InfoNCE temperature (Point-BERT / MoCo: 0.07).
    """

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"the InfoNCE temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, query: torch.Tensor, key_a: torch.Tensor, key_b: torch.Tensor, ratio: torch.Tensor,
                queue: torch.Tensor) -> torch.Tensor:
        """Scalar loss.

        Args:
            query: (B, D) L2-normalised online features of the virtual clouds.
            key_a: (B, D) momentum-encoder features of the clouds whose share is ``ratio``.
            key_b: (B, D) those of the partners (share ``1 - ratio``).
            ratio: (B,) mixing ratios.
            queue: (K, D) negatives.
        """
        if ratio.shape != query.shape[:1]:
            raise ValueError(f"ratio must have shape ({query.shape[0]},), got {tuple(ratio.shape)}")
        la = moco_infonce(query, key_a, queue, self.temperature, reduction="none")
        lb = moco_infonce(query, key_b, queue, self.temperature, reduction="none")
        r = ratio.to(la.dtype)
        return (r * la + (1 - r) * lb).mean()
