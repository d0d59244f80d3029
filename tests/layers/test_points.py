"""Point operations against brute-force references written with Python loops."""
from __future__ import annotations

import pytest
import torch

from mmzoo.layers import MiniPointNet, chamfer_distance, farthest_point_sample, group_points, index_points, knn


def _fps_reference(xyz: torch.Tensor, m: int) -> list[int]:
    """One cloud, the textbook definition: start at index 0, then repeatedly the point farthest from the set."""
    chosen = [0]
    for _ in range(m - 1):
        best, best_d = -1, -1.0
        for j in range(xyz.shape[0]):
            d = min(float(((xyz[j] - xyz[c]) ** 2).sum()) for c in chosen)
            if d > best_d:
                best, best_d = j, d
        chosen.append(best)
    return chosen


def test_fps_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    xyz = torch.rand(3, 60, 3, generator=g, dtype=torch.float64)
    idx = farthest_point_sample(xyz, 12)
    assert idx.shape == (3, 12)
    for b in range(3):
        assert idx[b].tolist() == _fps_reference(xyz[b], 12)


def test_fps_spreads_points_and_checks_count():
    xyz = torch.cat([torch.zeros(50, 3), torch.eye(3)])[None]  # 50 duplicates + 3 far points
    idx = farthest_point_sample(xyz, 4)[0].tolist()
    assert set(idx[1:]) == {50, 51, 52}  # every far point before any duplicate
    with pytest.raises(ValueError, match="num_samples=54"):
        farthest_point_sample(xyz, 54)


def test_knn_matches_sorting_all_distances():
    g = torch.Generator().manual_seed(1)
    pts, q = torch.rand(2, 40, 3, generator=g, dtype=torch.float64), torch.rand(2, 5, 3, generator=g, dtype=torch.float64)
    idx = knn(q, pts, 7)
    for b in range(2):
        for i in range(5):
            d = [float(((pts[b, j] - q[b, i]) ** 2).sum()) for j in range(40)]
            assert idx[b, i].tolist() == sorted(range(40), key=lambda j: d[j])[:7]


def test_group_points_relative_to_centres():
    g = torch.Generator().manual_seed(2)
    xyz = torch.rand(2, 100, 3, generator=g, dtype=torch.float64)
    nb, centers = group_points(xyz, 8, 10)
    assert nb.shape == (2, 8, 10, 3) and centers.shape == (2, 8, 3)
    assert torch.equal(centers, index_points(xyz, farthest_point_sample(xyz, 8)))
    # the nearest neighbour of a centre is the centre itself: relative coordinates start at zero
    assert torch.allclose(nb[:, :, 0], torch.zeros_like(centers))
    # every grouped point is one of the cloud's points
    absolute = (nb + centers[:, :, None]).reshape(2, -1, 3)
    assert torch.cdist(absolute, xyz).min(-1).values.max() < 1e-6


def _chamfer_reference(x, y, norm):
    total = 0.0
    for b in range(x.shape[0]):
        dxy = [min(float(((p - q) ** 2).sum()) for q in y[b]) for p in x[b]]
        dyx = [min(float(((q - p) ** 2).sum()) for p in x[b]) for q in y[b]]
        if norm == "l2":
            total += sum(dxy) / len(dxy) + sum(dyx) / len(dyx)
        else:
            total += 0.5 * (sum(d ** 0.5 for d in dxy) / len(dxy) + sum(d ** 0.5 for d in dyx) / len(dyx))
    return total / x.shape[0]


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_chamfer_matches_brute_force(norm):
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(2, 30, 3, generator=g, dtype=torch.float64), torch.rand(2, 17, 3, generator=g, dtype=torch.float64)
    assert chamfer_distance(x, y, norm).item() == pytest.approx(_chamfer_reference(x, y, norm), rel=1e-9)
    assert chamfer_distance(x, x, norm).item() == pytest.approx(0.0, abs=1e-5)
    x.requires_grad_(True)
    chamfer_distance(x, y, norm).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="'l1' or 'l2'"):
        chamfer_distance(x, y, "l3")


def test_mini_pointnet_is_permutation_invariant():
    net = MiniPointNet(16, (8, 16), 32).eval()
    nb = torch.randn(2, 5, 10, 3)
    out = net(nb)
    assert out.shape == (2, 5, 16)
    perm = torch.randperm(10)
    assert torch.allclose(net(nb[:, :, perm]), out, atol=1e-6)
