"""Built-in procedural image-text data: scenes of 1-3 coloured shapes with generated captions.

No files, no download: sample ``i`` of a split is a pure function of ``(seed, split, i)``. Each scene
places up to ``max_objects`` objects in distinct cells of a 3x3 grid; every object has a colour
(`COLOURS`), a shape (the 8 shapes of :mod:`mmzoo.data.shapes`, drawn with its signed distance
fields), a size (`SIZES`) and a position (its cell, `POSITIONS`). A caption lists the objects in order,
always with colour and shape, sometimes with size, position or a relation::

    a red square
    a photo of a small cyan star in the top left
    a large blue frame and a small yellow triangle on the right
    there is a green ring, a cyan cross and a purple crescent
    a purple star to the left of a yellow circle

The first object named is the *primary* object; its colour-shape pair is the sample's ``label``
(an index into `class_names`, colour-major: ``colour * len(SHAPES) + shape``).

Compositional zero-shot split: the colour-shape pairs of `HELDOUT_PAIRS` (10 of the 48, ~21%) never
occur in a training image or caption. Every colour still appears in training with >= 6 shapes and every
shape with >= 4 colours. In val/test, odd indices are *held-out* scenes (the primary object has a
held-out pair, the other objects have seen pairs) and even indices are seen scenes (only seen pairs), so
``heldout`` means both "the label is a held-out class" and "the caption contains a novel
composition", and the two groups are exactly balanced.

Zero-shot classification (`ShapesCaptionsDataModule.zeroshot_dataloader`): single-object images from
the same renderer, labels cycling through all 48 classes, scored against text prompts made from
`ZEROSHOT_TEMPLATES` and `class_names` (`ShapesCaptionsDataModule.zeroshot_prompts`).
"""
from __future__ import annotations

import functools
import math
import random
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .base import BaseDataModule, sample_seed
from .shapes import CLASS_NAMES as SHAPES
from .shapes import MEAN, STD, _sdf_unit
from .tokenizer import ByteBPETokenizer, Tokenizer, TextDataMixin

# six hues 60 degrees apart on the colour wheel; no colour or shape starts with a vowel, so "a {}" is
# always grammatical. Each RGB has one channel <= 0.15 and one >= 0.75: any grey background differs from
# it by >= 0.3 in some channel (the background grey level is drawn from [0.15, 0.85]).
COLOURS = ("red", "yellow", "green", "cyan", "blue", "purple")
COLOUR_RGB = {
    "red": (0.90, 0.10, 0.10),
    "yellow": (0.95, 0.85, 0.10),
    "green": (0.10, 0.75, 0.15),
    "cyan": (0.10, 0.85, 0.90),
    "blue": (0.15, 0.25, 0.95),
    "purple": (0.60, 0.15, 0.85),
}
SIZES = ("small", "large")
# circumradius of each size, in units of the half image side; a grid cell's half side is 1/3 and the
# farthest point of any shape is 1.13 r (a rotated square's corner), so a large object stays in its cell
SIZE_RADIUS = (0.17, 0.29)
# 3x3 grid cells, row-major (cell = 3 * row + column), as caption phrases
POSITIONS = ("in the top left", "at the top", "in the top right",
             "on the left", "in the center", "on the right",
             "in the bottom left", "at the bottom", "in the bottom right")

# Never in training. Chosen by the rule (colour index + shape index) % 5 == 0, which takes 1-2 shapes
# from every colour and 1-2 colours from every shape.
HELDOUT_PAIRS = (
    ("red", "circle"), ("red", "cross"),
    ("yellow", "triangle"),
    ("green", "frame"),
    ("cyan", "square"), ("cyan", "crescent"),
    ("blue", "ring"), ("blue", "star"),
    ("purple", "circle"), ("purple", "cross"),
)

# Prompts for zero-shot classification, filled with a class name ("red circle"). They reuse the
# caption openers of the training data: a text tower trained from scratch on these captions has never
# seen other words (CLIP's "a photo of a {}." habit works here because "a photo of" is an opener).
ZEROSHOT_TEMPLATES = (
    "a {}",
    "a photo of a {}",
    "a picture of a {}",
    "an image of a {}",
    "there is a {}",
    "a {} on a plain background",
)
_OPENERS = ("", "a photo of ", "a picture of ", "an image of ", "there is ")

SPLITS = ("train", "val", "test")
# stream ids for sample_seed: distinct from shapes.py's 1/2/3 so that the two data sets are unrelated
_STREAMS = {("captions", "train"): 11, ("captions", "val"): 12, ("captions", "test"): 13,
            ("zeroshot", "val"): 22, ("zeroshot", "test"): 23}
_NUM_GRID = 3


def _pair_index(colour: int, shape: int) -> int:
    return colour * len(SHAPES) + shape


CLASS_NAMES = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)  # label -> "red circle" (colour-major)
HELDOUT_CLASSES = tuple(sorted(_pair_index(COLOURS.index(c), SHAPES.index(s)) for c, s in HELDOUT_PAIRS))
SEEN_CLASSES = tuple(i for i in range(len(CLASS_NAMES)) if i not in HELDOUT_CLASSES)


# ----------------------------------------------------------------------------------------------------
# scenes
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneObject:
    """One object: discrete attributes (named in captions) and the continuous ones (only drawn)."""

    colour: int  # index into COLOURS
    shape: int  # index into SHAPES
    size: int  # index into SIZES
    cell: int  # index into POSITIONS (3 * row + column)
    cx: float  # centre, in [-1, 1] image coordinates (x right, y down)
    cy: float
    radius: float  # circumradius, units of the half image side
    theta: float  # rotation, radians
    shape_arg: float  # a shape's free parameter (ring thickness ...), [0, 1)
    rgb: tuple[float, float, float]

    @property
    def label(self) -> int:
        return _pair_index(self.colour, self.shape)

    @property
    def name(self) -> str:
        return CLASS_NAMES[self.label]


@dataclass(frozen=True)
class Scene:
    """A sample's content: ``objects[0]`` is the primary object (named first in ``caption``)."""

    objects: tuple[SceneObject, ...]
    caption: str
    background: tuple[float, ...]  # grey level, saturation, tint r g b, gradient angle, amplitude, noise std

    @property
    def label(self) -> int:
        return self.objects[0].label

    @property
    def heldout(self) -> bool:
        return any(o.label in HELDOUT_CLASSES for o in self.objects)


def _sample_object(rng: random.Random, label: int, cell: int) -> SceneObject:
    colour, shape = divmod(label, len(SHAPES))
    size = rng.randrange(len(SIZES))
    radius = SIZE_RADIUS[size] * rng.uniform(0.9, 1.1)
    row, col = divmod(cell, _NUM_GRID)
    jitter = max(0.0, 1 / 3 - 1.13 * radius)  # stay inside the cell
    cx = (2 * col + 1) / _NUM_GRID - 1 + rng.uniform(-jitter, jitter)
    cy = (2 * row + 1) / _NUM_GRID - 1 + rng.uniform(-jitter, jitter)
    gain = rng.uniform(0.85, 1.0)
    rgb = tuple(min(1.0, max(0.0, gain * v + rng.uniform(-0.05, 0.05))) for v in COLOUR_RGB[COLOURS[colour]])
    return SceneObject(colour, shape, size, cell, cx, cy, radius, rng.uniform(0, 2 * math.pi), rng.random(), rgb)


def _relation(a: SceneObject, b: SceneObject, rng: random.Random) -> str:
    (ra, ca), (rb, cb) = divmod(a.cell, _NUM_GRID), divmod(b.cell, _NUM_GRID)
    if ca != cb and (ra == rb or rng.random() < 0.5):
        return "to the left of" if ca < cb else "to the right of"
    return "above" if ra < rb else "below"


def make_caption(objects: Sequence[SceneObject], rng: random.Random) -> str:
    """A caption naming every object in order (colour and shape always; size, position sometimes)."""
    with_size, with_position = rng.random() < 0.5, rng.random() < 0.5
    relational = len(objects) == 2 and rng.random() < 0.3
    opener = rng.choice(_OPENERS)
    if len(objects) >= 3 and with_size and with_position:
        opener = ""  # the longest captions stay within 32 CLIP tokens (31 at most with 3 objects)

    def phrase(o: SceneObject, position: bool) -> str:
        size = f"{SIZES[o.size]} " if with_size else ""
        where = f" {POSITIONS[o.cell]}" if position else ""
        return f"a {size}{COLOURS[o.colour]} {SHAPES[o.shape]}{where}"

    if relational:
        a, b = objects
        return f"{opener}{phrase(a, False)} {_relation(a, b, rng)} {phrase(b, False)}"
    parts = [phrase(o, with_position) for o in objects]
    if len(parts) == 1:
        text = parts[0]
        if not with_position and rng.random() < 0.25:
            text += " on a plain background"
    else:
        text = ", ".join(parts[:-1]) + " and " + parts[-1]
    return opener + text


def make_scene(rng: random.Random, labels: Sequence[int]) -> Scene:
    """A scene whose objects have the colour-shape classes ``labels`` (distinct), in random cells."""
    cells = rng.sample(range(_NUM_GRID * _NUM_GRID), len(labels))
    objects = tuple(_sample_object(rng, label, cell) for label, cell in zip(labels, cells))
    background = (rng.uniform(0.15, 0.85), rng.uniform(0.0, 0.12), rng.random(), rng.random(), rng.random(),
                  rng.uniform(0, 2 * math.pi), rng.uniform(0.0, 0.1), rng.uniform(0.0, 0.04))
    return Scene(objects, make_caption(objects, rng), background)


def _draw_distinct(rng: random.Random, pool: Sequence[int], k: int, exclude: Sequence[int] = ()) -> list[int]:
    return rng.sample([c for c in pool if c not in exclude], k)


def sample_scene(seed: int, split: str, index: int, max_objects: int = 3, zeroshot: bool = False) -> Scene:
    """Scene ``index`` of a split: a pure function of its arguments.

    train: every object has a seen pair. val/test: even indices as train, odd indices have a primary
    object with a held-out pair (others seen). zeroshot: one object of class ``index % 48``.
    """
    rng = random.Random(sample_seed(seed, _STREAMS["zeroshot" if zeroshot else "captions", split], index))
    if zeroshot:
        return make_scene(rng, [index % len(CLASS_NAMES)])
    n = rng.randint(1, max_objects)
    primary_pool = HELDOUT_CLASSES if split != "train" and index % 2 == 1 else SEEN_CLASSES
    primary = rng.choice(primary_pool)
    return make_scene(rng, [primary, *_draw_distinct(rng, SEEN_CLASSES, n - 1, exclude=(primary,))])


# ----------------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------------


def render_scenes(scenes: Sequence[Scene], noise: torch.Tensor) -> torch.Tensor:
    """Draw ``scenes`` over grey, slightly tinted gradient backgrounds -> uint8 (B, 3, H, W).

    ``noise`` (B, 3, H, W) is standard normal pixel noise. Objects are composited in order with the
    anti-aliased signed distance fields of :func:`mmzoo.data.shapes._sdf_unit`; each is evaluated only
    on the pixel window around it (objects are small), vectorised over the samples that share a shape.
    """
    B, _, H, W = noise.shape
    bg = torch.tensor([s.background for s in scenes], dtype=torch.float32).T  # (8, B)
    v, sat, tint = bg[0], bg[1], bg[2:5].T  # (B,), (B,), (B, 3)
    tint = tint / tint.amax(1, keepdim=True).clamp_min(1e-3)
    base = v[:, None] * ((1 - sat[:, None]) + sat[:, None] * tint)  # (B, 3) grey with a hint of hue
    ys = (torch.arange(H, dtype=torch.float32) + 0.5) * (2 / H) - 1
    xs = (torch.arange(W, dtype=torch.float32) + 0.5) * (2 / W) - 1
    Y, X = torch.meshgrid(ys, xs, indexing="ij")  # (H, W)
    col = lambda t: t[:, None, None]  # (B,) -> (B, 1, 1)
    gradient = col(bg[6]) * (col(torch.cos(bg[5])) * X + col(torch.sin(bg[5])) * Y)  # (B, H, W)
    img = base[:, :, None, None] + gradient[:, None] + noise * bg[7][:, None, None, None]  # (B, 3, H, W)

    # pixel window that holds any object: its cell's span plus a margin for a centre jitter
    half = int(math.ceil((1.13 * max(SIZE_RADIUS) * 1.1 + 0.05) * H / 2)) + 1
    win = min(2 * half, H), min(2 * half, W)
    for k in range(max(len(s.objects) for s in scenes)):
        rows = [(b, s.objects[k]) for b, s in enumerate(scenes) if len(s.objects) > k]
        idx = torch.tensor([b for b, _ in rows])
        o = torch.tensor([[ob.cx, ob.cy, ob.radius, ob.theta, ob.shape_arg, *ob.rgb] for _, ob in rows])  # (n, 8)
        shape = torch.tensor([ob.shape for _, ob in rows])
        # top-left pixel of each object's window, clamped inside the image
        px = ((o[:, 0] + 1) * W / 2).round().long().sub(win[1] // 2).clamp(0, W - win[1])  # (n,)
        py = ((o[:, 1] + 1) * H / 2).round().long().sub(win[0] // 2).clamp(0, H - win[0])
        gy = py[:, None] + torch.arange(win[0])  # (n, h) pixel rows of each window
        gx = px[:, None] + torch.arange(win[1])  # (n, w)
        dx = xs[gx][:, None, :] - o[:, 0, None, None]  # (n, 1, w)
        dy = ys[gy][:, :, None] - o[:, 1, None, None]  # (n, h, 1)
        cos, sin, r = col(torch.cos(o[:, 3])), col(torch.sin(o[:, 3])), col(o[:, 2])
        qx, qy = (cos * dx + sin * dy) / r, (cos * dy - sin * dx) / r  # (n, h, w), shape frame, unit size
        sdf = torch.empty(qx.shape)
        for kind in shape.unique().tolist():
            m = shape == kind
            sdf[m] = _sdf_unit(kind, qx[m], qy[m], col(o[m, 4]))
        # anti-aliased coverage: distance in pixels, +-half a pixel ramps 1 -> 0 (as shapes.py)
        alpha = (0.5 - sdf * r * (H / 2)).clamp(0, 1)[:, None]  # (n, 1, h, w)
        bi = idx[:, None, None, None]
        ci = torch.arange(3)[None, :, None, None]
        yi, xi = gy[:, None, :, None], gx[:, None, None, :]
        region = img[bi, ci, yi, xi]  # (n, 3, h, w)
        img[bi, ci, yi, xi] = region * (1 - alpha) + o[:, 5:8, None, None] * alpha
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


# ----------------------------------------------------------------------------------------------------
# datasets, batches
# ----------------------------------------------------------------------------------------------------


class ShapesCaptionsDataset(Dataset):
    """One split of the captioned scenes: ``(image, caption, label, heldout)`` with a float32
    normalised image (3, S, S); sample ``i`` depends only on ``(seed, split, i)`` (and ``max_objects``).

    Args:
        num_samples: split length.
        seed: generation seed.
        split: "train", "val" or "test" (each a different stream).
        image_size: side S.
        max_objects: 1..9 objects per scene (uniform count).
        zeroshot: single-object scenes with labels cycling through all classes (another stream).
        cache: render the whole split once (batched) and serve from memory (3*S*S bytes per sample);
            otherwise render in ``__getitem__``.
    """

    def __init__(self, num_samples: int, seed: int = 0, split: str = "train", image_size: int = 48,
                 max_objects: int = 3, zeroshot: bool = False, cache: bool = True) -> None:
        if split not in SPLITS or (zeroshot and split == "train"):
            valid = [s for s in SPLITS if not (zeroshot and s == "train")]
            raise ValueError(f"unknown split {split!r}{' for zero-shot' if zeroshot else ''}; valid choices: {valid}")
        if not 1 <= max_objects <= _NUM_GRID ** 2:
            raise ValueError(f"max_objects must be in 1..{_NUM_GRID ** 2} (one per grid cell), got {max_objects}")
        self.num_samples, self.seed, self.split, self.image_size = num_samples, seed, split, image_size
        self.max_objects, self.zeroshot = max_objects, zeroshot
        self.scenes = [sample_scene(seed, split, i, max_objects, zeroshot) for i in range(num_samples)]
        self.images: Optional[torch.Tensor] = None
        if cache:
            self.images = torch.cat([self.render(range(s, min(s + 1024, num_samples)))
                                     for s in range(0, num_samples, 1024)]) if num_samples else \
                torch.empty(0, 3, image_size, image_size, dtype=torch.uint8)

    def render(self, indices) -> torch.Tensor:
        """uint8 images (len(indices), 3, S, S)."""
        indices = list(indices)
        stream = _STREAMS["zeroshot" if self.zeroshot else "captions", self.split]
        noise = []
        for i in indices:
            # noise has its own generator: the scene's python RNG stream stays independent of image_size
            g = torch.Generator().manual_seed(sample_seed(self.seed, stream, i) ^ 0x5DEECE66D)
            noise.append(torch.randn(3, self.image_size, self.image_size, generator=g))
        return render_scenes([self.scenes[i] for i in indices], torch.stack(noise))

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int):
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        img = self.images[index] if self.images is not None else self.render([index])[0]
        scene = self.scenes[index]
        image = (img.float() / 255 - MEAN) / STD  # same fixed normalisation as shapes.py
        return image, scene.caption, scene.label, scene.heldout


class CaptionCollate:
    """Batches ``(image, caption, label, heldout)`` items into a dict; tokenises the captions in one call
    (faster than per sample, see :class:`ShapesCaptionsDataModule`)."""

    def __init__(self, tokenizer: Tokenizer, context_length: int) -> None:
        self.tokenizer, self.context_length = tokenizer, context_length

    def __call__(self, items: Sequence[tuple]) -> dict[str, Any]:
        images, captions, labels, heldout = zip(*items)
        return {"image": torch.stack(images), "text": self.tokenizer(list(captions), self.context_length),
                "caption": list(captions), "label": torch.tensor(labels, dtype=torch.long),
                "heldout": torch.tensor(heldout, dtype=torch.bool)}


def collate_zeroshot(items: Sequence[tuple]) -> dict[str, torch.Tensor]:
    images, _, labels, heldout = zip(*items)
    return {"image": torch.stack(images), "label": torch.tensor(labels, dtype=torch.long),
            "heldout": torch.tensor(heldout, dtype=torch.bool)}


@functools.lru_cache(maxsize=4)
def captions_bpe(seed: int, max_objects: int, vocab_size: int = 512, num_captions: int = 4000) -> ByteBPETokenizer:
    """A byte-level BPE trained on this data set's own training captions (``tokenizer: bpe``): ~400 tokens
    instead of CLIP's 49,408, which makes a captioner's output layer ~100x cheaper. Deterministic from
    (seed, max_objects), so a checkpoint's data module rebuilds the same vocabulary."""
    texts = [sample_scene(seed, "train", i, max_objects).caption for i in range(num_captions)]
    return ByteBPETokenizer.train(texts, vocab_size=vocab_size)


class ShapesCaptionsDataModule(TextDataMixin, BaseDataModule):
    """Procedural captioned scenes of coloured shapes for contrastive image-text training, with held-out
    colour-shape compositions for zero-shot evaluation (see the module docstring).

    Batches of the train/val/test loaders are dicts::

        image   float32 (B, 3, S, S), normalised with mean 0.5, std 0.29
        text    int64 (B, context_length): [SOT] caption [EOT] padding (the tokenizer's pad id)
        caption list[str]
        label   int64 (B,): class of the primary (first-named) object, index into ``class_names``
        heldout bool (B,): the scene contains a held-out composition (always False in training)

    and of ``zeroshot_dataloader(split)`` dicts ``{"image", "label", "heldout"}`` of single objects.
    Captions are tokenised per batch in the collate function (CLIP tokenizer, 128 captions: ~5 ms in one
    call, ~7 ms one by one); a loader with ``num_workers=0`` serves ~18k samples/s on one CPU thread.

    Args:
        image_size: image side (3 channels). At 48 a small object is ~8 px wide, a large one ~14 px.
        num_train: split lengths.
        num_val: split lengths.
        num_test: split lengths.
        num_zeroshot: length of each zero-shot split (balanced: a multiple of 48 gives equal classes).
        max_objects: objects per scene are uniform in 1..max_objects.
        tokenizer: "clip", "bpe" (a BPE trained on the training captions, :func:`captions_bpe`) or a
            path to a ByteBPETokenizer .json (see :func:`get_tokenizer`).
        context_length: token sequence length (captions of up to 3 objects take at most 31 CLIP tokens
            with SOT and EOT; longer ones are cut, ending with EOT).
        cache: render each split once at ``setup`` instead of per sample.

    ``batch_size``, ``num_workers``, ``seed``, ``pin_memory``, ``eval_batch_size``: see :class:`BaseDataModule`.
    """

    in_chans = 3
    mean, std = (MEAN,) * 3, (STD,) * 3  # the fixed normalisation of every image (recorded in checkpoints)

    zeroshot_templates = ZEROSHOT_TEMPLATES  # prompts the zero-shot evaluation uses by default

    @property
    def tokenizer(self) -> Tokenizer:
        if self.tokenizer_name == "bpe":
            return captions_bpe(self.seed, self.max_objects)
        return super().tokenizer

    def __init__(self, batch_size: int = 128, num_workers: int = 0, seed: int = 0, pin_memory: bool = False,
                 eval_batch_size: Optional[int] = None, image_size: int = 48, num_train: int = 20000,
                 num_val: int = 2000, num_test: int = 2000, num_zeroshot: int = 1920, max_objects: int = 3,
                 tokenizer: str = "clip", context_length: int = 32, cache: bool = True) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory, eval_batch_size)
        if image_size < 16:
            raise ValueError(f"data.image_size must be >= 16 for small shapes to be recognisable, got {image_size}")
        if not 1 <= max_objects <= _NUM_GRID ** 2:
            raise ValueError(f"data.max_objects must be in 1..{_NUM_GRID ** 2} (one per grid cell), got {max_objects}")
        if context_length < 2:
            raise ValueError(f"data.context_length must be >= 2 (room for SOT and EOT), got {context_length}")
        self.image_size = image_size
        self.num_train, self.num_val, self.num_test, self.num_zeroshot = num_train, num_val, num_test, num_zeroshot
        self.max_objects = max_objects
        self.tokenizer_name = str(tokenizer)
        self.context_length = context_length
        self.cache = cache
        self.class_names = list(CLASS_NAMES)
        self._zeroshot_sets: dict[str, ShapesCaptionsDataset] = {}

    # -- what models / tasks read -------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def heldout_classes(self) -> list[int]:
        """Labels (indices into ``class_names``) of the held-out compositions."""
        return list(HELDOUT_CLASSES)

    def zeroshot_prompts(self, templates: Sequence[str] = ZEROSHOT_TEMPLATES) -> list[list[str]]:
        """``prompts[c][t]``: template ``t`` filled with class name ``c``."""
        return [[t.format(name) for t in templates] for name in self.class_names]

    # -- data ---------------------------------------------------------------------------------------
    def _dataset(self, split: str, n: int, zeroshot: bool = False) -> ShapesCaptionsDataset:
        return ShapesCaptionsDataset(n, self.seed, split, self.image_size, self.max_objects, zeroshot, self.cache)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        self.train_set = self._dataset("train", self.num_train)
        self.val_set = self._dataset("val", self.num_val)
        self.test_set = self._dataset("test", self.num_test)

    def collate_fn(self) -> Callable:
        return CaptionCollate(self.tokenizer, self.context_length)

    def score_captions(self, captions: Sequence[str], split: str, indices: Sequence[int]) -> float:
        """Share of ``captions`` (generated for samples ``indices`` of ``split``) whose stated attributes
        are all correct (:func:`caption_is_correct`)."""
        dataset = {"val": self.val_set, "test": self.test_set}[split]
        ok = [caption_is_correct(c, dataset.scenes[i]) for c, i in zip(captions, indices)]
        return sum(ok) / max(len(ok), 1)

    def zeroshot_dataloader(self, split: str = "test") -> DataLoader:
        """Single-object images, labels cycling through all classes; ``{"image", "label", "heldout"}``
        batches of ``eval_batch_size``, in order. Every rank gets the whole (small) set, so each computes
        the same accuracy and nothing needs gathering."""
        if split not in ("val", "test"):
            raise ValueError(f"unknown zero-shot split {split!r}; valid choices: ['val', 'test']")
        if split not in self._zeroshot_sets:
            self._zeroshot_sets[split] = self._dataset(split, self.num_zeroshot, zeroshot=True)
        dataset = self._zeroshot_sets[split]
        return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, collate_fn=collate_zeroshot, persistent_workers=False,
                          generator=torch.Generator().manual_seed(self.seed))


_PHRASE = re.compile(r"\b(?:(small|large) )?(" + "|".join(COLOURS) + r") (" + "|".join(SHAPES) + r")\b(?: ("
                     + "|".join(re.escape(p) for p in POSITIONS) + r"))?")


def caption_is_correct(caption: str, scene: Scene) -> bool:
    """True if ``caption`` names at least one object and every object phrase in it ("a [size] colour
    shape [position]") matches a distinct object of ``scene`` in every attribute it states. Relations
    ("to the left of") are not checked."""
    remaining = list(scene.objects)
    found = False
    for size, colour, shape, where in _PHRASE.findall(caption):
        found = True
        match = next((o for o in remaining if COLOURS[o.colour] == colour and SHAPES[o.shape] == shape
                      and (not size or SIZES[o.size] == size) and (not where or POSITIONS[o.cell] == where)), None)
        if match is None:
            return False
        remaining.remove(match)
    return found
