import torch

from mmzoo.data import ShapesDataModule
from mmzoo.data.shapes import CLASS_NAMES, ShapesDataset


def _dm(**kw) -> ShapesDataModule:
    args = dict(batch_size=16, num_train=64, num_val=16, num_test=24, seed=0)
    args.update(kw)
    return ShapesDataModule(**args)


def _stack(ds, n=None):
    items = [ds[i] for i in range(n or len(ds))]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def test_metadata_before_setup():
    dm = _dm(image_size=24)
    assert dm.train_set is None
    assert dm.class_names == list(CLASS_NAMES) and dm.num_classes == len(CLASS_NAMES) >= 6
    assert (dm.image_size, dm.in_chans) == (24, 3)


def test_shapes_dtypes_labels():
    dm = _dm(image_size=24)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (64, 16, 24)
    for ds in (dm.train_set, dm.val_set, dm.test_set):
        x, y = ds[3]
        assert x.shape == (3, 24, 24) and x.dtype == torch.float32 and type(y) is int
    xs, ys = _stack(dm.train_set)
    assert torch.isfinite(xs).all()
    assert sorted(ys.unique().tolist()) == list(range(len(CLASS_NAMES)))  # balanced: every class present
    assert torch.bincount(ys).tolist() == [8] * 8
    # normalised pixels: roughly centred, not constant per image
    assert -1.5 < xs.mean() < 1.5 and (xs.flatten(1).std(1) > 0.05).all()


def test_setup_is_idempotent():
    dm = _dm()
    dm.setup("fit")
    train = dm.train_set
    dm.setup("test")
    assert dm.train_set is train


def test_determinism_and_seed_dependence():
    a, b, c = _dm(), _dm(), _dm(seed=1)
    for dm in (a, b, c):
        dm.setup("fit")
    for split in ("train_set", "val_set", "test_set"):
        xa, ya = _stack(getattr(a, split))
        xb, yb = _stack(getattr(b, split))
        xc, _ = _stack(getattr(c, split))
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert not torch.equal(xa, xc)
    # the splits are different streams
    assert not torch.equal(a.val_set[0][0], a.test_set[0][0])


def test_sample_is_function_of_seed_split_index_only():
    small, big = ShapesDataset(10, seed=3, split="val"), ShapesDataset(50, seed=3, split="val")
    assert torch.equal(small[7][0], big[7][0])
    lazy = ShapesDataset(50, seed=3, split="val", cache=False)
    for i in (0, 7, 49):  # per-sample rendering equals the batched cache
        assert torch.equal(lazy[i][0], big[i][0]) and lazy[i][1] == big[i][1]


def test_images_show_a_shape():
    # the shape must be visible: some but not most pixels differ strongly from the median (background) colour
    ds = ShapesDataset(32, seed=0, split="train")
    img = ds.images.float()
    bg = img.flatten(2).median(dim=2).values[:, :, None, None]
    fg_frac = ((img - bg).abs().amax(1) > 40).float().mean((1, 2))
    assert (fg_frac > 0.02).all() and (fg_frac < 0.7).all()


def test_augmentation_seeded_by_epoch():
    dm = _dm()
    dm.setup("fit")
    ds = dm.train_set
    ds.set_epoch(0)
    first = _stack(ds, 8)[0]
    assert torch.equal(first, _stack(ds, 8)[0])
    ds.set_epoch(1)
    assert not torch.equal(first, _stack(ds, 8)[0])
    ds.set_epoch(0)
    assert torch.equal(first, _stack(ds, 8)[0])
    # flips only: every augmented image is a flip of the stored one
    raw = dm.train_set.dataset.images[:8].float() / 255
    norm = (first * 0.29 + 0.5)
    for r, f in zip(raw, norm):
        assert any(torch.allclose(r.flip(dims), f, atol=1e-5) for dims in ((), (1,), (2,), (1, 2)))


def test_no_augmentation():
    dm = _dm(augment=False)
    dm.setup("fit")
    raw = dm.train_set.dataset.images[5].float() / 255
    assert torch.allclose(dm.train_set[5][0], (raw - 0.5) / 0.29, atol=1e-6)
    assert not hasattr(dm.train_set, "set_epoch")  # nothing depends on the epoch


def test_train_dataloader_without_trainer():
    dm = _dm()
    assert getattr(dm, "trainer", None) is None
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == 64 // 16
    x, y = batches[0]
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (16,) and y.dtype == torch.int64
    assert 0 <= int(y.min()) and int(y.max()) < dm.num_classes
    xv, _ = next(iter(dm.val_dataloader()))
    assert xv.shape == (16, 3, 32, 32)


def test_batches_independent_of_worker_count():
    def epoch_batches(num_workers):
        dm = _dm(num_workers=num_workers)
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(2)  # what Lightning does at each epoch start
        return list(loader)

    for (xa, ya), (xb, yb) in zip(epoch_batches(0), epoch_batches(2), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
