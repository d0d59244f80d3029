import hashlib
import importlib.util
import pickle
import tarfile
from pathlib import Path

import pytest
import torch

from mmzoo.data import CIFAR10DataModule
from mmzoo.data.cifar10 import CIFAR10_MEAN, CIFAR10_STD

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_BATCH, N_TEST = 20, 30


def _fake_images(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def write_fake_cifar(folder: Path) -> dict:
    """Official-format files (Python 2 style bytes keys) with 5 x 20 train and 30 test images."""
    folder.mkdir(parents=True)
    truth = {}
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        n = N_TEST if name == "test_batch" else PER_BATCH
        imgs = _fake_images(n, k)
        labels = [(i + k) % 10 for i in range(n)]
        truth[name] = (imgs, labels)
        d = {b"batch_label": name.encode(), b"data": imgs.reshape(n, 3072).numpy(), b"labels": labels}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in NAMES], b"num_vis": 3072}, f)
    return truth


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    truth = write_fake_cifar(root / "cifar-10-batches-py")
    return root, truth


def _unnormalise(x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(CIFAR10_MEAN)[:, None, None], torch.tensor(CIFAR10_STD)[:, None, None]
    return ((x * std + mean) * 255).round().to(torch.uint8)


def test_metadata_and_both_root_forms(cifar_root):
    root, _ = cifar_root
    for r in (root, root / "cifar-10-batches-py", str(root)):
        dm = CIFAR10DataModule(root=r)
        assert dm.class_names == NAMES and (dm.image_size, dm.in_chans, dm.num_classes) == (32, 3, 10)


def test_splits_shapes_and_pixels(cifar_root):
    root, truth = cifar_root
    dm = CIFAR10DataModule(root=root, val_size=20, augment=False)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (80, 20, N_TEST)
    tr, va = dm.split_indices["train"], dm.split_indices["val"]
    assert len(set(tr.tolist()) & set(va.tolist())) == 0 and sorted(tr.tolist() + va.tolist()) == list(range(100))
    train_imgs = torch.cat([truth[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = sum((truth[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert torch.bincount(torch.tensor(train_labels)[va], minlength=10).tolist() == [2] * 10  # stratified
    for ds, idx in ((dm.val_set, va), (dm.train_set, tr)):
        for k in (0, 7):
            x, y = ds[k]
            assert x.shape == (3, 32, 32) and x.dtype == torch.float32
            assert torch.equal(_unnormalise(x), train_imgs[idx[k]]) and y == train_labels[idx[k]]
    x, y = dm.test_set[4]
    assert torch.equal(_unnormalise(x), truth["test_batch"][0][4]) and y == truth["test_batch"][1][4]


def test_determinism_and_seed_dependence(cifar_root):
    root, _ = cifar_root
    dms = [CIFAR10DataModule(root=root, val_size=20, seed=s) for s in (0, 0, 1)]
    for dm in dms:
        dm.setup("fit")
    assert torch.equal(dms[0].split_indices["val"], dms[1].split_indices["val"])
    assert not torch.equal(dms[0].split_indices["val"], dms[2].split_indices["val"])
    assert torch.equal(dms[0].train_set[3][0], dms[1].train_set[3][0])


def test_val_size_clipped_and_zero(cifar_root):
    root, _ = cifar_root
    dm = CIFAR10DataModule(root=root)  # default 5000 > 100 images
    with pytest.warns(UserWarning, match="val_size=5000"):
        dm.setup("fit")
    assert len(dm.val_set) == 50 and len(dm.train_set) == 50
    dm0 = CIFAR10DataModule(root=root, val_size=0)
    dm0.setup("fit")
    assert dm0.val_set is dm0.test_set and len(dm0.train_set) == 100


def test_augmentation_is_seeded_padded_crop_flip(cifar_root):
    root, truth = cifar_root
    dm = CIFAR10DataModule(root=root, val_size=20)
    dm.setup("fit")
    ds = dm.train_set
    raw = ds.dataset[5][0]  # uint8 (3, 32, 32)
    padded = torch.nn.functional.pad(raw, (4, 4, 4, 4))
    crops = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        x = _unnormalise(ds[5][0])
        assert torch.equal(x, _unnormalise(ds[5][0]))
        found = [(i, j, f) for i in range(9) for j in range(9) for f in (False, True)
                 if torch.equal(x, (lambda c: c.flip(2) if f else c)(padded[:, i:i + 32, j:j + 32]))]
        assert found, f"epoch {epoch}: not a padded crop (+flip) of the stored image"
        crops.add(found[0])
    assert len(crops) > 1


def test_train_loader_and_resize(cifar_root):
    root, _ = cifar_root
    dm = CIFAR10DataModule(root=root, val_size=20, batch_size=8, image_size=40)
    assert dm.image_size == 40
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 40, 40) and y.dtype == torch.int64
    assert next(iter(dm.val_dataloader()))[0].shape == (8, 3, 40, 40)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare_cifar10.py --root") as e:
        CIFAR10DataModule(root=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(e.value)
    write_fake_cifar(tmp_path / "c" / "cifar-10-batches-py")
    (tmp_path / "c" / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        CIFAR10DataModule(root=tmp_path / "c")


# -- data_scripts/prepare_cifar10.py ------------------------------------------------------------------

def _load_script():
    spec = importlib.util.spec_from_file_location("prepare_cifar10", ROOT / "data_scripts" / "prepare_cifar10.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_tarball(tmp_path: Path, drop: str = "") -> tuple[Path, str]:
    src = tmp_path / "src"
    write_fake_cifar(src / "cifar-10-batches-py")
    if drop:
        (src / "cifar-10-batches-py" / drop).unlink()
    tgz = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return tgz, hashlib.md5(tgz.read_bytes()).hexdigest()


def test_prepare_from_tarball(tmp_path, capsys):
    script = _load_script()
    tgz, md5 = _fake_tarball(tmp_path)
    root = tmp_path / "data"
    assert script.main(["--root", str(root), "--from-tarball", str(tgz), "--md5", md5]) == 0
    out = capsys.readouterr().out
    assert f"python train.py model=vit data=cifar10 data.root={root}" in out
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]  # no temp folder left behind
    dm = CIFAR10DataModule(root=root, val_size=10)
    dm.setup("fit")
    assert len(dm.test_set) == N_TEST
    # a second run sees the prepared data and does nothing
    assert script.main(["--root", str(root), "--from-tarball", str(tgz), "--md5", md5]) == 0
    assert "already prepared" in capsys.readouterr().out


def test_prepare_rejects_bad_md5_and_incomplete_tarball(tmp_path):
    script = _load_script()
    tgz, md5 = _fake_tarball(tmp_path)
    root = tmp_path / "data"
    with pytest.raises(SystemExit, match="md5"):  # default: the official md5, which the fake lacks
        script.main(["--root", str(root), "--from-tarball", str(tgz)])
    assert not (root / "cifar-10-batches-py").exists()
    bad, bad_md5 = _fake_tarball(tmp_path / "partial", drop="test_batch")
    with pytest.raises(SystemExit, match="test_batch"):
        script.main(["--root", str(root), "--from-tarball", str(bad), "--md5", bad_md5])
    assert list(root.iterdir()) == []  # nothing half-extracted
    with pytest.raises(SystemExit, match="does not exist"):
        script.main(["--root", str(root), "--from-tarball", str(tmp_path / "missing.tar.gz")])
