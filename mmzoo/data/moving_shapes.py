"""Built-in procedural video data: a shape moves, and the class is *how* it moves in time.

Each clip shows one object of random shape, colour, size and position on a random background (the
renderer of :mod:`mmzoo.data.shapes`). A class-independent random *path* gives the object ``T``
monotone states ``s_0 .. s_{T-1}``: a translation in a random direction, a rotation or a growth. The
class only decides the **order** in which the frames show these states (``PATTERNS``): steadily,
out and back, jumping back to the start, zigzagging, in a decaying or a growing oscillation.

So the *set* of frames of a clip has the same distribution for every class, and a model that looks at
frames independently (TimeSformer's space-only scheme, or any frame-averaging model) is exactly at
chance: the class is visible only in the temporal order. Direction-labelled classes (move left vs
right, up vs down) would not have this property: a horizontal trail and a vertical trail already differ
as sets of frames. The path direction being random, a pattern and its mirror (states read backwards)
are the same class.

Sample ``i`` of a split is a pure function of ``(seed, split, i)``; nothing is read from disk.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch.utils.data import Dataset

from .base import BaseDataModule, SeededTransformDataset, sample_seed
from .shapes import CLASS_NAMES as SHAPE_NAMES, MEAN, STD, _NUM_PARAMS, render_shapes
from .transforms import TransformDataset

# frame t shows state PATTERNS[name][t] of the path (written for 8 frames; other T are resampled)
PATTERNS = {
    "steady": (0, 1, 2, 3, 4, 5, 6, 7),  # constant speed
    "bounce": (0, 2, 4, 6, 7, 5, 3, 1),  # out and back
    "restart": (4, 5, 6, 7, 0, 1, 2, 3),  # moves, jumps back to the start, moves again
    "zigzag": (0, 4, 1, 5, 2, 6, 3, 7),  # alternates between two interleaved trails
    "damped": (0, 7, 1, 6, 2, 5, 3, 4),  # oscillation with decaying amplitude
    "growing": (3, 4, 2, 5, 1, 6, 0, 7),  # oscillation with growing amplitude (damped, reversed)
}
CLASS_NAMES = tuple(PATTERNS)
MOTIONS = ("translate", "rotate", "scale")
SPLITS = {"train": 11, "val": 12, "test": 13}
_ROTATING_SHAPES = (SHAPE_NAMES.index("triangle"), SHAPE_NAMES.index("crescent"))  # no symmetry < 120 deg


def pattern_order(name: str, num_frames: int) -> list[int]:
    """State index (0 .. num_frames-1) of each frame for pattern ``name`` at ``num_frames`` frames."""
    base = PATTERNS[name]
    if num_frames == len(base):
        return list(base)
    # resample: frame t takes the pattern's value at the nearest position, scaled to num_frames states
    pos = [round(t * (len(base) - 1) / max(num_frames - 1, 1)) for t in range(num_frames)]
    return [round(base[p] * (num_frames - 1) / (len(base) - 1)) for p in pos]


def clip_params(g: torch.Generator, label: int, num_frames: int, motions: Sequence[str]):
    """Per-frame renderer parameters (T, 20) and shape kinds (T,) of one clip of class ``label``."""
    p = torch.rand(_NUM_PARAMS, generator=g)
    u = torch.rand(4, generator=g)
    motion = motions[int(u[0] * len(motions))]
    shape = int(torch.randint(len(SHAPE_NAMES), (1,), generator=g))
    k = torch.arange(num_frames, dtype=torch.float32) / max(num_frames - 1, 1)  # path states, 0 .. 1
    states = p.repeat(num_frames, 1)  # (T, 20): appearance fixed over the clip
    if motion == "translate":
        # a straight path of 0.8 (in the renderer's [0, 1) position units) in a random direction
        phi, length = 2 * math.pi * float(u[1]), 0.8
        dx, dy = length * math.cos(phi), length * math.sin(phi)
        x0 = float(u[2]) * (1 - abs(dx)) + max(-dx, 0.0)
        y0 = float(u[3]) * (1 - abs(dy)) + max(-dy, 0.0)
        states[:, 0], states[:, 1] = x0 + dx * k, y0 + dy * k
        states[:, 2] = 0.3 * p[2]  # smaller objects: room to move
    elif motion == "rotate":
        shape = _ROTATING_SHAPES[int(u[1] * 2)]
        sign = 1.0 if u[2] < 0.5 else -1.0
        states[:, 3] = p[3] + sign * (105.0 / 360.0) * k  # 105 degrees in all, under the 120-degree symmetry
    elif motion == "scale":
        sign = 1.0 if u[1] < 0.5 else -1.0
        states[:, 2] = 0.5 + sign * 0.5 * (k - 0.5)  # radius grows (or shrinks) over the renderer's range
    else:
        raise ValueError(f"unknown motion {motion!r}; valid choices: {list(MOTIONS)}")
    order = pattern_order(CLASS_NAMES[label], num_frames)
    return states[order], torch.full((num_frames,), shape)


class MovingShapesDataset(Dataset):
    """One split: ``(uint8 clip (3, T, S, S), label)``; balanced, sample ``i`` has label ``i % C``.

    Args:
        num_samples: split length.
        seed: generation seed.
        split: "train", "val" or "test" (independent streams).
        num_frames: frames per clip T.
        image_size: frame side S.
        motions: path kinds to draw from (see ``MOTIONS``).
    """

    def __init__(self, num_samples: int, seed: int = 0, split: str = "train", num_frames: int = 8,
                 image_size: int = 32, motions: Sequence[str] = MOTIONS) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid choices: {list(SPLITS)}")
        bad = [m for m in motions if m not in MOTIONS]
        if bad or not motions:
            raise ValueError(f"data.motions={list(motions)} must be a non-empty subset of {list(MOTIONS)}")
        self.num_samples, self.seed, self.split = num_samples, seed, split
        self.num_frames, self.image_size, self.motions = num_frames, image_size, tuple(motions)
        chunks = [self.render(range(s, min(s + 256, num_samples))) for s in range(0, num_samples, 256)]
        self.clips = (torch.cat(chunks) if chunks
                      else torch.empty(0, 3, num_frames, image_size, image_size, dtype=torch.uint8))

    def label(self, index: int) -> int:
        return index % len(CLASS_NAMES)

    def render(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 clips (len(indices), 3, T, S, S), all frames rendered in one batch."""
        T, S = self.num_frames, self.image_size
        params, kinds, noise = [], [], []
        for i in indices:
            g = torch.Generator().manual_seed(sample_seed(self.seed, SPLITS[self.split], i))
            prm, kind = clip_params(g, self.label(i), T, self.motions)
            params.append(prm), kinds.append(kind)
            noise.append(torch.randn(T, 3, S, S, generator=g))
        frames = render_shapes(torch.cat(params), torch.cat(kinds), torch.cat(noise))  # (n*T, 3, S, S)
        return frames.view(len(indices), T, 3, S, S).transpose(1, 2).contiguous()  # (n, 3, T, S, S)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int):
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        return self.clips[index], self.label(index)


def normalize_clip(clip: torch.Tensor) -> torch.Tensor:
    """uint8 (C, T, H, W) -> float, normalised like the shapes data."""
    return (clip.float() / 255.0 - MEAN) / STD


def random_flip_clip(clip: torch.Tensor) -> torch.Tensor:
    """Flip a whole clip (C, T, H, W) left-right and/or up-down (draws from torch's global RNG);
    a flipped path is still a path, so the class is unchanged."""
    if torch.rand(()) < 0.5:
        clip = clip.flip(-1)
    if torch.rand(()) < 0.5:
        clip = clip.flip(-2)
    return normalize_clip(clip)


class MovingShapesDataModule(BaseDataModule):
    """Procedural clips whose class is a temporal pattern of motion (see the module docstring).

    Args:
        num_train: split lengths.
        num_val: split lengths.
        num_test: split lengths.
        num_frames: frames per clip.
        image_size: frame side.
        motions: path kinds ("translate", "rotate", "scale").
        augment: random clip flips for training.

    ``batch_size``, ``num_workers``, ``seed``, ``pin_memory``, ``eval_batch_size``: see :class:`BaseDataModule`.
    """

    def __init__(self, batch_size: int = 32, num_workers: int = 0, seed: int = 0, pin_memory: bool = False,
                 eval_batch_size: Optional[int] = None, num_train: int = 6000, num_val: int = 1200,
                 num_test: int = 1200, num_frames: int = 8, image_size: int = 32,
                 motions: Sequence[str] = MOTIONS, augment: bool = True) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory, eval_batch_size)
        if image_size < 8 or num_frames < 2:
            raise ValueError(f"data.image_size must be >= 8 and data.num_frames >= 2, got {image_size}, "
                             f"{num_frames}")
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.class_names = list(CLASS_NAMES)
        self.num_frames, self.image_size, self.in_chans = num_frames, image_size, 3
        self.motions = tuple(motions)
        self.augment = augment

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        make = lambda split, n: MovingShapesDataset(n, self.seed, split, self.num_frames, self.image_size,
                                                    self.motions)
        train = make("train", self.num_train)
        self.train_set = (SeededTransformDataset(train, random_flip_clip, self.seed) if self.augment
                          else TransformDataset(train, normalize_clip))
        self.val_set = TransformDataset(make("val", self.num_val), normalize_clip)
        self.test_set = TransformDataset(make("test", self.num_test), normalize_clip)
