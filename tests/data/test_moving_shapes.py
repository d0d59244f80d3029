"""moving_shapes: determinism, balance, shapes, and the property that makes it a test of time: the
frames of a clip are the same set whatever the class, only their order differs."""
from __future__ import annotations

import pytest
import torch

from mmzoo.data.moving_shapes import (CLASS_NAMES, MOTIONS, PATTERNS, MovingShapesDataModule, MovingShapesDataset,
                                      clip_params, pattern_order)


def test_patterns_are_distinct_permutations_also_when_mirrored():
    orders = {name: tuple(pattern_order(name, 8)) for name in CLASS_NAMES}
    for name, order in orders.items():
        assert sorted(order) == list(range(8)), name
    # a path read backwards is another path of the same distribution: a pattern must differ from every
    # other pattern and from every other pattern's mirror (7 - state)
    seen = set()
    for order in orders.values():
        mirrored = tuple(7 - s for s in order)
        assert order not in seen and mirrored not in seen
        seen |= {order, mirrored}
    assert all(len(pattern_order(n, 16)) == 16 and max(pattern_order(n, 16)) <= 15 for n in CLASS_NAMES)


@pytest.mark.parametrize("motion", MOTIONS)
def test_the_class_only_reorders_the_frames(motion):
    """With the same random draws, every class shows the same frame states in another order."""
    per_class = []
    for label in range(len(CLASS_NAMES)):
        states, kinds = clip_params(torch.Generator().manual_seed(5), label, 8, (motion,))
        per_class.append(states)
        assert kinds.unique().numel() == 1  # one object
        # states differ across frames (something moves) and follow the class's order
        assert not torch.allclose(states[0], states[1])
    ref = per_class[0]  # "steady": state k in frame k
    for label, states in enumerate(per_class):
        order = PATTERNS[CLASS_NAMES[label]]
        torch.testing.assert_close(states, ref[list(order)])


def test_dataset_is_deterministic_balanced_and_splits_differ():
    a = MovingShapesDataset(12, seed=3, split="train", num_frames=8, image_size=16)
    b = MovingShapesDataset(12, seed=3, split="train", num_frames=8, image_size=16)
    c = MovingShapesDataset(12, seed=3, split="val", num_frames=8, image_size=16)
    assert a.clips.shape == (12, 3, 8, 16, 16) and a.clips.dtype == torch.uint8
    assert torch.equal(a.clips, b.clips) and not torch.equal(a.clips, c.clips)
    assert [a[i][1] for i in range(12)] == [i % len(CLASS_NAMES) for i in range(12)]
    # frames of a clip differ (the object moves), and the object is visible (not a flat frame)
    clip = a[0][0].float()
    assert (clip[:, 0] - clip[:, 7]).abs().mean() > 1.0
    with pytest.raises(ValueError, match="motions"):
        MovingShapesDataset(2, motions=("fly",))


def test_datamodule_batches_and_hints():
    dm = MovingShapesDataModule(batch_size=4, num_train=8, num_val=4, num_test=4, num_frames=4, image_size=16)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 4, 16, 16) and x.dtype == torch.float32 and y.shape == (4,)
    assert dm.num_classes == len(CLASS_NAMES) and dm.image_size == 16 and dm.in_chans == 3
    assert abs(float(x.mean())) < 1.5
