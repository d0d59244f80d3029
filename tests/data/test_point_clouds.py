"""procedural_shapes: deterministic, normalised, balanced; few-label split; augmentation."""
from __future__ import annotations

import torch

from mmzoo.data import ProceduralShapesDataModule
from mmzoo.data.points import CLASS_NAMES, PointAugment, ProceduralShapesDataset, few_labels_subset


def test_procedural_shapes_deterministic_and_normalised():
    a = ProceduralShapesDataset(16, num_points=64, seed=3, split="train")
    b = ProceduralShapesDataset(16, num_points=64, seed=3, split="train")
    c = ProceduralShapesDataset(16, num_points=64, seed=3, split="val")
    assert torch.equal(a.points, b.points) and not torch.equal(a.points, c.points)
    assert a.points.shape == (16, 64, 3) and torch.isfinite(a.points).all()
    radius = a.points.norm(dim=-1).amax(dim=1)
    assert torch.allclose(radius, torch.ones(16), atol=1e-5)
    assert torch.allclose(a.points.mean(dim=1), torch.zeros(16, 3), atol=1e-5)
    assert a.labels == [i % len(CLASS_NAMES) for i in range(16)]


def test_few_labels_and_datamodule():
    assert few_labels_subset([0, 1, 0, 1, 0, 2], 2) == [0, 1, 2, 3, 5]
    dm = ProceduralShapesDataModule(batch_size=4, num_points=32, num_train=40, num_val=8, num_test=8, labels_per_class=2)
    dm.setup("fit")
    assert dm.num_classes == 8 and len(dm.train_set) == 16 and len(dm.unlabeled_set) == 40
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 32, 3) and y.shape == (4,)


def test_augment_scales_and_shifts_within_bounds():
    torch.manual_seed(0)
    p = torch.randn(100, 3)
    q = PointAugment(scale=(0.5, 2.0), shift=0.2)(p)
    ratio = (q - q.mean(0)).std(0) / (p - p.mean(0)).std(0)
    assert ((ratio > 0.5 - 1e-4) & (ratio < 2.0 + 1e-4)).all()
