"""Point-cloud data: normalisation and augmentation, the data module every point-cloud data set shares,
and the built-in ``procedural_shapes`` data (points sampled on the surfaces of primitive solids).

A point-cloud sample is ``(points, label)`` with ``points`` a float (N, 3) tensor centred at the origin
and scaled into the unit sphere.
"""
from __future__ import annotations

import logging
import math
from typing import Optional, Sequence

import torch
from torch.utils.data import Dataset, Subset

from .base import BaseDataModule, SeededTransformDataset, sample_seed

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# normalisation, augmentation
# --------------------------------------------------------------------------------------------------
def normalize_unit_sphere(points: torch.Tensor) -> torch.Tensor:
    """Centre (N, 3) points at their centroid and scale the farthest one to radius 1."""
    points = points - points.mean(dim=0, keepdim=True)
    return points / points.norm(dim=-1).max().clamp_min(1e-8)


def random_rotation(generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A rotation matrix (3, 3) drawn uniformly from SO(3) (QR of a Gaussian matrix, sign-fixed)."""
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator))
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def rotation_about_y(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


class PointAugment:
    """Training augmentation of one cloud (N, 3), drawn from torch's global RNG (seeded per sample by
    :class:`SeededTransformDataset`): rotation, anisotropic scale, shift, clipped jitter.

    Args:
        scale: range of the per-axis scale factor (Point-BERT's ScaleAndTranslate: 2/3 .. 3/2).
        shift: maximum translation per axis.
        rotate: "none", "y" (about the up axis, ModelNet / ShapeNet convention) or "so3" (any rotation).
        jitter: std of per-point Gaussian noise (0 = off), clipped at ``jitter_clip``.
        jitter_clip: clip of the jitter.
    """

    ROTATIONS = ("none", "y", "so3")

    def __init__(self, scale: Sequence[float] = (2 / 3, 3 / 2), shift: float = 0.2, rotate: str = "none",
                 jitter: float = 0.0, jitter_clip: float = 0.05) -> None:
        if rotate not in self.ROTATIONS:
            raise ValueError(f"rotate must be one of {self.ROTATIONS}, got {rotate!r}")
        self.scale, self.shift, self.rotate = tuple(scale), shift, rotate
        self.jitter, self.jitter_clip = jitter, jitter_clip

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        if self.rotate == "y":
            points = points @ rotation_about_y(2 * math.pi * torch.rand(()).item()).T
        elif self.rotate == "so3":
            points = points @ random_rotation().T
        lo, hi = self.scale
        points = points * (lo + (hi - lo) * torch.rand(3)) + self.shift * (2 * torch.rand(3) - 1)
        if self.jitter > 0:
            points = points + (self.jitter * torch.randn_like(points)).clamp(-self.jitter_clip, self.jitter_clip)
        return points


# --------------------------------------------------------------------------------------------------
# surface sampling
# --------------------------------------------------------------------------------------------------
def sample_triangles(vertices: torch.Tensor, faces: torch.Tensor, num_points: int,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``num_points`` points uniform on a triangle mesh's surface (faces picked by area).

    Args:
        vertices: (V, 3) float.
        faces: (F, 3) vertex indices.
    """
    tri = vertices[faces]  # (F, 3, 3)
    area = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=-1)
    if not torch.isfinite(area).all() or area.sum() <= 0:
        raise ValueError("mesh has no surface area (degenerate or non-finite faces)")
    pick = torch.multinomial(area, num_points, replacement=True, generator=generator)
    u, v = torch.rand(num_points, 1, generator=generator), torch.rand(num_points, 1, generator=generator)
    su = u.sqrt()  # uniform barycentric coordinates
    a, b, c = tri[pick, 0], tri[pick, 1], tri[pick, 2]
    return (1 - su) * a + su * (1 - v) * b + su * v * c


_CUBE_V = torch.tensor([[x, y, z] for x in (-1.0, 1.0) for y in (-1.0, 1.0) for z in (-1.0, 1.0)]) * 0.8
_CUBE_F = torch.tensor([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                        [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
_PYRAMID_V = torch.tensor([[-1.0, -1.0, -0.8], [1.0, -1.0, -0.8], [1.0, 1.0, -0.8], [-1.0, 1.0, -0.8], [0.0, 0.0, 1.0]])
_PYRAMID_F = torch.tensor([[0, 2, 1], [0, 3, 2], [0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]])
_OCTA_V = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0], [0, 0, 1.0], [0, 0, -1.0]])
_OCTA_F = torch.tensor([[a, b, c] for a in (0, 1) for b in (2, 3) for c in (4, 5)])


def _disc(n: int, radius: float, z: float, g: torch.Generator) -> torch.Tensor:
    r = radius * torch.rand(n, generator=g).sqrt()
    t = 2 * math.pi * torch.rand(n, generator=g)
    return torch.stack([r * torch.cos(t), r * torch.sin(t), torch.full((n,), z)], dim=-1)


def _tube(n: int, radius: float, z0: float, z1: float, g: torch.Generator) -> torch.Tensor:
    t = 2 * math.pi * torch.rand(n, generator=g)
    z = z0 + (z1 - z0) * torch.rand(n, generator=g)
    return torch.stack([radius * torch.cos(t), radius * torch.sin(t), z], dim=-1)


def _split(n: int, areas: Sequence[float], g: torch.Generator) -> list[int]:
    """Points per surface part, in proportion to the parts' areas."""
    pick = torch.multinomial(torch.tensor(areas), n, replacement=True, generator=g)
    return torch.bincount(pick, minlength=len(areas)).tolist()


def _sphere(n, g):
    p = torch.randn(n, 3, generator=g)
    return p / p.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def _cylinder(n, g, r=0.7):
    side, top, bottom = _split(n, [2 * math.pi * r * 2, math.pi * r * r, math.pi * r * r], g)
    return torch.cat([_tube(side, r, -1, 1, g), _disc(top, r, 1, g), _disc(bottom, r, -1, g)])


def _cone(n, g):
    side, base = _split(n, [math.pi * math.sqrt(5), math.pi], g)
    t = torch.rand(side, generator=g).sqrt()  # distance from the apex, density ~ circumference
    a = 2 * math.pi * torch.rand(side, generator=g)
    lateral = torch.stack([t * torch.cos(a), t * torch.sin(a), 1 - 2 * t], dim=-1)
    return torch.cat([lateral, _disc(base, 1.0, -1, g)])


def _torus(n, g, big=0.75, small=0.25):
    # rejection sampling: the area element grows with the distance from the axis, big + small cos(theta)
    theta = 2 * math.pi * torch.rand(4 * n, generator=g)
    keep = torch.rand(4 * n, generator=g) * (big + small) < big + small * torch.cos(theta)
    theta = theta[keep][:n]
    phi = 2 * math.pi * torch.rand(theta.numel(), generator=g)
    ring = big + small * torch.cos(theta)
    p = torch.stack([ring * torch.cos(phi), ring * torch.sin(phi), small * torch.sin(theta)], dim=-1)
    return p[torch.arange(n) % p.shape[0]]


def _capsule(n, g, r=0.45, half=0.55):
    side, caps = _split(n, [2 * math.pi * r * 2 * half, 4 * math.pi * r * r], g)
    s = _sphere(caps, g) * r
    s[:, 2] += torch.where(s[:, 2] >= 0, half, -half)
    return torch.cat([_tube(side, r, -half, half, g), s])


PRIMITIVES = {
    "sphere": _sphere,
    "cube": lambda n, g: sample_triangles(_CUBE_V, _CUBE_F, n, g),
    "cylinder": _cylinder,
    "cone": _cone,
    "torus": _torus,
    "pyramid": lambda n, g: sample_triangles(_PYRAMID_V, _PYRAMID_F, n, g),
    "octahedron": lambda n, g: sample_triangles(_OCTA_V, _OCTA_F, n, g),
    "capsule": _capsule,
}
CLASS_NAMES = tuple(PRIMITIVES)
SPLITS = {"train": 1, "val": 2, "test": 3}


def procedural_shape(label: int, num_points: int, generator: torch.Generator, noise: float = 0.01,
                     cut_prob: float = 0.2, scale_range: tuple[float, float] = (0.7, 1.3)) -> torch.Tensor:
    """One cloud (num_points, 3) of primitive ``CLASS_NAMES[label]``: random rotation, anisotropic scale,
    Gaussian noise and, with probability ``cut_prob``, a planar cut removing a cap of the shape."""
    g = generator
    p = PRIMITIVES[CLASS_NAMES[label]](num_points, g)
    lo, hi = scale_range
    p = p * (lo + (hi - lo) * torch.rand(3, generator=g))
    p = p @ random_rotation(g).T
    if torch.rand((), generator=g) < cut_prob:
        direction = _sphere(1, g)[0]
        offset = 0.2 + 0.4 * torch.rand((), generator=g)  # keep the points below the plane p.d = offset
        kept = p[(p @ direction) < offset]
        if kept.shape[0] >= num_points // 4:
            p = kept[torch.randint(kept.shape[0], (num_points,), generator=g)]
    p = p + noise * torch.randn(p.shape, generator=g)
    return normalize_unit_sphere(p)


class ProceduralShapesDataset(Dataset):
    """One split of ``procedural_shapes``: sample ``i`` depends only on ``(seed, split, i)``; labels cycle
    through the classes (balanced). Generated once at construction and kept in memory."""

    def __init__(self, num_samples: int, num_points: int = 1024, seed: int = 0, split: str = "train",
                 noise: float = 0.01, cut_prob: float = 0.2) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid choices: {list(SPLITS)}")
        self.labels = [i % len(CLASS_NAMES) for i in range(num_samples)]
        clouds = []
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # per-sample ops are tiny: handing them to a thread pool costs more than them
        try:
            for i, y in enumerate(self.labels):
                g = torch.Generator().manual_seed(sample_seed(seed, SPLITS[split], i))
                clouds.append(procedural_shape(y, num_points, g, noise, cut_prob))
        finally:
            torch.set_num_threads(threads)
        self.points = torch.stack(clouds) if clouds else torch.empty(0, num_points, 3)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.points[index], self.labels[index]


# --------------------------------------------------------------------------------------------------
# data modules
# --------------------------------------------------------------------------------------------------
def few_labels_subset(labels: Sequence[int], per_class: int) -> list[int]:
    """Indices of the first ``per_class`` samples of every class (a deterministic few-label split)."""
    seen: dict[int, int] = {}
    keep = []
    for i, y in enumerate(labels):
        if seen.get(y, 0) < per_class:
            keep.append(i)
            seen[y] = seen.get(y, 0) + 1
    return keep


class PointCloudDataModule(BaseDataModule):
    """What point-cloud data modules share: splits of ``(points (N, 3), label)``, training augmentation,
    an optional few-label training split, and the unlabelled full training split for pre-training.

    Subclasses implement :meth:`build_splits` returning (train, val, test) datasets with a ``labels`` list.

    Args:
        num_points: points per cloud.
        augment: random scale / shift (and ``rotate``, ``jitter``) on the training split.
        rotate: training rotation, "none", "y" or "so3" (see :class:`PointAugment`).
        jitter: training point jitter std.
        labels_per_class: keep only this many labelled training samples per class (None: all); the
            whole training split stays available to self-supervised stages as ``unlabeled_set``.

    ``batch_size``, ``num_workers``, ``seed``, ``pin_memory``, ``eval_batch_size``: see :class:`BaseDataModule`.
    """

    class_names: Sequence[str] = ()

    def __init__(self, batch_size: int = 32, num_workers: int = 0, seed: int = 0, pin_memory: bool = False,
                 eval_batch_size: Optional[int] = None, num_points: int = 1024, augment: bool = True,
                 rotate: str = "none", jitter: float = 0.0, labels_per_class: Optional[int] = None) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory, eval_batch_size)
        if num_points < 1:
            raise ValueError(f"data.num_points must be >= 1, got {num_points}")
        self.num_points = num_points
        self.augment = PointAugment(rotate=rotate, jitter=jitter) if augment else None
        self.labels_per_class = labels_per_class
        self.unlabeled_set: Optional[Dataset] = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def build_splits(self) -> tuple[Dataset, Dataset, Dataset]:
        raise NotImplementedError

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        train, val, test = self.build_splits()
        self.unlabeled_set = SeededTransformDataset(train, self.augment, self.seed + 1)
        if self.labels_per_class is not None:
            keep = few_labels_subset(train.labels, self.labels_per_class)
            log.info("few-label training split: %d samples (%d per class)", len(keep), self.labels_per_class)
            train = Subset(train, keep)
        self.train_set = SeededTransformDataset(train, self.augment, self.seed)
        self.val_set, self.test_set = val, test

    def unlabeled_dataloader(self):
        """Loader over the whole (augmented) training split, labels ignored: for pre-training stages."""
        if self.unlabeled_set is None:
            self.setup("fit")
        return self._loader(self.unlabeled_set, self.batch_size,
                            torch.utils.data.RandomSampler(self.unlabeled_set,
                                                           generator=torch.Generator().manual_seed(self.seed)),
                            drop_last=True)


class ProceduralShapesDataModule(PointCloudDataModule):
    """Built-in ``procedural_shapes``: clouds sampled on 8 primitive solids (``CLASS_NAMES``) with random
    rotation, anisotropic scale, noise and occasional planar cuts; generated from ``seed``, no files.

    Args:
        num_train: split lengths.
        num_val: split lengths.
        num_test: split lengths.
        noise: std of the Gaussian point noise.
        cut_prob: probability of a planar cut.

    Other arguments: see :class:`PointCloudDataModule`.
    """

    def __init__(self, batch_size: int = 32, num_workers: int = 0, seed: int = 0, pin_memory: bool = False,
                 eval_batch_size: Optional[int] = None, num_points: int = 1024, augment: bool = True,
                 rotate: str = "none", jitter: float = 0.0, labels_per_class: Optional[int] = None,
                 num_train: int = 4000, num_val: int = 800, num_test: int = 800, noise: float = 0.01,
                 cut_prob: float = 0.2) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory, eval_batch_size, num_points, augment,
                         rotate, jitter, labels_per_class)
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.noise, self.cut_prob = noise, cut_prob
        self.class_names = list(CLASS_NAMES)

    def build_splits(self):
        make = lambda split, n: ProceduralShapesDataset(n, self.num_points, self.seed, split, self.noise, self.cut_prob)
        return make("train", self.num_train), make("val", self.num_val), make("test", self.num_test)
