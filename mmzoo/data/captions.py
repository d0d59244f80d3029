"""Image-text pairs from files: CSV/TSV tables, WebDataset tar shards and COCO-captions JSON.

Three thin data modules, one per format, share the core :class:`CaptionsDataModule`:

* :class:`CsvCaptionsDataModule`: a table with a header row (open_clip's ``--csv-img-key filepath
  --csv-caption-key title`` layout); relative image paths start at the table's folder; an optional label
  column gives class names and zero-shot evaluation.
* :class:`WebDatasetCaptionsDataModule`: uncompressed ``.tar`` shards whose samples are the members
  sharing a key (``000123.jpg`` + ``000123.txt``); ``shards`` is a brace pattern
  (``data/shard-{000000..000009}.tar``) or a list.
* :class:`CocoCaptionsDataModule`: ``captions_train2017.json`` (``images[{id, file_name}]``,
  ``annotations[{image_id, caption}]``) and its image folder.

Each reader turns its source into a list of :class:`CaptionRecord` ``(image, caption, label)``, one per
caption: an image with five captions (COCO, Flickr30k) is five records sharing ``image``. Everything
after that is common:

* **splits** are made over *images*, never captions, so no image is in two splits. A split with a source
  of its own (``val_file``, ``val_shards``, ``val_annotations`` ...) uses it; otherwise ``val_fraction``
  (and ``test_fraction``) of the training images are held out, stratified by label when there is one,
  deterministically from ``seed`` (:func:`mmzoo.data.transforms.stratified_split`). Without a test
  source and with ``test_fraction=0`` the test split is the validation split.
* **training pairs** are one per caption (all captions of an image are used each epoch, as in
  ALBEF/BLIP's COCO recipes), so a COCO epoch is ~5 passes over the images; an image can occasionally
  meet itself as an in-batch negative, which at COCO's size (590k pairs) is rare enough to ignore.
* **evaluation pairs** (val/test loaders): ``eval_pairs="first"`` keeps one pair per image (its first
  caption), so the contrastive task's in-loader retrieval, which pairs text *i* with image *i*, has no
  duplicate images counted as negatives; ``"all"`` keeps every caption (loss on all of them).
* **retrieval** with several captions per image: :meth:`CaptionsDataModule.retrieval_dataloader` serves
  each image of a split once (``{"image", "index", "captions"}``) and
  :meth:`CaptionsDataModule.retrieval_targets` gives every caption of the split with the
  caption -> image map that :func:`mmzoo.tasks.retrieval.retrieval_recall` takes (``text_to_image``).
* **batches** are ``{"image": float (B, 3, S, S), "text": long (B, context_length), "caption":
  list[str]}`` (the format of :mod:`mmzoo.data.shapes_captions`); captions are tokenised in the collate
  function, one call per batch. Training images get a random resized crop (``crop_scale`` (0.9, 1.0),
  open_clip's, and no flip: captions say "left" and "right"); evaluation resizes the shorter side and
  center crops. Normalisation defaults to CLIP's mean/std.
* **bad samples** follow :mod:`mmzoo.data.bad_samples`: at ``setup`` every distinct image's header is
  parsed (``check_files``); missing, empty or non-image files, table rows that are not UTF-8, ragged,
  badly quoted or have an empty image / caption / label (:mod:`mmzoo.data.tables`), shard samples
  without a caption or cut short by a truncated shard, are skipped and counted (``skipped_files``) with
  one warning per split naming the first few; ``strict=True`` raises naming the file (and line / shard
  member). A file whose pixels fail to decode at load time (truncated data) is replaced by the next
  readable pair of the split (image and its caption together) and counted, or raises under ``strict``.
  More than ``max_bad_fraction`` of a split bad stops the run.

WebDataset shards are read **map-style**: ``setup`` walks every shard's tar headers once and keeps, per
sample, the byte offset and size of its image and its caption text; ``__getitem__`` is one seek + read.
This gives the same exact-resume, rank-sharded sampling as every other mmzoo data module and suits sets
up to a few million samples (the index holds a few hundred bytes per caption in memory). Larger sets,
compressed or remote shards: :mod:`mmzoo.data.streaming` reads them as a stream.
"""
from __future__ import annotations

import io
import json
import os
import posixpath
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .bad_samples import DEFAULT_MAX_BAD_FRACTION, BadSampleError, BadSamples, check_fraction
from .base import BaseDataModule, SeededTransformDataset
from .image_folder import ImageFileDataset, UnreadableImageError, _header_error
from .tables import read_table, separator_of
from .tokenizer import DEFAULT_CONTEXT_LENGTH, Tokenizer, TextDataMixin
from .transforms import TransformDataset, build_eval_transform, build_train_transform, stratified_split

# OpenAI CLIP's normalisation (open_clip's OPENAI_DATASET_MEAN / _STD)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# WebDataset members read as the image of a sample, in order of preference; "txt" is the caption
WDS_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
WDS_CAPTION_EXTENSION = "txt"
SPLITS = ("train", "val", "test")
EVAL_PAIRS = ("first", "all")
_SHOWN = 5  # skipped files named in the warning


# ----------------------------------------------------------------------------------------------------
# records and image references
# ----------------------------------------------------------------------------------------------------


class TarMember(NamedTuple):
    """An image stored in an uncompressed tar shard: one seek + read from ``offset``."""

    shard: str
    name: str  # member name inside the shard
    offset: int  # start of the member's data, bytes from the start of the file
    size: int

    def __str__(self) -> str:  # how warnings and errors name it
        return f"{self.shard}:{self.name}"

    def read(self) -> bytes:
        with open(self.shard, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise EOFError(f"the shard ends after {len(data)} of the member's {self.size} bytes")
        return data


ImageRef = Union[str, TarMember]


class CaptionRecord(NamedTuple):
    """One caption of one image; ``label`` is the class name of a labelled table (else None)."""

    image: ImageRef
    caption: str
    label: Optional[str] = None


def _image_error(ref: ImageRef) -> Optional[str]:
    """None when ``ref``'s header parses, else the reason (a missing file included)."""
    if isinstance(ref, str):
        return _header_error(ref)
    try:
        with Image.open(io.BytesIO(ref.read())):
            return None
    except Exception as e:  # PIL raises many types; OSError for an unreadable shard
        return f"{type(e).__name__}: {e}"


class CaptionImageDataset(ImageFileDataset):
    """``(PIL image, target)`` for ``(image reference, target)`` pairs: files or tar members.

    The target travels with its image, so the stand-in for an undecodable image (see
    :class:`~mmzoo.data.image_folder.ImageFileDataset`) is a whole pair and captions stay matched.
    """

    def _load(self, ref: ImageRef) -> Image.Image:
        if isinstance(ref, TarMember):
            with Image.open(io.BytesIO(ref.read())) as im:
                return im.convert(self.mode)
        return super()._load(ref)


class CaptionsCollate:
    """``(image, caption)`` items -> ``{"image", "text", "caption"}``; one tokenizer call per batch."""

    def __init__(self, tokenizer: Tokenizer, context_length: int) -> None:
        self.tokenizer, self.context_length = tokenizer, context_length

    def __call__(self, items: Sequence[tuple]) -> dict[str, Any]:
        images, captions = zip(*items)
        return {"image": torch.stack(images), "text": self.tokenizer(list(captions), self.context_length),
                "caption": list(captions)}


def collate_labelled(items: Sequence[tuple]) -> dict[str, torch.Tensor]:
    images, labels = zip(*items)
    return {"image": torch.stack(images), "label": torch.tensor(labels, dtype=torch.long)}


def collate_retrieval(items: Sequence[tuple]) -> dict[str, Any]:
    images, targets = zip(*items)
    return {"image": torch.stack(images), "index": torch.tensor([i for i, _ in targets], dtype=torch.long),
            "captions": [list(c) for _, c in targets]}


@dataclass
class RetrievalTargets:
    """Every caption of a split, grouped by image, and the maps between captions and images.

    ``images[j]`` is served as index ``j`` by :meth:`CaptionsDataModule.retrieval_dataloader`;
    ``text_to_image`` is the argument of :func:`mmzoo.tasks.retrieval.retrieval_recall`.
    """

    captions: list[str]  # N_txt captions, image-major (all of image 0, then image 1 ...)
    text_to_image: torch.Tensor  # (N_txt,) int64: the image each caption describes
    image_to_text: list[list[int]]  # per image, the indices of its captions in `captions`
    images: list[str]  # per image, its file (or shard:member)


def _group_by_image(records: Sequence[CaptionRecord]) -> dict[ImageRef, list[int]]:
    """Record indices per image, images in first-seen order, captions in record order."""
    groups: dict[ImageRef, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(r.image, []).append(i)
    return groups


# ----------------------------------------------------------------------------------------------------
# the shared data module
# ----------------------------------------------------------------------------------------------------


class CaptionsDataModule(TextDataMixin, BaseDataModule):
    """Image-text pairs for contrastive training; base of the per-format modules (module docstring).

    Subclasses implement ``_read(split)``: the split's records from its own source, or None when it has
    none (then it is carved from train by the fractions). They check their paths in ``__init__``.

    Batches of the train/val/test loaders::

        image   float32 (B, 3, S, S), normalised with ``mean``/``std``
        text    int64 (B, context_length): [SOT] caption [EOT] padding (see mmzoo.data.tokenizer)
        caption list[str]

    Args:
        image_size: side S fed to the model.
        tokenizer: "clip" or a path to a ByteBPETokenizer .json (see :func:`get_tokenizer`).
        context_length: token sequence length (longer captions are cut, ending with EOT).
        mean: normalisation mean per channel (default: CLIP's).
        std: normalisation std per channel (default: CLIP's).
        augment: random resized crop for training (off: evaluation preprocessing).
        crop_scale: area range of the training crop (open_clip: (0.9, 1.0)).
        val_fraction: share of the training images held out for validation when there is no
            validation source.
        test_fraction: share of the training images held out for testing when there is no test source
            (0: the test split is the validation split).
        eval_pairs: "first" (one pair per image: its first caption) or "all" (every caption) in the
            val/test loaders.
        strict: raise on the first bad sample (unreadable image, bad table row, incomplete shard
            sample) instead of skipping and counting it.
        check_files: parse every image's header at setup (off: for very large sets; bad files then only
            show up at load time).
        zeroshot_templates: prompts for zero-shot evaluation of labelled data ("a photo of a {}");
            None: the task's defaults.
        max_bad_fraction: fail when more than this share of a split's samples is bad.

    ``batch_size``, ``num_workers``, ``seed``, ``pin_memory``, ``eval_batch_size``: see :class:`BaseDataModule`.
    """

    in_chans = 3

    def __init__(self, batch_size: int = 64, num_workers: int = 0, seed: int = 0, pin_memory: bool = False,
                 eval_batch_size: Optional[int] = None, image_size: int = 224, tokenizer: str = "clip",
                 context_length: int = DEFAULT_CONTEXT_LENGTH, mean: Sequence[float] = CLIP_MEAN,
                 std: Sequence[float] = CLIP_STD, augment: bool = True,
                 crop_scale: tuple[float, float] = (0.9, 1.0), val_fraction: float = 0.05,
                 test_fraction: float = 0.0, eval_pairs: str = "first", strict: bool = False,
                 check_files: bool = True, zeroshot_templates: Optional[Sequence[str]] = None,
                 max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory, eval_batch_size)
        if image_size < 1:
            raise ValueError(f"data.image_size must be >= 1, got {image_size}")
        if context_length < 2:
            raise ValueError(f"data.context_length must be >= 2 (room for SOT and EOT), got {context_length}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"data.mean/std need 3 values (RGB), got {list(mean)} / {list(std)}")
        if eval_pairs not in EVAL_PAIRS:
            raise ValueError(f"unknown data.eval_pairs {eval_pairs!r}; valid choices: {list(EVAL_PAIRS)}")
        if not 0 <= test_fraction < 1:
            raise ValueError(f"data.test_fraction must be in [0, 1), got {test_fraction}")
        self.image_size = image_size
        self.tokenizer_name = str(tokenizer)
        self.context_length = context_length
        self.mean, self.std = tuple(mean), tuple(std)
        self.augment = augment
        self.crop_scale = tuple(crop_scale)
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.eval_pairs = eval_pairs
        self.strict = strict
        self.check_files = check_files
        self.max_bad_fraction = check_fraction(max_bad_fraction)
        self.zeroshot_templates = None
        if zeroshot_templates:
            from .templates import check_templates
            self.zeroshot_templates = check_templates(list(zeroshot_templates), "data.zeroshot_templates")
        #: every caption of each split after setup (val/test loaders may keep fewer, see eval_pairs)
        self.records: dict[str, list[CaptionRecord]] = {}
        self._extra_sets: dict[tuple[str, str], Dataset] = {}  # zero-shot / retrieval datasets

    def _check_val_fraction(self, has_val_source: bool) -> None:
        """Subclasses call this once they know whether a validation source was given."""
        if not has_val_source and not 0 < self.val_fraction < 1:
            raise ValueError(f"without a validation source data.val_fraction must be in (0, 1), got "
                             f"{self.val_fraction}")

    # -- what models / tasks read -------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        """Sorted labels of labelled data (CSV ``label_key``); empty otherwise (no zero-shot eval)."""
        return []

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # -- reading ------------------------------------------------------------------------------------
    def _read(self, split: str) -> Optional[list[CaptionRecord]]:
        """The records of ``split`` (None: the split has no source of its own); each format overrides it."""
        raise TypeError(f"{type(self).__name__} reads no format: use CsvCaptionsDataModule, "
                        "WebDatasetCaptionsDataModule or CocoCaptionsDataModule")

    def _bad(self, split: str) -> BadSamples:
        """The bad samples of ``split``'s own source (held-out splits count with train)."""
        return self.bad_samples_of(split, self._describe(split), "sample", UnreadableImageError)

    def _check_images(self, records: list[CaptionRecord], bad: BadSamples) -> list[CaptionRecord]:
        if not self.check_files:
            return records
        verdict: dict[ImageRef, Optional[str]] = {}
        kept = []
        for r in records:
            if r.image not in verdict:
                err = verdict[r.image] = _image_error(r.image)
                if err is not None:
                    bad.reject(str(r.image), f"cannot read the image ({err})")
            if verdict[r.image] is None:
                kept.append(r)
        return kept

    def _read_checked(self, split: str) -> Optional[list[CaptionRecord]]:
        """``_read(split)`` with unreadable images dropped; the split's scan is then over (warning, cap)."""
        records = self._read(split)
        if records is None:
            return None
        bad = self._bad(split)
        listed = len(records) + len(bad.scan)  # rows / shard samples rejected while reading count too
        records = self._check_images(records, bad)
        bad.scanned(listed)
        return records

    def _carve(self, train: list[CaptionRecord], fractions: Sequence[float]) -> list[list[CaptionRecord]]:
        """Split ``train`` by image into ``1 + len(fractions)`` parts: the rest, then each fraction."""
        groups = _group_by_image(train)
        keys = list(groups)
        n = len(keys)
        sizes = [max(1, round(f * n)) for f in fractions]
        if n - sum(sizes) < 1:
            raise ValueError(f"{self._describe('train')} has {n} images: too few to hold out fractions "
                             f"{list(fractions)} (data.val_fraction / data.test_fraction)")
        first_label = [train[groups[k][0]].label or "" for k in keys]  # "" for unlabelled data: one class
        index = {name: i for i, name in enumerate(sorted(set(first_label)))}
        labels = [index[name] for name in first_label]
        parts = stratified_split(labels, [n - sum(sizes), *sizes], self.seed)
        return [[train[i] for j in part.tolist() for i in groups[keys[j]]] for part in parts]

    def _describe(self, split: str) -> str:
        """Names the source of a split in messages."""
        return f"the {split} data"

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        train = self._read_checked("train") or []
        if not train:
            raise ValueError(f"{self._describe('train')} has no readable image-caption pairs")
        val, test = (self._read_checked(s) for s in ("val", "test"))
        own = {"val": val is not None, "test": test is not None}
        carve = [f for f, own in ((self.val_fraction, val), (self.test_fraction, test)) if own is None and f > 0]
        if carve:
            train, *held = self._carve(train, carve)
            if val is None:
                val = held.pop(0)
            if test is None and held:
                test = held.pop(0)
        for split, records in (("val", val), ("test", test)):
            if records is not None and not records:
                raise ValueError(f"{self._describe(split)} has no readable image-caption pairs")
        self.records = {"train": train, "val": val, "test": test if test is not None else val}

        eval_tf = build_eval_transform(self.image_size, self.mean, self.std)
        bad = lambda split: self._bad(split if own.get(split) else "train")  # noqa: E731
        train_ds = CaptionImageDataset([(r.image, r.caption) for r in train], "RGB", bad=bad("train"))
        if self.augment:
            # no flip: captions name left and right
            train_tf = build_train_transform(self.image_size, self.mean, self.std, crop="resized",
                                             scale=self.crop_scale, hflip=False)
            self.train_set = SeededTransformDataset(train_ds, train_tf, self.seed)
        else:
            self.train_set = TransformDataset(train_ds, eval_tf)
        self.val_set = TransformDataset(CaptionImageDataset(self._eval_pairs(val), "RGB", bad=bad("val")), eval_tf)
        self.test_set = self.val_set if test is None else \
            TransformDataset(CaptionImageDataset(self._eval_pairs(test), "RGB", bad=bad("test")), eval_tf)
        self._extra_sets = {}

    def _eval_pairs(self, records: list[CaptionRecord]) -> list[tuple[ImageRef, str]]:
        if self.eval_pairs == "all":
            return [(r.image, r.caption) for r in records]
        return [(records[idx[0]].image, records[idx[0]].caption) for idx in _group_by_image(records).values()]

    def collate_fn(self) -> Callable:
        return CaptionsCollate(self.tokenizer, self.context_length)

    def _eval_bad(self, split: str) -> BadSamples:
        own = split in self.bad_samples and self.bad_samples[split].listed
        return self._bad(split if own else "train")

    def _split_records(self, split: str) -> list[CaptionRecord]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid choices: {list(SPLITS)}")
        self.setup()
        return self.records[split]

    def _whole_loader(self, dataset: Dataset, collate: Callable) -> DataLoader:
        # not sharded by rank: every rank evaluates the whole (small) set and gets identical numbers,
        # which is what ContrastiveTask's zero-shot evaluation expects
        return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, collate_fn=collate, persistent_workers=False,
                          generator=torch.Generator().manual_seed(self.seed))

    # -- zero-shot classification (labelled data) ---------------------------------------------------
    def zeroshot_dataloader(self, split: str = "test") -> DataLoader:
        """Each image of ``split`` once with its class: ``{"image", "label"}`` batches (label indexes
        ``class_names``), evaluation preprocessing, in order; the whole split on every rank."""
        if not self.class_names:
            raise ValueError(f"{type(self).__name__} has no labels for zero-shot evaluation: give the table a "
                             f"label column and set data.label_key (CSV data only)")
        key = ("zeroshot", split)
        if key not in self._extra_sets:
            records = self._split_records(split)
            index = {name: i for i, name in enumerate(self.class_names)}
            samples = [(records[idx[0]].image, index[records[idx[0]].label])
                       for idx in _group_by_image(records).values()]
            self._extra_sets[key] = TransformDataset(CaptionImageDataset(samples, "RGB", bad=self._eval_bad(split)),
                                                     build_eval_transform(self.image_size, self.mean, self.std))
        return self._whole_loader(self._extra_sets[key], collate_labelled)

    # -- retrieval with several captions per image --------------------------------------------------
    def retrieval_targets(self, split: str = "test") -> RetrievalTargets:
        """Every caption of ``split`` with the caption <-> image maps for R@K (see :class:`RetrievalTargets`).

        Image ``j`` is the ``j``-th distinct image of the split, the order of :meth:`retrieval_dataloader`.
        """
        records = self._split_records(split)
        captions, text_to_image, image_to_text, images = [], [], [], []
        for j, (image, idx) in enumerate(_group_by_image(records).items()):
            image_to_text.append(list(range(len(captions), len(captions) + len(idx))))
            captions += [records[i].caption for i in idx]
            text_to_image += [j] * len(idx)
            images.append(str(image))
        return RetrievalTargets(captions, torch.tensor(text_to_image, dtype=torch.long), image_to_text, images)

    def retrieval_dataloader(self, split: str = "test") -> DataLoader:
        """Each image of ``split`` once: ``{"image", "index", "captions"}`` batches in order (``index``:
        position in :meth:`retrieval_targets`; ``captions``: all of that image's captions); the whole split
        on every rank.

        An image that fails to decode at load time (without ``strict``) is replaced by the next readable
        one, which then appears twice; place features by ``index`` (rows never served stay empty).
        """
        key = ("retrieval", split)
        if key not in self._extra_sets:
            records = self._split_records(split)
            samples = [(image, (j, tuple(records[i].caption for i in idx)))
                       for j, (image, idx) in enumerate(_group_by_image(records).items())]
            self._extra_sets[key] = TransformDataset(CaptionImageDataset(samples, "RGB", bad=self._eval_bad(split)),
                                                     build_eval_transform(self.image_size, self.mean, self.std))
        return self._whole_loader(self._extra_sets[key], collate_retrieval)


# ----------------------------------------------------------------------------------------------------
# CSV / TSV
# ----------------------------------------------------------------------------------------------------

_SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}


def _separator(path: Path, separator: Optional[str]) -> str:
    return separator_of(path, separator, _SEPARATORS)


def read_caption_table(path: Union[str, Path], img_key: str = "filepath", caption_key: str = "title",
                       label_key: Optional[str] = None, separator: Optional[str] = None,
                       image_root: Optional[Union[str, Path]] = None,
                       bad: Optional[BadSamples] = None) -> list[CaptionRecord]:
    """Records of a CSV/TSV with a header row; relative image paths are resolved against ``image_root``
    (default: the table's folder). Standard ``csv`` quoting (what ``csv.writer`` and pandas write).

    Rows that are not UTF-8, ragged, badly quoted or have an empty image, caption or label go to ``bad``
    (skipped and counted, or raised naming the line; default: a non-strict policy of its own)."""
    path = Path(path).expanduser()
    sep = _separator(path, separator)
    root = Path(image_root).expanduser() if image_root is not None else path.parent
    columns = {img_key: "data.img_key", caption_key: "data.caption_key"}
    if label_key is not None:
        columns[label_key] = "data.label_key"
    own = bad is None
    if own:
        bad = BadSamples(f"table {path}", what="row", error=BadSampleError)
    rows = read_table(path, sep, columns, bad, required=list(columns))
    records = []
    for _, row in rows:
        file = Path(row[img_key]).expanduser()
        label = row[label_key].strip() if label_key is not None else None
        records.append(CaptionRecord(os.path.normpath(file if file.is_absolute() else root / file),
                                     row[caption_key].strip(), label))
    if own:
        bad.scanned(len(rows) + len(bad.scan))
    return records


class CsvCaptionsDataModule(CaptionsDataModule):
    """Image-text pairs from CSV/TSV tables with a header row (open_clip's layout)::

        filepath,title
        images/0001.jpg,a dog running on the beach

    Args:
        train_file: table of the training pairs (and of val/test when those are held out by fraction).
        val_file: table of the validation pairs (optional).
        test_file: table of the test pairs (optional).
        img_key: column name of the image path (open_clip's ``--csv-img-key``).
        caption_key: column name of the caption (open_clip's ``--csv-caption-key``).
        label_key: optional class column (an ImageFolder turned into captions by
            ``data_scripts/prepare_captions.py labelled``): gives ``class_names`` (sorted) and
            :meth:`zeroshot_dataloader`, and stratifies held-out splits.
        separator: column separator; default from the extension (.csv: ',', .tsv/.tab: tab).
        image_root: folder relative image paths start from (default: each table's own folder).
        **kwargs: options of :class:`CaptionsDataModule` (image_size, tokenizer, batch_size ...).
    """

    def __init__(self, train_file: Union[str, Path], val_file: Optional[Union[str, Path]] = None,
                 test_file: Optional[Union[str, Path]] = None, img_key: str = "filepath",
                 caption_key: str = "title", label_key: Optional[str] = None, separator: Optional[str] = None,
                 image_root: Optional[Union[str, Path]] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.files: dict[str, Optional[Path]] = {}
        for split, file in (("train", train_file), ("val", val_file), ("test", test_file)):
            if file is not None:
                file = Path(file).expanduser()
                if not file.is_file():
                    raise FileNotFoundError(f"data.{split}_file {file} does not exist (a CSV/TSV with a header row "
                                            f"holding the columns {img_key!r} and {caption_key!r})")
                _separator(file, separator)  # fail now on an unknown extension
            self.files[split] = file
        self._check_val_fraction(val_file is not None)
        self.img_key, self.caption_key, self.label_key = img_key, caption_key, label_key
        self.separator, self.image_root = separator, image_root
        self._tables: dict[str, list[CaptionRecord]] = {}
        self._tables_read: set[str] = set()
        self._class_names: Optional[list[str]] = None

    def _table(self, split: str) -> Optional[list[CaptionRecord]]:
        file = self.files[split]
        if file is None:
            return None
        if split not in self._tables:
            # a second reading (class names asked for after setup) must not count its bad rows twice
            bad = BadSamples(str(file), max_fraction=1.0) if split in self._tables_read else self._bad(split)
            self._tables[split] = read_caption_table(file, self.img_key, self.caption_key, self.label_key,
                                                     self.separator, self.image_root, bad)
            self._tables_read.add(split)
        return self._tables[split]

    @property
    def class_names(self) -> list[str]:
        if self.label_key is None:
            return []
        if self._class_names is None:  # read at first use (models read it at build time), cached
            self._class_names = sorted({r.label for s in SPLITS for r in self._table(s) or ()})
        return self._class_names

    def _read(self, split: str) -> Optional[list[CaptionRecord]]:
        records = self._table(split)
        self._tables.pop(split, None)  # the data module keeps its own copy in self.records
        return records

    def _describe(self, split: str) -> str:
        file = self.files.get(split)
        return f"data.{split}_file {file}" if file is not None else f"the {split} split held out of data.train_file"


# ----------------------------------------------------------------------------------------------------
# WebDataset tar shards
# ----------------------------------------------------------------------------------------------------

_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """``"shard-{000..002}.tar"`` -> shard-000.tar, shard-001.tar, shard-002.tar; ``"{a,b}"`` -> a, b.

    Ranges keep the zero padding of their first bound; several braces expand left to right (as
    ``braceexpand``, which webdataset uses, for these two forms).
    """
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body = m.group(1)
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        a, b = rng.groups()
        if int(a) > int(b):
            raise ValueError(f"descending range {{{body}}} in shard pattern {pattern!r}")
        width = len(a) if len(a) > 1 and a.startswith("0") else 0
        options = [str(i).zfill(width) for i in range(int(a), int(b) + 1)]
    elif "," in body:
        options = body.split(",")
    else:
        raise ValueError(f"unsupported brace expression {{{body}}} in shard pattern {pattern!r}; use a range "
                         f"{{000000..000009}} or a list {{a,b}}")
    tails = expand_braces(pattern[m.end():])
    return [pattern[: m.start()] + o + t for o in options for t in tails]


def _shard_list(spec: Union[str, Sequence[str]], key: str) -> list[str]:
    patterns = [spec] if isinstance(spec, (str, Path)) else list(spec)
    shards = [os.path.expanduser(s) for p in patterns for s in expand_braces(str(p))]
    if not shards:
        raise ValueError(f"data.{key} names no shard")
    missing = [s for s in shards if not os.path.isfile(s)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of the {len(shards)} shards of data.{key} do not exist: "
                                f"{', '.join(missing[:_SHOWN])}{' ...' if len(missing) > _SHOWN else ''}")
    return shards


def index_shard(path: str, caption_lines: bool = False
                ) -> tuple[list[CaptionRecord], list[tuple[str, str]], int]:
    """Records of one uncompressed tar shard, in member order.

    A sample is the members sharing a key (the member name up to the first '.' of its base name, as in
    webdataset): its image (``WDS_IMAGE_EXTENSIONS``, first found) and its caption ``.txt`` (UTF-8).
    ``caption_lines``: each non-empty line of the ``.txt`` is a separate caption of the image.

    Returns the records, the ``(sample, reason)`` of bad samples (an image or a caption but not both, a
    caption that is empty or not UTF-8, a member cut short), and the number of single captions that hold
    a line break (a hint that ``caption_lines`` is wanted). A shard that is truncated or corrupt part-way
    keeps the samples before the damage; the damage itself is one bad sample naming the shard.
    """
    size = os.path.getsize(path)
    try:
        tar = tarfile.open(path, "r:")  # "r:" only: compressed shards cannot be read by offset
    except tarfile.TarError as e:
        raise ValueError(f"cannot read shard {path} as an uncompressed tar ({e}); mmzoo indexes .tar shards "
                         f"by byte offset, so compressed (.tar.gz) shards are not supported") from e
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    records, bad, multiline = [], [], 0
    damaged: set[str] = set()  # sample keys with a member cut short (reported once, as that member)
    with tar:
        last, error = "the start", None
        try:
            for m in tar:
                last = repr(m.name)
                if not m.isfile():
                    continue
                folder, base = posixpath.split(m.name)
                stem, dot, ext = base.partition(".")
                key = posixpath.join(folder, stem)
                if m.offset_data + m.size > size:  # the header claims more than the shard holds
                    bad.append((f"{path}:{m.name}", f"member of {m.size} bytes cut short: the shard ends "
                                                    f"{m.offset_data + m.size - size} bytes early"))
                    damaged.add(key)
                    continue
                if not dot or not stem:  # no extension, or a hidden file
                    continue
                samples.setdefault(key, {})[ext.lower()] = m
            # tarfile ends quietly at a header cut short; a complete shard ends with zero blocks
            with open(path, "rb") as f:
                f.seek(tar.offset)
                tail = f.read(2 * tarfile.BLOCKSIZE)
            if len(tail) < 2 * tarfile.BLOCKSIZE or any(tail):
                error = f"no end-of-archive blocks after member {last}: it was cut short or overwritten"
        except (tarfile.TarError, EOFError, OSError) as e:
            error = f"unreadable after member {last} ({type(e).__name__}: {e})"
        if error and not damaged:
            bad.append((path, f"the shard is truncated or corrupt: {error}; the samples before it are kept"))
        for key, files in samples.items():
            image = next((files[e] for e in WDS_IMAGE_EXTENSIONS if e in files), None)
            text = files.get(WDS_CAPTION_EXTENSION)
            if image is None or text is None:
                if (image is not None or text is not None) and key not in damaged:
                    missing = f"no caption .{WDS_CAPTION_EXTENSION}" if text is None else \
                        f"no image ({', '.join('.' + e for e in WDS_IMAGE_EXTENSIONS)})"
                    bad.append((f"{path}:{key}", missing))
                continue
            try:
                raw = tar.extractfile(text).read().decode("utf-8")
            except UnicodeDecodeError as e:
                bad.append((f"{path}:{text.name}", f"caption is not UTF-8: {e}"))
                continue
            except (tarfile.TarError, EOFError, OSError) as e:
                bad.append((f"{path}:{text.name}", f"caption cannot be read ({type(e).__name__}: {e})"))
                continue
            if caption_lines:
                captions = [line.strip() for line in raw.splitlines() if line.strip()]
            else:
                captions = [raw.strip()] if raw.strip() else []
                multiline += "\n" in raw.strip()
            if not captions:
                bad.append((f"{path}:{text.name}", "empty caption"))
                continue
            ref = TarMember(path, image.name, image.offset_data, image.size)
            records += [CaptionRecord(ref, c) for c in captions]
    return records, bad, multiline


class WebDatasetCaptionsDataModule(CaptionsDataModule):
    """Image-text pairs from WebDataset tar shards (``000123.jpg`` + ``000123.txt`` per sample),
    indexed once at setup and read map-style (see the module docstring).

    Samples with an image but no caption (or the reverse), an empty or non-UTF-8 caption, or cut short by
    a truncated shard are skipped and counted like unreadable images (``strict`` raises naming the shard
    and member).

    Args:
        shards: training shards: a brace pattern (``"data/shard-{000000..000009}.tar"``) or a list of
            paths / patterns.
        val_shards: shards of the validation pairs (optional).
        test_shards: shards of the test pairs (optional).
        caption_lines: each non-empty line of a ``.txt`` is one caption of the image (shards written by
            ``data_scripts/prepare_captions.py`` from COCO / Flickr30k hold all captions of an image).
        **kwargs: options of :class:`CaptionsDataModule` (image_size, tokenizer, batch_size ...).
    """

    def __init__(self, shards: Union[str, Sequence[str]], val_shards: Optional[Union[str, Sequence[str]]] = None,
                 test_shards: Optional[Union[str, Sequence[str]]] = None, caption_lines: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shards: dict[str, Optional[list[str]]] = {
            "train": _shard_list(shards, "shards"),
            "val": _shard_list(val_shards, "val_shards") if val_shards is not None else None,
            "test": _shard_list(test_shards, "test_shards") if test_shards is not None else None,
        }
        self._check_val_fraction(val_shards is not None)
        self.caption_lines = caption_lines

    def _read(self, split: str) -> Optional[list[CaptionRecord]]:
        shards = self.shards[split]
        if shards is None:
            return None
        records, multiline = [], 0
        bad = self._bad(split)
        for shard in shards:
            recs, broken, ml = index_shard(shard, self.caption_lines)
            for name, why in broken:
                bad.reject(name, why)
            records += recs
            multiline += ml
        if multiline:
            rank_zero_warn(f"{multiline} caption(s) of data.{self._key(split)} hold line breaks; if each line is a "
                           f"separate caption (shards written by prepare_captions.py from COCO / Flickr30k), set "
                           f"data.caption_lines=true")
        return records

    @staticmethod
    def _key(split: str) -> str:
        return "shards" if split == "train" else f"{split}_shards"

    def _describe(self, split: str) -> str:
        shards = self.shards.get(split)
        if shards is None:
            return f"the {split} split held out of data.shards"
        return f"the {len(shards)} shard(s) {shards[0]} ... of data.{self._key(split)}"


# ----------------------------------------------------------------------------------------------------
# COCO captions JSON
# ----------------------------------------------------------------------------------------------------


def read_coco_captions(annotations: Union[str, Path], images: Union[str, Path],
                       bad: Optional[BadSamples] = None) -> list[CaptionRecord]:
    """Records of a ``captions_*.json`` (images in file order, each image's captions in annotation order);
    ``file_name`` is resolved against the ``images`` folder. Images without captions are left out.

    Entries without their fields, with an empty caption, or an annotation of an unknown image go to
    ``bad`` (skipped and counted, or raised naming the entry; default: a non-strict policy of its own)."""
    annotations = Path(annotations).expanduser()
    try:
        data = json.loads(annotations.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{annotations} is not UTF-8 text (byte {e.start}); a COCO captions file is UTF-8 JSON") \
            from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{annotations}, line {e.lineno} column {e.colno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{annotations} is not a COCO captions file: expected a JSON object with 'images' "
                         f"[{{id, file_name}}] and 'annotations' [{{image_id, caption}}]")
    own = bad is None
    if own:
        bad = BadSamples(f"COCO captions {annotations}", what="entry", error=BadSampleError)
    files = {}
    for k, im in enumerate(data["images"]):
        ok = isinstance(im, dict) and isinstance(im.get("file_name"), str) and im["file_name"].strip() \
            and isinstance(im.get("id"), (int, str))
        if not ok:
            bad.reject(f"{annotations}: images[{k}]", "needs an 'id' and a non-empty 'file_name'")
            continue
        files[im["id"]] = os.path.join(os.path.expanduser(str(images)), im["file_name"])
    captions: dict[Any, list[str]] = {i: [] for i in files}
    for k, ann in enumerate(data["annotations"]):
        name = f"{annotations}: annotations[{k}]" + (f" (id {ann.get('id')})" if isinstance(ann, dict) else "")
        if not isinstance(ann, dict) or not isinstance(ann.get("image_id"), (int, str)) \
                or not isinstance(ann.get("caption"), str):
            bad.reject(name, "needs an 'image_id' and a 'caption' string")
        elif ann["image_id"] not in captions:
            bad.reject(name, f"refers to image_id {ann['image_id']!r}, which is not in 'images'")
        elif not ann["caption"].strip():
            bad.reject(name, "empty caption")
        else:
            captions[ann["image_id"]].append(ann["caption"].strip())
    if own:
        bad.scanned(len(data["images"]) + len(data["annotations"]))
    return [CaptionRecord(files[i], c) for i in files for c in captions[i]]


class CocoCaptionsDataModule(CaptionsDataModule):
    """Image-text pairs from COCO-captions JSON files (``annotations/captions_train2017.json`` with
    ``train2017/``): one training pair per caption (~5 per image); :meth:`retrieval_targets` and
    :meth:`retrieval_dataloader` give the 5-captions-per-image retrieval evaluation.

    Args:
        train_annotations: training captions JSON.
        train_images: the folder of its ``file_name``s.
        val_annotations: validation captions JSON (optional; ``captions_val2017.json``).
        val_images: their image folder (``val2017/``).
        test_annotations: test captions JSON (optional, e.g. a Karpathy test split in COCO layout).
        test_images: their image folder.
        **kwargs: options of :class:`CaptionsDataModule` (image_size, tokenizer, batch_size ...).
    """

    def __init__(self, train_annotations: Union[str, Path], train_images: Union[str, Path],
                 val_annotations: Optional[Union[str, Path]] = None, val_images: Optional[Union[str, Path]] = None,
                 test_annotations: Optional[Union[str, Path]] = None,
                 test_images: Optional[Union[str, Path]] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sources: dict[str, Optional[tuple[Path, Path]]] = {}
        for split, ann, img in (("train", train_annotations, train_images), ("val", val_annotations, val_images),
                                ("test", test_annotations, test_images)):
            if (ann is None) != (img is None):
                raise ValueError(f"set both data.{split}_annotations and data.{split}_images, or neither")
            if ann is not None:
                ann, img = Path(ann).expanduser(), Path(img).expanduser()
                if not ann.is_file():
                    raise FileNotFoundError(f"data.{split}_annotations {ann} does not exist (a COCO captions "
                                            f"JSON such as annotations/captions_{split}2017.json)")
                if not img.is_dir():
                    raise FileNotFoundError(f"data.{split}_images {img} is not a folder (the images named by "
                                            f"{ann.name})")
                self.sources[split] = (ann, img)
            else:
                self.sources[split] = None
        self._check_val_fraction(val_annotations is not None)

    def _read(self, split: str) -> Optional[list[CaptionRecord]]:
        source = self.sources[split]
        return read_coco_captions(*source, bad=self._bad(split)) if source is not None else None

    def _describe(self, split: str) -> str:
        source = self.sources.get(split)
        return f"data.{split}_annotations {source[0]}" if source else \
            f"the {split} split held out of data.train_annotations"
