"""CIFAR-10 from the official python-version files (``data_scripts/prepare_cifar10.py`` fetches them).

Our own reader rather than ``torchvision.datasets.CIFAR10``: that class insists on the official md5 sums,
which rules out small stand-in files for tests, and unpickles the files with plain ``pickle``. The batch
files are pickles; they are read with :mod:`mmzoo.safe_pickle`, which resolves only the globals of numpy
arrays, so a payload placed in a batch file is refused instead of run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn

from ..safe_pickle import restricted_load
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


# the globals a CIFAR-10 batch pickle holds: numpy arrays (written by numpy 1 or 2, pickle protocol 2 to 5)
# and, from Python 3 writers of protocol 2, bytes rebuilt by _codecs.encode. Nothing that can run code.
_ARRAY_GLOBALS = {(m, n) for p in ("numpy.core", "numpy._core")
                  for m, n in ((f"{p}.multiarray", "_reconstruct"), (f"{p}.multiarray", "scalar"),
                               (f"{p}.numeric", "_frombuffer"))}
CIFAR_PICKLE_GLOBALS = frozenset(_ARRAY_GLOBALS | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")})


def _get(d: dict, key: str, path: Path):
    # the official files were pickled by Python 2: keys are bytes once loaded with encoding="bytes"
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise ValueError(f"{path} has no {key!r} entry (keys: {sorted(map(str, d))[:8]}); is it a CIFAR-10 python "
                     f"batch file?")


def _unpickle(path: Path) -> dict:
    """A batch file's dict, unpickled with only the globals of numpy arrays allowed (see module docstring)."""
    d = restricted_load(path, CIFAR_PICKLE_GLOBALS, "CIFAR-10 python batch file", encoding="bytes")
    if not isinstance(d, dict):
        raise ValueError(f"{path} holds a {type(d).__name__}, not the dict of a CIFAR-10 python batch file")
    return d


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
        path = folder / name
        d = _unpickle(path)
        data, lab = _get(d, "data", path), _get(d, "labels", path)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got "
                             f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}")
        try:
            lab = torch.as_tensor(np.asarray(lab, dtype=np.int64))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: 'labels' must be a list of integers ({e})") from None
        if lab.shape != (data.shape[0],):
            raise ValueError(f"{path}: {data.shape[0]} images but 'labels' has shape {tuple(lab.shape)}")
        # each row holds the 1024 red, then green, then blue values of a 32x32 image, row-major
        images.append(torch.from_numpy(data).reshape(-1, 3, 32, 32))
        labels.append(lab)
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
        names = _get(meta, "label_names", self.folder / META_FILE)
        if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, (bytes, str)) for n in names):
            raise ValueError(f"{self.folder / META_FILE}: 'label_names' must be a non-empty list of class names")
        self.class_names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]
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
