"""What a distilled student can match besides the teacher's logits and raw features.

* Feature *distributions*: :func:`gaussian_mmd2` (maximum mean discrepancy with a Gaussian kernel) and
  :func:`nst_loss`, neuron selectivity transfer (Huang & Wang 2017), which treats each channel's
  activation pattern over the tokens as one sample, so student and teacher widths may differ.
* *Relations* between the examples of a batch (Park et al. 2019, "Relational Knowledge Distillation"):
  :func:`rkd_distance_loss` (pairwise distances, normalised by their mean) and :func:`rkd_angle_loss`
  (cosines of the angles formed by every triplet).
* *Attention maps*: :func:`attention_map_loss`, the KL divergence between teacher and student attention
  probabilities (TinyBERT, Jiao et al. 2020 use MSE; MiniLM, Wang et al. 2020, KL).
* *Sparsity patterns*: :func:`activation_boundary_loss` (Heo et al. 2019), which teaches the student
  which neurons the teacher activates, on pre-activation features.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F


def gaussian_mmd2(x: torch.Tensor, y: torch.Tensor, sigma: Union[float, Sequence[float]] = 1.0) -> torch.Tensor:
    """Biased (V-statistic) squared MMD between samples ``x`` (..., N, D) and ``y`` (..., M, D).

    ``MMD^2 = mean k(x_i, x_i') + mean k(y_j, y_j') - 2 mean k(x_i, y_j)`` with
    ``k(a, b) = sum_s exp(-||a - b||^2 / (2 s^2))`` over the bandwidths ``sigma``; leading dimensions are
    batch dimensions (one MMD each).

    Args:
        x: first sample set.
        y: second sample set (same D).
        sigma: one Gaussian bandwidth or several (a sum of kernels).
    """
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"MMD compares samples of one dimension: got {x.shape[-1]} and {y.shape[-1]}")
    sigmas = [sigma] if isinstance(sigma, (int, float)) else list(sigma)

    def k(a, b):
        d2 = (a.unsqueeze(-2) - b.unsqueeze(-3)).pow(2).sum(-1)  # (..., N, M)
        return sum(torch.exp(-d2 / (2.0 * s * s)) for s in sigmas)

    return k(x, x).mean((-2, -1)) + k(y, y).mean((-2, -1)) - 2.0 * k(x, y).mean((-2, -1))


def nst_loss(student: torch.Tensor, teacher: torch.Tensor, sigma: Union[float, Sequence[float]] = 1.0) -> torch.Tensor:
    """Neuron selectivity transfer: per example, the MMD between the student's and the teacher's channels,
    each channel being its L2-normalised activation pattern over the positions.

    Args:
        student: (B, L, Cs) features (tokens x channels).
        teacher: (B, L, Ct) features with the same positions L (Cs and Ct may differ).
        sigma: Gaussian bandwidth(s) of the MMD.

    Returns:
        The mean over the batch of the squared MMD.
    """
    if student.dim() != 3 or teacher.dim() != 3 or student.shape[:2] != teacher.shape[:2]:
        raise ValueError(f"nst_loss needs (B, L, C) features with equal B and L, got {tuple(student.shape)} and "
                         f"{tuple(teacher.shape)}")
    fs = F.normalize(student.transpose(1, 2), dim=-1)  # (B, Cs, L): one sample per channel
    ft = F.normalize(teacher.transpose(1, 2), dim=-1)
    return gaussian_mmd2(fs, ft, sigma).mean()


def _flat(e: torch.Tensor) -> torch.Tensor:
    return e.reshape(e.shape[0], -1)


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD-D: Huber loss between the pairwise distances of the student's and the teacher's embeddings, each
    divided by its mean over the distinct pairs (i != j), averaged over those pairs.

    Args:
        student: (B, Ds) embeddings (further dimensions are flattened).
        teacher: (B, Dt) embeddings of the same examples.
    """
    s, t = _flat(student), _flat(teacher.detach())
    n = s.shape[0]
    if n < 2 or t.shape[0] != n:
        raise ValueError(f"RKD needs the same batch of at least 2 examples, got {s.shape[0]} and {t.shape[0]}")
    off = ~torch.eye(n, dtype=torch.bool, device=s.device)
    # the distance of equal points is 0, whose sqrt has an infinite derivative: compute only the pairs i != j
    ds, dt = (torch.cdist(e, e)[off] for e in (s, t))
    ds, dt = ds / ds.mean().clamp(min=1e-12), dt / dt.mean().clamp(min=1e-12)
    return F.smooth_l1_loss(ds, dt, beta=1.0)


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD-A: Huber loss between ``cos angle(e_i, e_j, e_k) = <(e_i - e_j)/|.|, (e_k - e_j)/|.|>`` of the
    student and of the teacher, averaged over the triplets of distinct examples.

    Args:
        student: (B, Ds) embeddings (further dimensions are flattened).
        teacher: (B, Dt) embeddings of the same examples.
    """
    s, t = _flat(student), _flat(teacher.detach())
    n = s.shape[0]
    if n < 3 or t.shape[0] != n:
        raise ValueError(f"RKD angles need the same batch of at least 3 examples, got {s.shape[0]} and {t.shape[0]}")

    def cosines(e):
        diff = F.normalize(e[:, None, :] - e[None, :, :], dim=-1)  # (j, i, D): unit vector from e_j to e_i
        return diff @ diff.transpose(1, 2)  # (j, i, k)

    idx = torch.arange(n, device=s.device)
    j, i, k = torch.meshgrid(idx, idx, idx, indexing="ij")
    distinct = (i != j) & (k != j) & (i != k)
    return F.smooth_l1_loss(cosines(s)[distinct], cosines(t)[distinct], beta=1.0)


def attention_map_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``KL(teacher || student)`` of attention probabilities, summed over keys and averaged over the batch,
    heads and queries; with different head counts both are first averaged over their heads.

    Args:
        student: (B, Hs, L, S) attention probabilities (rows sum to 1).
        teacher: (B, Ht, L, S) attention probabilities of the same inputs.
    """
    if student.dim() != 4 or teacher.dim() != 4 or student.shape[0] != teacher.shape[0] \
            or student.shape[2:] != teacher.shape[2:]:
        raise ValueError(f"attention maps must be (B, H, L, S) with equal B, L, S: got {tuple(student.shape)} and "
                         f"{tuple(teacher.shape)}")
    if student.shape[1] != teacher.shape[1]:
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    t = teacher.detach()
    kl = torch.xlogy(t, t) - t * student.clamp(min=torch.finfo(student.dtype).tiny).log()
    return kl.sum(-1).mean()


def activation_boundary_loss(student: torch.Tensor, teacher: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Activation-boundary transfer: where the teacher's pre-activation is positive the student's should
    exceed ``margin``, elsewhere stay below ``-margin``:
    ``mean(1[t > 0] * relu(margin - s)^2 + 1[t <= 0] * relu(margin + s)^2)``.

    Args:
        student: pre-activation features (e.g. an MLP's ``fc1`` output), same shape as ``teacher``.
        teacher: the teacher's pre-activation features.
        margin: the margin ``mu`` around the boundary.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"activation_boundary_loss needs equal shapes, got {tuple(student.shape)} and "
                         f"{tuple(teacher.shape)}")
    on = (teacher.detach() > 0).to(student.dtype)
    return (on * F.relu(margin - student).pow(2) + (1 - on) * F.relu(margin + student).pow(2)).mean()
