"""Point-cloud operations, batched over clouds and points: farthest point sampling, kNN grouping into
local patches, the mini-PointNet patch embedding, and Chamfer distances.

Shapes: ``B`` clouds of ``N`` points, ``G`` groups (patch centres) of ``K`` points each.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn


def index_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather points by index: points (B, N, C), idx (B, *S) -> (B, *S, C)."""
    B = points.shape[0]
    flat = idx.reshape(B, -1)  # (B, S)
    out = torch.gather(points, 1, flat.unsqueeze(-1).expand(-1, -1, points.shape[-1]))
    return out.reshape(*idx.shape, points.shape[-1])


def farthest_point_sample(xyz: torch.Tensor, num_samples: int, start: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Farthest point sampling: indices (B, num_samples) of points spread over each cloud.

    The loop runs over the samples only; each step updates every cloud's distances to the chosen set
    at once, so the cost is O(num_samples * B * N). The first point is index 0 (as the CUDA kernel of
    PointNet++ that Point-BERT uses) unless ``start`` (B,) gives other indices.

    Args:
        xyz: (B, N, 3) coordinates.
        num_samples: points to keep (<= N).
        start: optional first index per cloud.
    """
    B, N, _ = xyz.shape
    if not 0 < num_samples <= N:
        raise ValueError(f"farthest_point_sample: num_samples={num_samples} must be in [1, N={N}]")
    idx = torch.empty(B, num_samples, dtype=torch.long, device=xyz.device)
    dist = torch.full((B, N), float("inf"), dtype=xyz.dtype, device=xyz.device)
    farthest = torch.zeros(B, dtype=torch.long, device=xyz.device) if start is None else start.long()
    batch = torch.arange(B, device=xyz.device)
    for i in range(num_samples):
        idx[:, i] = farthest
        centre = xyz[batch, farthest].unsqueeze(1)  # (B, 1, 3)
        dist = torch.minimum(dist, (xyz - centre).square().sum(-1))  # (B, N) distance to the chosen set
        farthest = dist.argmax(-1)
    return idx


def knn(query: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, M, k) of the k nearest ``points`` (B, N, 3) of each ``query`` (B, M, 3), nearest first."""
    if k > points.shape[1]:
        raise ValueError(f"knn: k={k} exceeds the {points.shape[1]} points of each cloud")
    d = torch.cdist(query, points)  # (B, M, N)
    return d.topk(k, dim=-1, largest=False, sorted=True).indices


def group_points(xyz: torch.Tensor, num_groups: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split clouds into local patches (Point-BERT's ``Group``): FPS picks ``num_groups`` centres, each
    patch holds its centre's ``group_size`` nearest points, in coordinates relative to the centre.

    Returns:
        neighborhood (B, G, K, 3) relative coordinates, centers (B, G, 3).
    """
    if xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"expected points of shape (B, N, 3), got {tuple(xyz.shape)}")
    centers = index_points(xyz, farthest_point_sample(xyz, num_groups))  # (B, G, 3)
    neighborhood = index_points(xyz, knn(centers, xyz, group_size))  # (B, G, K, 3)
    return neighborhood - centers.unsqueeze(2), centers


def chamfer_distance(x: torch.Tensor, y: torch.Tensor, norm: str = "l2") -> torch.Tensor:
    """Chamfer distance between point sets x (B, N, 3) and y (B, M, 3), averaged over the batch.

    ``"l2"``: mean squared nearest-neighbour distance x->y plus y->x (PCN / Point-BERT's ChamferL2);
    ``"l1"``: the mean of the (unsquared) nearest-neighbour distances of both directions, halved
    (Point-BERT's ChamferDistanceL1, the dVAE reconstruction loss).
    """
    d2 = torch.cdist(x, y).square()  # (B, N, M)
    d_xy, d_yx = d2.min(dim=2).values, d2.min(dim=1).values  # (B, N), (B, M)
    if norm == "l2":
        return d_xy.mean() + d_yx.mean()
    if norm == "l1":
        # sqrt of a clamped square: cdist's own gradient is undefined at a zero distance
        return 0.5 * (d_xy.clamp_min(1e-12).sqrt().mean() + d_yx.clamp_min(1e-12).sqrt().mean())
    raise ValueError(f"chamfer_distance: norm must be 'l1' or 'l2', got {norm!r}")


class MiniPointNet(nn.Module):
    """Patch embedding of Point-BERT (its ``Encoder``): a shared per-point MLP, max-pool over the
    patch, concatenation of that global feature to every point, a second MLP and a final max-pool.

    Args:
        out_dim: embedding width.
        hidden: widths of the first MLP (its last entry is the pooled global feature width).
        hidden2: inner width of the second MLP.
    """

    def __init__(self, out_dim: int, hidden: tuple[int, int] = (128, 256), hidden2: int = 512) -> None:
        super().__init__()
        h1, h2 = hidden
        self.first_conv = nn.Sequential(nn.Conv1d(3, h1, 1), nn.BatchNorm1d(h1), nn.ReLU(inplace=True),
                                        nn.Conv1d(h1, h2, 1))
        self.second_conv = nn.Sequential(nn.Conv1d(2 * h2, hidden2, 1), nn.BatchNorm1d(hidden2),
                                         nn.ReLU(inplace=True), nn.Conv1d(hidden2, out_dim, 1))
        self.out_dim = out_dim

    def forward(self, neighborhood: torch.Tensor) -> torch.Tensor:
        """neighborhood (B, G, K, 3) -> patch tokens (B, G, out_dim)."""
        B, G, K, _ = neighborhood.shape
        x = neighborhood.reshape(B * G, K, 3).transpose(1, 2)  # (BG, 3, K)
        f = self.first_conv(x)  # (BG, h2, K)
        g = f.amax(dim=2, keepdim=True)  # (BG, h2, 1)
        f = self.second_conv(torch.cat([g.expand(-1, -1, K), f], dim=1))  # (BG, out_dim, K)
        return f.amax(dim=2).reshape(B, G, self.out_dim)
