"""CIFAR-10 from the official python-version files (``data_scripts/prepare_cifar10.py`` fetches them).

Our own reader rather than ``torchvision.datasets.CIFAR10``: that class insists on the official md5 sums,
which rules out small stand-in files for tests, and adds nothing else we need.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Optional, Union

import torch
from lightning.pytorch.utilities import rank_zero_warn

from .base import ImageClassificationDataModule, SeededTransformDataset
from .transforms import ImageTensorDataset, TransformDataset, build_eval_transform, build_train_transform, \
    stratified_split

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
# per-channel statistics of the 50,000 training images
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _get(d: dict, key: str):
    # the official files were pickled by Python 2: keys are bytes once loaded with encoding="bytes"
    return d[key.encode()] if key.encode() in d else d[key]


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def resolve_root(root: Union[str, Path]) -> Path:
    """The folder holding the batch files: ``root/cifar-10-batches-py`` or ``root`` itself."""
    root = Path(root).expanduser()
    for folder in (root / FOLDER, root):
        if (folder / META_FILE).is_file():
            missing = [f for f in TRAIN_FILES + (TEST_FILE,) if not (folder / f).is_file()]
            if missing:
                raise FileNotFoundError(f"CIFAR-10 folder {folder} lacks {missing}; re-create it with "
                                        f"`python data_scripts/prepare_cifar10.py --root {root}`")
            return folder
    raise FileNotFoundError(f"no CIFAR-10 data at {root} (expected {root / FOLDER / META_FILE} and the batch "
                            f"files next to it); run `python data_scripts/prepare_cifar10.py --root {root}`")


def read_batches(folder: Path, names) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated uint8 images (N, 3, 32, 32) and int64 labels (N,) of the named batch files."""
    images, labels = [], []
    for name in names:
        d = _unpickle(folder / name)
        data = torch.as_tensor(_get(d, "data"), dtype=torch.uint8)
        # each row holds the 1024 red, then green, then blue values of a 32x32 image, row-major
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(torch.as_tensor(_get(d, "labels"), dtype=torch.long))
    return torch.cat(images), torch.cat(labels)


class CIFAR10DataModule(ImageClassificationDataModule):
    """CIFAR-10 (Krizhevsky 2009): 50k train / 10k test 32x32 colour images of 10 classes.

    The validation split is carved out of the training batches (stratified by class, from ``seed``);
    test is ``test_batch``. Training augmentation: zero-pad 4 + random 32 crop + horizontal flip.

    Args:
        root: folder containing ``cifar-10-batches-py/``, or that folder itself.
        val_size: training images held out for validation; clipped to half the training images for
            small stand-in files; 0: validate on the test split.
        image_size: side fed to the model (images are resized when it is not 32).
        augment: random crop + flip for training.

    ``batch_size``, ``num_workers``, ``seed``, ``pin_memory``, ``eval_batch_size``: see :class:`BaseDataModule`.
    """

    def __init__(self, batch_size: int = 128, num_workers: int = 0, seed: int = 0, pin_memory: bool = False,
                 eval_batch_size: Optional[int] = None, root: Union[str, Path] = "data/cifar10",
                 val_size: int = 5000, image_size: int = 32, augment: bool = True) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory, eval_batch_size)
        if val_size < 0:
            raise ValueError(f"data.val_size must be >= 0, got {val_size}")
        self.folder = resolve_root(root)
        meta = _unpickle(self.folder / META_FILE)
        self.class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in _get(meta, "label_names")]
        self.image_size = image_size
        self.in_chans = 3
        self.val_size = val_size
        self.augment = augment
        self.split_indices: Optional[dict[str, torch.Tensor]] = None  # train/val positions in data_batch_1..5

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        images, labels = read_batches(self.folder, TRAIN_FILES)
        test_images, test_labels = read_batches(self.folder, (TEST_FILE,))
        for name, lab in (("training", labels), ("test", test_labels)):
            if len(lab) and not 0 <= int(lab.min()) <= int(lab.max()) < self.num_classes:
                raise ValueError(f"{name} labels in {self.folder} span [{int(lab.min())}, {int(lab.max())}], "
                                 f"outside the {self.num_classes} classes of {META_FILE}")
        n = len(labels)
        n_val = self.val_size
        if n_val > n // 2:
            rank_zero_warn(f"data.val_size={n_val} is more than half of the {n} training images in "
                           f"{self.folder}; using {n // 2}")
            n_val = n // 2
        train_idx, val_idx = stratified_split(labels, [n - n_val, n_val], self.seed)
        self.split_indices = {"train": train_idx, "val": val_idx}

        eval_tf = build_eval_transform(self.image_size, CIFAR10_MEAN, CIFAR10_STD)
        train = ImageTensorDataset(images[train_idx], labels[train_idx])
        if self.augment:
            pad = round(4 * self.image_size / 32)  # the 4-pixel recipe, scaled with the image
            train_tf = build_train_transform(self.image_size, CIFAR10_MEAN, CIFAR10_STD, crop="pad", padding=pad)
            self.train_set = SeededTransformDataset(train, train_tf, self.seed)
        else:
            self.train_set = TransformDataset(train, eval_tf)
        self.test_set = TransformDataset(ImageTensorDataset(test_images, test_labels), eval_tf)
        self.val_set = TransformDataset(ImageTensorDataset(images[val_idx], labels[val_idx]), eval_tf) \
            if n_val else self.test_set
