"""Any folder of labelled images: ``root/{train,val,test}/<class>/<image>``.

Unreadable files are handled in two places, chosen for cost:

* **at scan** (``setup``), every file's header is parsed with ``PIL.Image.open`` (a few hundred bytes, no
  pixel decode). This catches what usually goes wrong - empty files, interrupted downloads, HTML error
  pages saved as ``.jpg``, wrong extensions - before training starts, so they can be skipped and counted
  once. ``Image.verify()`` was rejected: it reads every file in full at every start and, for JPEG, checks
  no more than the header does. ``check_files=False`` skips this pass for very large trees.
* **at load**, a file whose header is fine but whose pixels do not decode (truncated data) raises with
  ``strict=True``; otherwise the next readable sample of the split stands in (deterministic, so resume
  stays exact), a warning names it and it counts as skipped.

Both follow :mod:`mmzoo.data.bad_samples`: skipped files are counted (``num_skipped``) and the run stops
once more than ``max_bad_fraction`` of a split is bad.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

from PIL import Image

from .bad_samples import DEFAULT_MAX_BAD_FRACTION, BadSampleError, BadSamples, SkippingDataset, check_fraction
from .base import ImageClassificationDataModule, SeededTransformDataset
from .transforms import IMAGENET_GREY_MEAN, IMAGENET_GREY_STD, IMAGENET_MEAN, IMAGENET_STD, TransformDataset, \
    build_eval_transform, build_train_transform, stratified_split

IMG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
LAYOUT = "<root>/train/<class>/<image>, optional <root>/val/<class>/<image> and <root>/test/<class>/<image>"


class UnreadableImageError(BadSampleError):
    """An image file that PIL cannot open or decode (raised with ``strict=True``)."""


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _list_images(split_dir: Path, class_names: Sequence[str]) -> list[tuple[str, int]]:
    """(path, label) of every image file below each class folder, in a sorted, reproducible order."""
    samples = []
    for label, name in enumerate(class_names):
        for dirpath, _, filenames in sorted(os.walk(split_dir / name, followlinks=True)):
            samples += [(os.path.join(dirpath, f), label) for f in sorted(filenames)
                        if f.lower().endswith(IMG_EXTENSIONS) and not f.startswith(".")]
    return samples


def _header_error(path: str) -> Optional[str]:
    try:
        with Image.open(path):
            return None
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, SyntaxError, struct.error...)
        return f"{type(e).__name__}: {e}"


class ImageFileDataset(SkippingDataset):
    """``(PIL image, label)`` for a list of ``(path, label)``; see the module docstring for bad files.

    Args:
        samples: (path, label) pairs.
        mode: PIL mode to convert to ("RGB" or "L").
        strict: raise :class:`UnreadableImageError` on a file that fails to decode instead of substituting
            (when no ``bad`` policy is given).
        bad: the split's :class:`~mmzoo.data.bad_samples.BadSamples` (strictness, cap, counts).
    """

    def __init__(self, samples: Sequence[tuple[str, int]], mode: str = "RGB", strict: bool = False,
                 bad: Optional[BadSamples] = None) -> None:
        self.samples = list(samples)
        self.mode = mode
        self.strict = bad.strict if bad is not None else strict
        self.attach(bad, "these images", strict, UnreadableImageError, "image")

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, path: str) -> Image.Image:
        with Image.open(path) as im:
            return im.convert(self.mode)  # convert() decodes: truncated pixel data fails here

    def load(self, index: int):
        path, label = self.samples[index]
        return self._load(path), label

    def sample_name(self, index: int) -> str:
        return str(self.samples[index][0])


class ImageFolderDataModule(ImageClassificationDataModule):
    """Image classification from a folder tree (``root/train/<class>/<image>`` ...).

    Without ``root/val`` a stratified ``val_fraction`` of train (from ``seed``) is held out; without
    ``root/test`` the test split is the validation split. Classes are the sorted folder names of
    ``root/train``. Images are decoded by PIL, resized (shorter side) and center cropped for evaluation;
    training uses a random resized crop (``crop_scale``) and a horizontal flip.

    Args:
        root: dataset folder.
        image_size: side fed to the model.
        in_chans: 3 (RGB) or 1 (grey).
        val_fraction: share of train held out when there is no ``val`` folder.
        mean: normalisation mean per channel (default: ImageNet's, averaged over RGB for one channel).
        std: normalisation std per channel (default: as ``mean``).
        augment: random crop + flip for training (off: evaluation preprocessing).
        crop_scale: area range of the random resized crop.
        strict: raise on an unreadable image instead of skipping it.
        check_files: parse every file's header at setup (see the module docstring).
        max_bad_fraction: fail when more than this share of a split's images is unreadable.

    ``batch_size``, ``num_workers``, ``seed``, ``pin_memory``, ``eval_batch_size``: see :class:`BaseDataModule`.
    """

    def __init__(self, batch_size: int = 64, num_workers: int = 0, seed: int = 0, pin_memory: bool = False,
                 eval_batch_size: Optional[int] = None, root: Union[str, Path] = "data/images",
                 image_size: int = 224, in_chans: int = 3, val_fraction: float = 0.1,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 augment: bool = True, crop_scale: tuple[float, float] = (0.6, 1.0), strict: bool = False,
                 check_files: bool = True, max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory, eval_batch_size)
        if in_chans not in (1, 3):
            raise ValueError(f"data.in_chans must be 1 (grey) or 3 (RGB), got {in_chans}")
        self.root = Path(root).expanduser()
        train_dir = self.root / "train"
        for folder, what in ((self.root, "dataset root"), (train_dir, "training folder")):
            if not folder.is_dir():
                raise FileNotFoundError(f"{what} {folder} does not exist; expected the layout {LAYOUT}")
        self.class_names = _class_dirs(train_dir)
        if not self.class_names:
            raise FileNotFoundError(f"no class folders in {train_dir}; expected the layout {LAYOUT}")
        for split in ("val", "test"):
            if (self.root / split).is_dir():
                other = _class_dirs(self.root / split)
                if other != self.class_names:
                    only_train = sorted(set(self.class_names) - set(other))
                    only_other = sorted(set(other) - set(self.class_names))
                    raise ValueError(f"class folders of {self.root / split} differ from {train_dir}: only in "
                                     f"train: {only_train}, only in {split}: {only_other}")
        if not (self.root / "val").is_dir() and not 0 < val_fraction < 1:
            raise ValueError(f"{self.root} has no val folder, so data.val_fraction must be in (0, 1), "
                             f"got {val_fraction}")
        self.image_size = image_size
        self.in_chans = in_chans
        self.val_fraction = val_fraction
        grey = in_chans == 1
        self.mean = tuple(mean) if mean is not None else (IMAGENET_GREY_MEAN if grey else IMAGENET_MEAN)
        self.std = tuple(std) if std is not None else (IMAGENET_GREY_STD if grey else IMAGENET_STD)
        if len(self.mean) != in_chans or len(self.std) != in_chans:
            raise ValueError(f"data.mean/std need {in_chans} values, got {list(self.mean)} / {list(self.std)}")
        self.augment = augment
        self.crop_scale = tuple(crop_scale)
        self.strict = strict
        self.check_files = check_files
        self.max_bad_fraction = check_fraction(max_bad_fraction)

    def _bad(self, split: str) -> BadSamples:
        return self.bad_samples_of(split, f"{self.root / split}", "image", UnreadableImageError)

    def _scan(self, split: str) -> list[tuple[str, int]]:
        samples = _list_images(self.root / split, self.class_names)
        if self.check_files:
            bad, good = self._bad(split), []
            for path, label in samples:
                err = _header_error(path)
                if err is None:
                    good.append((path, label))
                else:
                    bad.reject(path, err)
            bad.scanned(len(samples))
            samples = good
        return samples

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        self.bad_samples = {}
        train = self._scan("train")
        empty = sorted(set(self.class_names) - {self.class_names[y] for _, y in train})
        if empty:
            raise FileNotFoundError(f"no readable images ({', '.join(IMG_EXTENSIONS)}) for classes {empty} in "
                                    f"{self.root / 'train'}")
        if (self.root / "val").is_dir():
            val = self._scan("val")
        else:
            n_val = max(1, round(self.val_fraction * len(train)))
            if n_val >= len(train):
                raise ValueError(f"{self.root / 'train'} has {len(train)} images: too few to hold out "
                                 f"data.val_fraction={self.val_fraction} for validation")
            train_idx, val_idx = stratified_split([y for _, y in train], [len(train) - n_val, n_val], self.seed)
            train, val = [train[i] for i in train_idx.tolist()], [train[i] for i in val_idx.tolist()]
        test = self._scan("test") if (self.root / "test").is_dir() else None

        mode = "L" if self.in_chans == 1 else "RGB"
        eval_tf = build_eval_transform(self.image_size, self.mean, self.std)
        has_val = (self.root / "val").is_dir()
        train = ImageFileDataset(train, mode, bad=self._bad("train"))
        if self.augment:
            train_tf = build_train_transform(self.image_size, self.mean, self.std, crop="resized",
                                             scale=self.crop_scale)
            self.train_set = SeededTransformDataset(train, train_tf, self.seed)
        else:
            self.train_set = TransformDataset(train, eval_tf)
        # a validation split held out of train shares train's count and cap
        self.val_set = TransformDataset(ImageFileDataset(val, mode, bad=self._bad("val" if has_val else "train")),
                                        eval_tf)
        self.test_set = TransformDataset(ImageFileDataset(test, mode, bad=self._bad("test")), eval_tf) \
            if test is not None else self.val_set
