import pytest
import torch

from mmzoo.data.transforms import build_eval_transform, build_train_transform, stratified_split


def test_stratified_split_sizes_disjoint_proportional():
    perm = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)[perm]
    parts = stratified_split(labels, [60, 25, 15], seed=3)
    assert [len(p) for p in parts] == [60, 25, 15]
    assert sorted(torch.cat(parts).tolist()) == list(range(100))
    for part, frac in zip(parts, (0.6, 0.25, 0.15)):
        counts = torch.bincount(labels[part], minlength=3).float()
        assert (counts - torch.tensor([50.0, 30, 20]) * frac).abs().max() <= 1.0
    again = stratified_split(labels, [60, 25, 15], seed=3)
    other = stratified_split(labels, [60, 25, 15], seed=4)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))
    assert not torch.equal(parts[1], other[1])


def test_stratified_split_bad_sizes():
    with pytest.raises(ValueError, match="sum to the 10 samples"):
        stratified_split([0] * 10, [5, 4], seed=0)


def test_transform_pipelines_output_plain_normalised_tensors():
    img = torch.full((3, 20, 30), 255, dtype=torch.uint8)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    for tf in (build_eval_transform(16, mean, std), build_train_transform(16, mean, std),
               build_train_transform(16, mean, std, crop="pad")):
        x = tf(img)
        assert type(x) is torch.Tensor and x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert torch.allclose(build_eval_transform(16, mean, std)(img), torch.full((3, 16, 16), 2.0))
    with pytest.raises(ValueError, match="valid choices"):
        build_train_transform(16, mean, std, crop="bogus")
