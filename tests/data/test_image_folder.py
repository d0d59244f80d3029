import io
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmzoo.data import ImageFolderDataModule
from mmzoo.data.image_folder import UnreadableImageError
from mmzoo.data.transforms import IMAGENET_MEAN, IMAGENET_STD

COLOURS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}  # sorted names = label order


def _png(path: Path, colour, size=(20, 14)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, colour)
    img.putpixel((0, 0), (128, 128, 128))  # not constant: crops/flips must be checkable
    img.save(path)


def make_tree(root: Path, splits=("train",), per_class=6, classes=tuple(COLOURS)) -> Path:
    for split in splits:
        for name in classes:
            for i in range(per_class):
                _png(root / split / name / f"{i}.png", COLOURS[name])
    return root


def _corrupt(path: Path) -> None:
    path.write_bytes(b"this is not an image")


def _truncated(path: Path) -> None:
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, format="PNG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # header intact, pixel data cut


def _setup(root, **kw) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(root=root, image_size=16, **kw)
    dm.setup("fit")
    return dm


def test_metadata_shapes_and_labels(tmp_path):
    root = make_tree(tmp_path, per_class=10)
    dm = ImageFolderDataModule(root=root, image_size=16)
    assert dm.class_names == ["blue", "green", "red"] and (dm.in_chans, dm.image_size) == (3, 16)
    dm.setup("fit")
    assert len(dm.train_set) == 27 and len(dm.val_set) == 3  # val_fraction 0.1, stratified: one per class
    assert dm.test_set is dm.val_set
    assert sorted(y for _, y in dm.val_set.dataset.samples) == [0, 1, 2]
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    for ds in (dm.train_set, dm.val_set):
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and type(y) is int
            # the centre pixel has the class colour: labels follow the sorted folder names
            centre = x[:, 8, 8] * std + mean
            assert torch.allclose(centre, torch.tensor(COLOURS[dm.class_names[y]]) / 255, atol=0.02)


def test_grey(tmp_path):
    dm = _setup(make_tree(tmp_path), in_chans=1)
    x, _ = dm.val_set[0]
    assert x.shape == (1, 16, 16) and dm.in_chans == 1


def test_val_and_test_folders(tmp_path):
    root = make_tree(tmp_path, splits=("train", "val", "test"), per_class=2)
    dm = _setup(root)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (6, 6, 6)
    assert dm.test_set is not dm.val_set
    assert all("/test/" in p for p, _ in dm.test_set.dataset.samples)


def test_split_determinism(tmp_path):
    root = make_tree(tmp_path, per_class=10)
    val = lambda dm: [p for p, _ in dm.val_set.dataset.samples]
    a, b, c = (_setup(root, seed=s, val_fraction=0.3) for s in (0, 0, 1))
    assert val(a) == val(b) and val(a) != val(c)
    train = {p for p, _ in a.train_set.dataset.samples}
    assert not train & set(val(a)) and len(train) + len(val(a)) == 30
    assert torch.equal(a.train_set[4][0], b.train_set[4][0])


def test_augmentation_seeded_by_epoch(tmp_path):
    root = tmp_path
    _png(root / "train" / "a" / "0.png", (0, 0, 0), size=(40, 30))
    img = Image.open(root / "train" / "a" / "0.png")
    img.putpixel((3, 5), (255, 255, 255))  # an asymmetric marker: crop and flip move it
    img.save(root / "train" / "a" / "0.png")
    for i in range(1, 4):
        _png(root / "train" / "a" / f"{i}.png", (0, 0, 0), size=(40, 30))
    dm = _setup(root, val_fraction=0.25)
    ds = dm.train_set
    k = [p.endswith("0.png") for p, _ in ds.dataset.samples].index(True)
    outs = []
    for epoch in range(4):
        ds.set_epoch(epoch)
        outs.append(ds[k][0])
        assert torch.equal(outs[-1], ds[k][0])
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    ds.set_epoch(0)
    assert torch.equal(outs[0], ds[k][0])


def test_corrupt_file_skipped_and_counted(tmp_path):
    root = make_tree(tmp_path)
    _corrupt(root / "train" / "green" / "bad.png")
    with pytest.warns(UserWarning, match="bad.png") as rec:
        dm = _setup(root)
    assert sum("unreadable" in str(w.message) for w in rec) == 1
    assert dm.num_skipped == 1 and dm.skipped_files[0].endswith("bad.png")
    assert len(dm.train_set) + len(dm.val_set) == 18
    assert all(not p.endswith("bad.png") for p, _ in dm.train_set.dataset.samples + dm.val_set.dataset.samples)


def test_corrupt_file_strict(tmp_path):
    root = make_tree(tmp_path)
    _corrupt(root / "train" / "green" / "bad.png")
    with pytest.raises(UnreadableImageError, match="bad.png"):
        _setup(root, strict=True)


def test_truncated_file_at_load_time(tmp_path):
    root = make_tree(tmp_path, per_class=1, splits=("train", "val"))
    _truncated(root / "val" / "red" / "trunc.png")
    dm = _setup(root, max_bad_fraction=0.5)  # the header parses: not caught at scan
    assert dm.num_skipped == 0
    paths = [p for p, _ in dm.val_set.dataset.samples]
    k = [p.endswith("trunc.png") for p in paths].index(True)
    with pytest.warns(UserWarning, match="trunc.png"):
        x, y = dm.val_set[k]
    assert x.shape == (3, 16, 16) and dm.val_set.dataset.load_failures == [paths[k]]
    assert dm.num_skipped == 1 and dm.skipped_files == [paths[k]]  # counted like a file skipped at scan
    assert torch.equal(x, dm.val_set[(k + 1) % len(paths)][0])  # deterministic stand-in: the next sample
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm.val_set[k]  # warned once only
    strict = _setup(root, strict=True)
    with pytest.raises(UnreadableImageError, match="trunc.png"):
        strict.val_set[k]
    capped = _setup(root)  # 1 of the 4 val images is bad: more than the default 10%
    with pytest.warns(UserWarning, match="trunc.png"), \
            pytest.raises(UnreadableImageError, match="1 of the 4 images .*max_bad_fraction=0.1"):
        capped.val_set[k]


def test_missing_root_and_class_mismatch(tmp_path):
    with pytest.raises(FileNotFoundError, match="train/<class>") as e:
        ImageFolderDataModule(root=tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)
    root = make_tree(tmp_path / "t", per_class=1)
    make_tree(root, splits=("val",), per_class=1, classes=("blue", "red"))
    (root / "val" / "purple").mkdir()
    with pytest.raises(ValueError, match=r"only in train: \['green'\], only in val: \['purple'\]"):
        ImageFolderDataModule(root=root)


def test_train_loader(tmp_path):
    dm = ImageFolderDataModule(root=make_tree(tmp_path, per_class=10), image_size=16, batch_size=4)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 16, 16) and y.dtype == torch.int64
