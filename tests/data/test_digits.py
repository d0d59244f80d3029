import pytest
import torch
import torch.nn.functional as F

from mmzoo.data import DigitsDataModule

N_DIGITS = 1797


def _setup(**kw) -> DigitsDataModule:
    dm = DigitsDataModule(**kw)
    dm.setup("fit")
    return dm


def _shift(img: torch.Tensor, dx: int, dy: int, fill: float) -> torch.Tensor:
    out = torch.full_like(img, fill)
    H, W = img.shape[-2:]
    out[..., max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = \
        img[..., max(-dy, 0):H + min(-dy, 0), max(-dx, 0):W + min(-dx, 0)]
    return out


def test_metadata_and_shapes():
    dm = DigitsDataModule(image_size=20)
    assert dm.class_names == [str(i) for i in range(10)] and (dm.image_size, dm.in_chans) == (20, 1)
    dm.setup("fit")
    for ds in (dm.train_set, dm.val_set, dm.test_set):
        x, y = ds[0]
        assert x.shape == (1, 20, 20) and x.dtype == torch.float32 and type(y) is int and 0 <= y < 10
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == N_DIGITS


def test_stratified_disjoint_split():
    dm = _setup()
    parts = dm.split_indices
    sizes = [len(parts[k]) for k in ("train", "val", "test")]
    assert sizes == [N_DIGITS - 180 - 359, 180, 359]
    allidx = torch.cat(list(parts.values()))
    assert len(allidx.unique()) == N_DIGITS and allidx.min() == 0 and allidx.max() == N_DIGITS - 1
    from sklearn.datasets import load_digits
    target = torch.from_numpy(load_digits().target)
    for name, frac in zip(("train", "val", "test"), (0.7, 0.1, 0.2)):
        counts = torch.bincount(target[parts[name]], minlength=10).float()
        expected = torch.bincount(target, minlength=10).float() * frac
        assert (counts - expected).abs().max() <= 1.0, name


def test_determinism_and_seed_dependence():
    a, b, c = _setup(seed=0), _setup(seed=0), _setup(seed=1)
    for k in ("train", "val", "test"):
        assert torch.equal(a.split_indices[k], b.split_indices[k])
        assert not torch.equal(a.split_indices[k], c.split_indices[k])
    xa = torch.stack([a.train_set[i][0] for i in range(20)])
    xb = torch.stack([b.train_set[i][0] for i in range(20)])
    assert torch.equal(xa, xb)


def test_values_are_resized_and_train_normalised():
    from sklearn.datasets import load_digits
    raw = torch.from_numpy(load_digits().images).float()[:, None] / 16
    dm = _setup(image_size=8, augment=False)  # no resize: exact original pixels after normalisation
    i = int(dm.split_indices["test"][5])
    assert torch.allclose(dm.test_set[5][0] * dm.std + dm.mean, raw[i], atol=1e-6)
    train = torch.stack([dm.train_set[k][0] for k in range(len(dm.train_set))])
    assert abs(train.mean().item()) < 1e-4 and abs(train.std().item() - 1) < 1e-3
    dm16 = _setup(image_size=16, augment=False)
    up = F.interpolate(raw[i:i + 1], size=(16, 16), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(dm16.test_set[5][0] * dm16.std + dm16.mean, up, atol=1e-5)


def test_augmentation_is_seeded_shift():
    dm = _setup()
    ds, plain = dm.train_set, dm.train_set.dataset
    fill = -dm.mean / dm.std
    seen = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        x = ds[11][0]
        assert torch.equal(x, ds[11][0])  # same (seed, epoch, index) -> same image
        # a shift by at most one 8x8 pixel (= 2 pixels at 16x16) of the stored image
        match = [(dx, dy) for dx in range(-2, 3) for dy in range(-2, 3)
                 if torch.allclose(_shift(plain[11][0], dx, dy, fill), x, atol=1e-5)]
        assert match, f"epoch {epoch}: not a small shift"
        seen.add(match[0])
    assert len(seen) > 1  # changes with the epoch


def test_bad_fractions():
    with pytest.raises(ValueError, match="fractions"):
        DigitsDataModule(fractions=(0.5, 0.1, 0.1))
