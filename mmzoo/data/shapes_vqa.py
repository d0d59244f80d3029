"""Built-in procedural visual question answering: scenes of coloured shapes, a question, one answer.

No files, no download: sample ``i`` of a split is a pure function of ``(seed, split, i)``. Scenes are
those of :mod:`mmzoo.data.shapes_captions` (objects in distinct cells of a 3x3 grid, drawn by its
renderer :func:`~mmzoo.data.shapes_captions.render_scenes`), restricted to the shapes of ``shapes``.
Question types cycle with the index (``i % 4``)::

    exist     is there a red circle?                    yes / no
    colour    what colour is the triangle?              red / yellow / green / cyan / blue / purple
    count     how many squares are there?               0 / 1 / 2 / 3
    position  is the blue cross to the left of the red circle?   yes / no   (also right of, above, below)

Answers are classes of one vocabulary (`ANSWERS`) and are balanced within each type, so the question
alone tells nothing beyond its type: a text-only model is at chance per type (1/2, 1/6, 1/4, 1/2).
Every named object is unambiguous: in colour questions the shape occurs once; in position questions
both colour-shape pairs occur once; scenes never repeat a colour-shape pair.
"""
from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch.utils.data import Dataset

from .base import BaseDataModule, sample_seed
from .shapes import MEAN, STD
from .shapes_captions import _NUM_GRID, COLOURS, SHAPES, Scene, make_scene, render_scenes
from .tokenizer import ByteBPETokenizer, Tokenizer, TextDataMixin

QUESTION_TYPES = ("exist", "colour", "count", "position")
MAX_COUNT = 3
ANSWERS = ("no", "yes", *COLOURS, *(str(k) for k in range(MAX_COUNT + 1)))
DEFAULT_SHAPES = ("circle", "square", "triangle", "cross")  # shapes that stay distinct at 32 px
RELATIONS = ("to the left of", "to the right of", "above", "below")
SPLITS = ("train", "val", "test")
_STREAMS = {"train": 31, "val": 32, "test": 33}  # sample_seed streams, distinct from the other data sets


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def _holds(relation: str, a_cell: int, b_cell: int) -> Optional[bool]:
    """Whether ``a relation b`` holds for objects in grid cells; None when the axis does not separate them."""
    (ra, ca), (rb, cb) = divmod(a_cell, _NUM_GRID), divmod(b_cell, _NUM_GRID)
    if relation in ("to the left of", "to the right of"):
        return None if ca == cb else (ca < cb) == (relation == "to the left of")
    return None if ra == rb else (ra < rb) == (relation == "above")


@dataclass(frozen=True)
class VQASample:
    """One question about one scene."""

    scene: Scene
    question: str
    answer: int  # index into ANSWERS
    qtype: int  # index into QUESTION_TYPES


def sample_vqa(seed: int, split: str, index: int, shapes: Sequence[str] = DEFAULT_SHAPES,
               max_distractors: int = 2) -> VQASample:
    """Question ``index`` of a split (type ``index % 4``): a pure function of its arguments."""
    rng = random.Random(sample_seed(seed, _STREAMS[split], index))
    shape_ids = [SHAPES.index(s) for s in shapes]
    pairs = [c * len(SHAPES) + s for c in range(len(COLOURS)) for s in shape_ids]  # colour-shape labels
    name = lambda label: f"{COLOURS[label // len(SHAPES)]} {SHAPES[label % len(SHAPES)]}"
    qtype = index % len(QUESTION_TYPES)
    kind = QUESTION_TYPES[qtype]
    if kind == "exist":
        labels = rng.sample(pairs, rng.randint(1, 1 + max_distractors))
        present = rng.random() < 0.5
        asked = rng.choice(labels) if present else rng.choice([p for p in pairs if p not in labels])
        return VQASample(make_scene(rng, labels), f"is there a {name(asked)}?", ANSWERS.index("yes" if present else "no"),
                         qtype)
    if kind == "colour":
        shape, colour = rng.choice(shape_ids), rng.randrange(len(COLOURS))
        others = rng.sample([p for p in pairs if p % len(SHAPES) != shape], rng.randint(0, max_distractors))
        return VQASample(make_scene(rng, [colour * len(SHAPES) + shape, *others]),
                         f"what colour is the {SHAPES[shape]}?", ANSWERS.index(COLOURS[colour]), qtype)
    if kind == "count":
        shape, count = rng.choice(shape_ids), rng.randint(0, MAX_COUNT)
        targets = [c * len(SHAPES) + shape for c in rng.sample(range(len(COLOURS)), count)]
        others = rng.sample([p for p in pairs if p % len(SHAPES) != shape],
                            rng.randint(1 if count == 0 else 0, max_distractors))
        return VQASample(make_scene(rng, [*targets, *others]), f"how many {_plural(SHAPES[shape])} are there?",
                         ANSWERS.index(str(count)), qtype)
    # position: draw the answer first, then name the two objects in the order that gives it
    relation, want = rng.choice(RELATIONS), rng.random() < 0.5
    labels = rng.sample(pairs, 2 + rng.randint(0, max_distractors - 1 if max_distractors else 0))
    while True:
        scene = make_scene(rng, labels)
        truth = _holds(relation, scene.objects[0].cell, scene.objects[1].cell)
        if truth is not None:
            break
    a, b = (labels[0], labels[1]) if truth == want else (labels[1], labels[0])
    return VQASample(scene, f"is the {name(a)} {relation} the {name(b)}?", ANSWERS.index("yes" if want else "no"),
                     qtype)


class ShapesVQADataset(Dataset):
    """One split: ``(image, question, answer, qtype)`` with a float32 normalised image (3, S, S).

    Args:
        num_samples: split length (a multiple of 4 balances the question types).
        seed: generation seed.
        split: "train", "val" or "test" (each a different stream).
        image_size: side S.
        shapes: shape names (from :data:`mmzoo.data.shapes.CLASS_NAMES`) that scenes and questions use.
        max_distractors: objects besides the ones a question is about (0..max).
        cache: render the whole split once (batched) instead of in ``__getitem__``.
    """

    def __init__(self, num_samples: int, seed: int = 0, split: str = "train", image_size: int = 32,
                 shapes: Sequence[str] = DEFAULT_SHAPES, max_distractors: int = 2, cache: bool = True) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid choices: {list(SPLITS)}")
        self.num_samples, self.seed, self.split, self.image_size = num_samples, seed, split, image_size
        self.samples = [sample_vqa(seed, split, i, shapes, max_distractors) for i in range(num_samples)]
        self.images: Optional[torch.Tensor] = None
        if cache and num_samples:
            self.images = torch.cat([self.render(range(s, min(s + 1024, num_samples)))
                                     for s in range(0, num_samples, 1024)])

    def render(self, indices) -> torch.Tensor:
        """uint8 images (len(indices), 3, S, S)."""
        indices = list(indices)
        noise = []
        for i in indices:
            g = torch.Generator().manual_seed(sample_seed(self.seed, _STREAMS[self.split], i) ^ 0x5DEECE66D)
            noise.append(torch.randn(3, self.image_size, self.image_size, generator=g))
        return render_scenes([self.samples[i].scene for i in indices], torch.stack(noise))

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int):
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        img = self.images[index] if self.images is not None else self.render([index])[0]
        s = self.samples[index]
        return (img.float() / 255 - MEAN) / STD, s.question, s.answer, s.qtype


@functools.lru_cache(maxsize=6)
def _cached_dataset(num_samples: int, seed: int, split: str, image_size: int, shapes: tuple[str, ...],
                    max_distractors: int) -> ShapesVQADataset:
    """Rendered splits, shared by the data modules of one process (a split is a pure function of these
    arguments and read-only): runs that compare models on the same data render it once."""
    return ShapesVQADataset(num_samples, seed, split, image_size, shapes, max_distractors, cache=True)


class VQACollate:
    """Batches ``(image, question, answer, qtype)`` items into a dict, tokenising questions in one call."""

    def __init__(self, tokenizer: Tokenizer, context_length: int) -> None:
        self.tokenizer, self.context_length = tokenizer, context_length

    def __call__(self, items: Sequence[tuple]) -> dict[str, Any]:
        images, questions, answers, qtypes = zip(*items)
        text = self.tokenizer(list(questions), self.context_length)
        return {"image": torch.stack(images), "text": text, "text_padding_mask": text == self.tokenizer.pad_token_id,
                "question": list(questions), "answer": torch.tensor(answers, dtype=torch.long),
                "qtype": torch.tensor(qtypes, dtype=torch.long)}


@functools.lru_cache(maxsize=4)
def questions_bpe(seed: int, shapes: tuple[str, ...], vocab_size: int = 512,
                  num_questions: int = 4000) -> ByteBPETokenizer:
    """A byte-level BPE trained on this data set's own training questions (a few hundred ids: the
    question words become single tokens). Deterministic from (seed, shapes)."""
    texts = [sample_vqa(seed, "train", i, shapes).question for i in range(num_questions)]
    return ByteBPETokenizer.train(texts, vocab_size=vocab_size)


class ShapesVQADataModule(TextDataMixin, BaseDataModule):
    """Procedural visual question answering over scenes of coloured shapes (see the module docstring).

    Batches are dicts::

        image              float32 (B, 3, S, S), normalised with mean 0.5, std 0.29
        text               int64 (B, context_length): [SOT] question [EOT] padding
        text_padding_mask  bool (B, context_length): True at padding
        question           list[str]
        answer             int64 (B,): index into ``class_names`` (= `ANSWERS`)
        qtype              int64 (B,): index into ``question_types``

    No augmentation: a flip would change the answers of position questions.

    Args:
        image_size: image side (3 channels). At 32 a small object is ~5 px wide, a large one ~9 px.
        num_train: split lengths.
        num_val: split lengths.
        num_test: split lengths.
        shapes: shape names used by scenes and questions (default: 4 shapes distinct at 32 px).
        max_distractors: objects besides those a question is about (0..max).
        tokenizer: "bpe" (:func:`questions_bpe`), "clip", or a ByteBPETokenizer .json path.
        context_length: token row length (the longest question takes 16 BPE ids with SOT and EOT).
        cache: render each split once at ``setup`` instead of per sample.

    ``batch_size``, ``num_workers``, ``seed``, ``pin_memory``, ``eval_batch_size``: see :class:`BaseDataModule`.
    """

    in_chans = 3
    question_types = list(QUESTION_TYPES)

    def __init__(self, batch_size: int = 64, num_workers: int = 0, seed: int = 0, pin_memory: bool = False,
                 eval_batch_size: Optional[int] = None, image_size: int = 32, num_train: int = 20000,
                 num_val: int = 2000, num_test: int = 2000, shapes: Sequence[str] = DEFAULT_SHAPES,
                 max_distractors: int = 2, tokenizer: str = "bpe", context_length: int = 24,
                 cache: bool = True) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory, eval_batch_size)
        if image_size < 16:
            raise ValueError(f"data.image_size must be >= 16 for small shapes to be recognisable, got {image_size}")
        unknown = [s for s in shapes if s not in SHAPES]
        if unknown or not shapes:
            raise ValueError(f"data.shapes has unknown shapes {unknown}; valid choices: {list(SHAPES)}")
        if len(shapes) < 2:
            raise ValueError(f"data.shapes needs >= 2 shapes (colour/count questions need other shapes as "
                             f"distractors), got {list(shapes)}")
        if not 0 <= max_distractors <= 4:
            raise ValueError(f"data.max_distractors must be in 0..4 (scenes hold at most {_NUM_GRID ** 2} objects), "
                             f"got {max_distractors}")
        if context_length < 2:
            raise ValueError(f"data.context_length must be >= 2 (room for SOT and EOT), got {context_length}")
        self.image_size = image_size
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.shapes = tuple(shapes)
        self.max_distractors = max_distractors
        self.tokenizer_name = str(tokenizer)
        self.context_length = context_length
        self.cache = cache
        self.class_names = list(ANSWERS)

    @property
    def tokenizer(self) -> Tokenizer:
        if self.tokenizer_name == "bpe":
            return questions_bpe(self.seed, self.shapes)
        return super().tokenizer

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _dataset(self, split: str, n: int) -> ShapesVQADataset:
        if not self.cache:
            return ShapesVQADataset(n, self.seed, split, self.image_size, self.shapes, self.max_distractors, False)
        return _cached_dataset(n, self.seed, split, self.image_size, self.shapes, self.max_distractors)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        self.train_set = self._dataset("train", self.num_train)
        self.val_set = self._dataset("val", self.num_val)
        self.test_set = self._dataset("test", self.num_test)

    def collate_fn(self) -> Callable:
        return VQACollate(self.tokenizer, self.context_length)
