"""Built-in real data: scikit-learn's handwritten digits (1,797 8x8 grey images of 0-9, from UCI's
optical recognition data set), shipped inside scikit-learn, so no download."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from .base import ImageClassificationDataModule, SeededTransformDataset
from .transforms import ImageTensorDataset, stratified_split


class DigitsDataModule(ImageClassificationDataModule):
    """scikit-learn digits, bilinearly upsampled from 8x8 to ``image_size``, one channel.

    Pixels (0..16) are scaled to [0, 1] and standardised with the mean/std of the training split. The
    train/val/test split is stratified by class and a function of ``seed``.

    Args:
        image_size: output side.
        fractions: train/val/test fractions (sum to 1).
        augment: random shift of up to +-1 pixel of the original 8x8 grid (+-image_size/8 pixels) for
            training; uncovered pixels take the background value.

    ``batch_size``, ``num_workers``, ``seed``, ``pin_memory``, ``eval_batch_size``: see :class:`BaseDataModule`.
    """

    def __init__(self, batch_size: int = 64, num_workers: int = 0, seed: int = 0, pin_memory: bool = False,
                 eval_batch_size: Optional[int] = None, image_size: int = 16,
                 fractions: Sequence[float] = (0.7, 0.1, 0.2), augment: bool = True) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory, eval_batch_size)
        fractions = tuple(float(f) for f in fractions)
        if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
            raise ValueError(f"data.fractions must be 3 non-negative train/val/test fractions summing to 1, "
                             f"got {list(fractions)}")
        self.fractions = fractions
        self.class_names = [str(d) for d in range(10)]
        self.image_size = image_size
        self.in_chans = 1
        self.augment = augment
        self.split_indices: Optional[dict[str, torch.Tensor]] = None  # positions in load_digits()
        self.mean: Optional[float] = None  # pixel statistics of the training split, set by setup
        self.std: Optional[float] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        from sklearn.datasets import load_digits  # imported lazily: sklearn is slow to import

        digits = load_digits()
        images = torch.from_numpy(digits.images).float().div_(16.0)[:, None]  # (N, 1, 8, 8) in [0, 1]
        labels = torch.from_numpy(digits.target).long()
        images = F.interpolate(images, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)

        n = len(labels)
        n_val, n_test = round(self.fractions[1] * n), round(self.fractions[2] * n)
        parts = stratified_split(labels, [n - n_val - n_test, n_val, n_test], self.seed)
        self.split_indices = dict(zip(("train", "val", "test"), parts))
        train_images = images[parts[0]]
        self.mean, self.std = train_images.mean().item(), train_images.std().item()
        images = (images - self.mean) / self.std
        train, val, test = (ImageTensorDataset(images[idx], labels[idx]) for idx in parts)
        transform = None
        if self.augment:
            # translate is a fraction of the side: 1/8 of the side = one pixel of the 8x8 original
            transform = v2.RandomAffine(degrees=0, translate=(1 / 8, 1 / 8), fill=-self.mean / self.std)
        self.train_set = SeededTransformDataset(train, transform, self.seed)
        self.val_set, self.test_set = val, test
