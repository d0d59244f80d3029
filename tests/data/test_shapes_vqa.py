"""shapes_vqa: deterministic, correct and balanced questions; batches; errors."""
from __future__ import annotations

import re
from collections import Counter

import pytest
import torch

from mmzoo.data.shapes_captions import _NUM_GRID, COLOURS, SHAPES
from mmzoo.data.shapes_vqa import (ANSWERS, DEFAULT_SHAPES, QUESTION_TYPES, ShapesVQADataModule, ShapesVQADataset,
                                   sample_vqa)


def _answer_from_scene(question: str, objects) -> str:
    """An independent reading of the question against the scene's objects."""
    names = [(COLOURS[o.colour], SHAPES[o.shape]) for o in objects]
    if m := re.fullmatch(r"is there a (\w+) (\w+)\?", question):
        return "yes" if (m[1], m[2]) in names else "no"
    if m := re.fullmatch(r"what colour is the (\w+)\?", question):
        found = [c for c, s in names if s == m[1]]
        assert len(found) == 1, "the named shape must be unique"
        return found[0]
    if m := re.fullmatch(r"how many (\w+) are there\?", question):
        return str(sum(s + ("es" if s.endswith("s") else "s") == m[1] for _, s in names))
    m = re.fullmatch(r"is the (\w+) (\w+) (to the left of|to the right of|above|below) the (\w+) (\w+)\?", question)
    assert m, question
    a = [o for o, n in zip(objects, names) if n == (m[1], m[2])]
    b = [o for o, n in zip(objects, names) if n == (m[4], m[5])]
    assert len(a) == 1 and len(b) == 1, "both named objects must be unique"
    (ra, ca), (rb, cb) = divmod(a[0].cell, _NUM_GRID), divmod(b[0].cell, _NUM_GRID)
    holds = {"to the left of": ca < cb, "to the right of": ca > cb, "above": ra < rb, "below": ra > rb}[m[3]]
    return "yes" if holds else "no"


def test_answers_are_correct_balanced_and_types_cycle():
    samples = [sample_vqa(0, "train", i) for i in range(800)]
    per_type = {t: Counter() for t in range(4)}
    for i, s in enumerate(samples):
        assert s.qtype == i % 4
        assert ANSWERS[s.answer] == _answer_from_scene(s.question, s.scene.objects), s.question
        assert all(SHAPES[o.shape] in DEFAULT_SHAPES for o in s.scene.objects)
        assert len({o.label for o in s.scene.objects}) == len(s.scene.objects)
        per_type[s.qtype][ANSWERS[s.answer]] += 1
    assert set(per_type[0]) == {"yes", "no"} and set(per_type[3]) == {"yes", "no"}
    assert set(per_type[1]) == set(COLOURS) and set(per_type[2]) == {"0", "1", "2", "3"}
    for t, counts in per_type.items():  # balanced: a text-only model learns nothing from the answer prior
        share = max(counts.values()) / sum(counts.values())
        assert share < 1.6 / len(counts), (QUESTION_TYPES[t], counts)


def test_deterministic_and_splits_differ():
    a = [sample_vqa(3, "val", i) for i in range(20)]
    assert a == [sample_vqa(3, "val", i) for i in range(20)]
    assert [s.question for s in a] != [sample_vqa(3, "test", i).question for i in range(20)]
    ds1, ds2 = ShapesVQADataset(8, seed=3, split="val"), ShapesVQADataset(8, seed=3, split="val", cache=False)
    for i in range(8):
        x1, q1, a1, t1 = ds1[i]
        x2, q2, a2, t2 = ds2[i]
        assert torch.equal(x1, x2) and (q1, a1, t1) == (q2, a2, t2)


def test_colour_answer_is_drawn_in_the_image():
    """The pixel at the centre of the asked shape is close to the colour the answer names."""
    from mmzoo.data.shapes_captions import COLOUR_RGB
    from mmzoo.data.shapes import MEAN, STD
    ds = ShapesVQADataset(40, seed=0, split="test", image_size=48)
    checked = 0
    for i in range(1, 40, 4):  # colour questions
        img, question, answer, qtype = ds[i]
        shape = question.split()[-1].rstrip("?")
        (obj,) = [o for o in ds.samples[i].scene.objects if SHAPES[o.shape] == shape]
        if shape == "cross" or obj.size == 0:
            continue  # a thin or small shape's centre pixel may blend with the background
        px = int((obj.cx + 1) * 24), int((obj.cy + 1) * 24)
        rgb = img[:, px[1], px[0]] * STD + MEAN
        assert torch.allclose(rgb, torch.tensor(COLOUR_RGB[ANSWERS[answer]]), atol=0.25), (question, rgb)
        checked += 1
    assert checked >= 3


def test_batches_and_padding_mask():
    dm = ShapesVQADataModule(batch_size=16, num_train=64, num_val=16, num_test=16)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (16, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["text"].shape == (16, 24) and batch["text_padding_mask"].dtype == torch.bool
    tok = dm.tokenizer
    for row, pad, q in zip(batch["text"], batch["text_padding_mask"], batch["question"]):
        ids = [tok.sot_token_id, *tok.encode(q), tok.eot_token_id]
        assert row[:len(ids)].tolist() == ids  # never truncated
        assert pad.tolist() == [False] * len(ids) + [True] * (24 - len(ids))
    assert dm.num_classes == len(ANSWERS) == 12 and dm.class_names == list(ANSWERS)
    assert dm.question_types == list(QUESTION_TYPES)
    assert dm.vocab_size == tok.vocab_size < 512


@pytest.mark.parametrize("kwargs, match", [
    (dict(shapes=["circle", "blob"]), r"unknown shapes \['blob'\]"),
    (dict(shapes=["circle"]), "needs >= 2 shapes"),
    (dict(image_size=8), "data.image_size must be >= 16"),
    (dict(max_distractors=7), "data.max_distractors must be in 0..4"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ShapesVQADataModule(**kwargs)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        ShapesVQADataset(4, split="dev")
