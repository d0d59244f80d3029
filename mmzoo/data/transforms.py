"""Helpers shared by the image data modules: normalisation constants, train/eval torchvision v2
pipelines, in-memory / mapped datasets and a deterministic stratified split."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# one-channel equivalent: the average of the RGB statistics
IMAGENET_GREY_MEAN = (0.449,)
IMAGENET_GREY_STD = (0.226,)


def _to_normalised_float(mean: Sequence[float], std: Sequence[float]) -> list:
    # ToImage: PIL or tensor -> tv_tensors.Image; ToDtype(scale=True): uint8 0..255 -> float 0..1;
    # ToPureTensor: a plain torch.Tensor out, so batches collate to plain tensors
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std)),
            v2.ToPureTensor()]


def build_train_transform(image_size: int, mean: Sequence[float], std: Sequence[float], crop: str = "resized",
                          scale: tuple[float, float] = (0.6, 1.0), padding: int = 4, hflip: bool = True) -> Callable:
    """Random training augmentation followed by conversion to a normalised float32 (C, H, W) tensor.

    Args:
        image_size: output side.
        mean: per-channel normalisation mean (len = channels).
        std: per-channel normalisation std (len = channels).
        crop: ``"resized"`` (RandomResizedCrop with ``scale``, for arbitrary-size photos) or ``"pad"``
            (zero-pad by ``padding`` then RandomCrop, the CIFAR recipe; resizes first when the input is
            not already ``image_size``).
        hflip: random horizontal flip.
    """
    if crop == "resized":
        ops: list = [v2.RandomResizedCrop(image_size, scale=scale, antialias=True)]
    elif crop == "pad":
        ops = [v2.Resize(image_size, antialias=True), v2.RandomCrop(image_size, padding=padding)]
    else:
        raise ValueError(f"unknown crop {crop!r}; valid choices: ['resized', 'pad']")
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    return v2.Compose(ops + _to_normalised_float(mean, std))


def build_eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """Resize the shorter side to ``image_size``, center crop, normalise. No randomness."""
    return v2.Compose([v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
                      + _to_normalised_float(mean, std))


class ImageTensorDataset(Dataset):
    """``(images[i], int(labels[i]))`` over in-memory tensors."""

    def __init__(self, images: torch.Tensor, labels: Sequence[int]) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = torch.as_tensor(labels).tolist()  # plain ints: cheap to index, collate to int64

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index]


class TransformDataset(Dataset):
    """Applies a deterministic ``transform`` (eval preprocessing) to ``dataset[i]``'s input.

    Random augmentation goes through :class:`~mmzoo.data.base.SeededTransformDataset` instead.
    """

    def __init__(self, dataset: Dataset, transform: Callable) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        x, *rest = self.dataset[index]
        return (self.transform(x), *rest)


def stratified_split(labels: Sequence[int], sizes: Sequence[int], seed: int) -> list[torch.Tensor]:
    """Split ``range(len(labels))`` into parts of exactly ``sizes`` with per-class proportions kept.

    Each class is shuffled (from ``seed``) and its j-th sample gets the key ``(j + u_c) / n_c``
    (``u_c`` a random per-class offset); cutting the key-sorted list at the cumulative sizes gives every
    part each class's share up to rounding, for any number of parts. Parts are sorted index tensors.
    """
    labels = torch.as_tensor(labels)
    n = len(labels)
    if sum(sizes) != n or min(sizes) < 0:
        raise ValueError(f"split sizes {list(sizes)} must be >= 0 and sum to the {n} samples")
    g = torch.Generator().manual_seed(seed)
    keys = torch.empty(n, dtype=torch.float64)
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        u = torch.rand((), generator=g, dtype=torch.float64)
        keys[idx] = (torch.arange(len(idx), dtype=torch.float64) + u) / len(idx)
    order = torch.argsort(keys, stable=True)
    return [part.sort().values for part in torch.split(order, list(sizes))]
