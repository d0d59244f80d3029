"""Point-file readers (mmzoo/data/point_files.py) on tiny trees written here: ModelNet40 txt and off,
ShapeNet-55 npy, a class-per-folder tree of npy / ply / off; malformed files skipped and counted, or raised
with strict; a Point-BERT classification step trains on the folder tree."""
from __future__ import annotations

import hashlib
import importlib.util
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mmzoo.data import ModelNet40DataModule, PointFolderDataModule, ShapeNet55DataModule
from mmzoo.data.points import normalize_unit_sphere
from mmzoo.layers.points import farthest_point_sample
from mmzoo.data.point_files import MalformedPointFileError, load_point_file, read_off, read_ply
from mmzoo.training import build, train


# -- writers of tiny point files ---------------------------------------------------------------------

# a cube [-1, 1]^3 as 6 quads: fan triangulation turns each into 2 triangles
CUBE_V = np.array([[x, y, z] for x in (-1.0, 1.0) for y in (-1.0, 1.0) for z in (-1.0, 1.0)])
CUBE_QUADS = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]


def cloud(n: int, seed: int, stretch=(1.0, 1.0, 1.0)) -> np.ndarray:
    """n points (n, 3), off-centre and stretched so that normalisation has something to do."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3)) * np.array(stretch) + np.array([3.0, -2.0, 0.5])


def write_txt(path: Path, pts: np.ndarray) -> Path:
    """ModelNet40 resampled layout: x,y,z,nx,ny,nz per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    normals = np.tile([0.0, 0.0, 1.0], (len(pts), 1))
    np.savetxt(path, np.concatenate([pts, normals], 1), fmt="%.6f", delimiter=",")
    return path


def write_npy(path: Path, pts: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, pts.astype(np.float32))
    return path


def write_ply(path: Path, pts: np.ndarray, binary: bool, truncate: int = 0) -> Path:
    """PLY with vertex x, y, z (float) plus a uchar property and a face element, as exporters write them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "binary_little_endian" if binary else "ascii"
    header = (f"ply\nformat {fmt} 1.0\ncomment made by a test\nelement vertex {len(pts)}\nproperty float x\n"
              f"property float y\nproperty float z\nproperty uchar intensity\nelement face 0\n"
              f"property list uchar int vertex_indices\nend_header\n").encode()
    pts = pts.astype(np.float32)
    if binary:
        rec = np.zeros(len(pts), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("i", "u1")])
        rec["x"], rec["y"], rec["z"], rec["i"] = pts[:, 0], pts[:, 1], pts[:, 2], 7
        body = rec.tobytes()
    else:  # repr of float32 round-trips exactly
        body = "".join(f"{repr(float(a))} {repr(float(b))} {repr(float(c))} 7\n" for a, b, c in pts).encode()
    data = header + body
    path.write_bytes(data[:len(data) - truncate])
    return path


def write_off(path: Path, vertices: np.ndarray, faces, header: str = "OFF") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [header, f"{len(vertices)} {len(faces)} 0"]
    lines += [" ".join(f"{v:.6f}" for v in row) for row in vertices]
    lines += [" ".join(str(i) for i in [len(f), *f]) for f in faces]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_modelnet_txt(root: Path, classes=("airplane", "night_stand", "vase"), per_class=(3, 1)) -> Path:
    """A tiny ``modelnet40_normal_resampled`` tree: 200-point clouds, split and class-name files."""
    d = root / "modelnet40_normal_resampled"
    splits = {"train": [], "test": []}
    k = 0
    for c in classes:
        for j in range(sum(per_class)):
            name = f"{c}_{j + 1:04d}"
            write_txt(d / c / f"{name}.txt", cloud(200, k))
            splits["train" if j < per_class[0] else "test"].append(name)
            k += 1
    (d / "modelnet40_shape_names.txt").write_text("\n".join(classes) + "\n")
    for s, names in splits.items():
        (d / f"modelnet40_{s}.txt").write_text("\n".join(names) + "\n")
    return d


def write_modelnet_off(root: Path, classes=("bed", "chair"), per_class=(2, 1)) -> Path:
    """A tiny ``ModelNet40/<class>/{train,test}/*.off`` tree of stretched cubes."""
    d = root / "ModelNet40"
    for i, c in enumerate(classes):
        for j in range(sum(per_class)):
            split = "train" if j < per_class[0] else "test"
            write_off(d / c / split / f"{c}_{j + 1:04d}.off", CUBE_V * (1.0 + i), CUBE_QUADS)
    return d


def write_shapenet55(root: Path, synsets=("02691156", "03001627"), per_class=(2, 1)) -> Path:
    """A tiny ShapeNet-55 layout: shapenet_pc/<synset>-<model>.npy and ShapeNet-55/{train,test}.txt."""
    splits = {"train": [], "test": []}
    k = 0
    for s in synsets:
        for j in range(sum(per_class)):
            name = f"{s}-model{j:03d}.npy"
            write_npy(root / "shapenet_pc" / name, cloud(300, 100 + k))
            splits["train" if j < per_class[0] else "test"].append(name)
            k += 1
    (root / "ShapeNet-55").mkdir(parents=True, exist_ok=True)
    for s, names in splits.items():
        (root / "ShapeNet-55" / f"{s}.txt").write_text("\n".join(names) + "\n")
    return root


def _unit_sphere(points: torch.Tensor) -> None:
    assert torch.isfinite(points).all()
    assert torch.allclose(points.norm(dim=-1).amax(dim=-1), torch.ones(points.shape[0]), atol=1e-5)
    assert torch.allclose(points.mean(dim=1), torch.zeros(points.shape[0], 3), atol=1e-5)


# -- file formats ------------------------------------------------------------------------------------

def test_off_quads_are_fanned_and_samples_lie_on_the_surface(tmp_path):
    path = write_off(tmp_path / "cube.off", CUBE_V, CUBE_QUADS)
    v, f = read_off(path)
    assert v.shape == (8, 3) and f.shape == (12, 3)  # 6 quads -> 12 triangles
    p = load_point_file(path, mesh_points=2000, seed=1)
    assert p.shape == (2000, 3)
    # on the surface of [-1, 1]^3: inside the cube and on one of its faces
    assert np.abs(p).max() <= 1 + 1e-6
    assert np.allclose(np.abs(p).max(axis=1), 1.0, atol=1e-6)
    # area-weighted: every face gets about 1/6 of the points
    axis = np.argmax(np.abs(p), axis=1)
    face_counts = np.bincount(axis * 2 + (p[np.arange(2000), axis] > 0), minlength=6)
    assert face_counts.min() > 2000 / 6 * 0.7
    assert np.array_equal(p, load_point_file(path, mesh_points=2000, seed=1))  # deterministic from the seed
    assert not np.array_equal(p, load_point_file(path, mesh_points=2000, seed=2))
    # ModelNet's malformed first line "OFF8 6 0" (header and counts run together)
    merged = tmp_path / "merged.off"
    merged.write_text(path.read_text().replace("OFF\n", "OFF", 1))
    assert np.array_equal(read_off(merged)[1], f)


def test_ply_ascii_and_binary_give_identical_points(tmp_path):
    pts = cloud(50, 0).astype(np.float32)
    a = read_ply(write_ply(tmp_path / "a.ply", pts, binary=False))
    b = read_ply(write_ply(tmp_path / "b.ply", pts, binary=True))
    assert a.shape == (50, 3) and np.array_equal(a, b) and np.array_equal(a, pts.astype(np.float64))
    with pytest.raises(MalformedPointFileError, match="truncated"):
        read_ply(write_ply(tmp_path / "t.ply", pts, binary=True, truncate=10))
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nend_header\n")
    with pytest.raises(MalformedPointFileError, match="no x, y, z"):
        read_ply(bad)


# -- ModelNet40 --------------------------------------------------------------------------------------

def test_modelnet40_txt_layout_and_skip_counting(tmp_path):
    d = write_modelnet_txt(tmp_path)
    bad = np.loadtxt(d / "vase" / "vase_0002.txt", delimiter=",")
    bad[5, 1] = np.nan
    np.savetxt(d / "vase" / "vase_0002.txt", bad, fmt="%.6f", delimiter=",")
    dm = ModelNet40DataModule(root=tmp_path, num_points=64, batch_size=2, augment=False, max_bad_fraction=0.2)
    assert dm.class_names == ["airplane", "night_stand", "vase"] and dm.num_classes == 3
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable or broken point file\(s\) of 9: .*vase_0002\.txt"):
        dm.setup("fit")
    assert dm.num_skipped == 1
    train_set = dm.train_set.dataset
    assert train_set.points.shape == (8, 64, 3) and len(train_set.skipped) == 1
    assert train_set.labels == [0, 0, 0, 1, 1, 1, 2, 2]  # night_stand_0001 -> class "night_stand"
    _unit_sphere(train_set.points)
    assert dm.val_set is dm.test_set and len(dm.test_set) == 3  # ModelNet validates on its test split
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 64, 3) and y.dtype == torch.long
    # the reduction is FPS from the file's first point, then unit-sphere normalisation
    raw = torch.from_numpy(np.loadtxt(d / "airplane" / "airplane_0001.txt", delimiter=",")[:, :3]).float()
    kept = raw[farthest_point_sample(raw[None], 64)[0]]
    assert torch.allclose(train_set.points[0], normalize_unit_sphere(kept), atol=1e-6)
    with pytest.raises(MalformedPointFileError, match=r"vase_0002\.txt"):
        ModelNet40DataModule(root=d, num_points=64, strict=True).setup("fit")


def test_modelnet40_off_layout(tmp_path):
    write_modelnet_off(tmp_path)
    dm = ModelNet40DataModule(root=tmp_path, format="off", num_points=32, mesh_points=256, augment=False)
    dm.setup("fit")
    assert dm.class_names == ["bed", "chair"]
    pts = dm.train_set.dataset.points
    assert pts.shape == (4, 32, 3) and dm.train_set.dataset.labels == [0, 0, 1, 1]
    _unit_sphere(pts)


def test_modelnet40_missing_root_and_split_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare_modelnet40.py") as e:
        ModelNet40DataModule(root=tmp_path / "nowhere")
    assert "nowhere" in str(e.value)
    d = write_modelnet_txt(tmp_path)
    (d / "modelnet40_test.txt").unlink()
    dm = ModelNet40DataModule(root=tmp_path, num_points=64)
    with pytest.raises(FileNotFoundError, match="modelnet40_test.txt"):
        dm.setup("fit")


# -- ShapeNet-55 -------------------------------------------------------------------------------------

def test_shapenet55_layout_too_few_points_and_missing_split(tmp_path):
    write_shapenet55(tmp_path)
    write_npy(tmp_path / "shapenet_pc" / "03001627-tiny.npy", cloud(5, 9))  # too few points
    with open(tmp_path / "ShapeNet-55" / "train.txt", "a") as f:
        f.write("03001627-tiny.npy\n")
    dm = ShapeNet55DataModule(root=tmp_path, num_points=64, augment=False, max_bad_fraction=0.5)
    assert dm.class_names == ["02691156", "03001627"]
    dm.setup("fit")
    ds = dm.train_set.dataset
    assert ds.points.shape == (4, 64, 3) and ds.labels == [0, 0, 1, 1]
    assert len(ds.skipped) == 1 and "fewer than data.min_points" in ds.skipped[0][1]
    _unit_sphere(ds.points)
    # random subsets are deterministic from the seed
    again = ShapeNet55DataModule(root=tmp_path, num_points=64, augment=False, max_bad_fraction=0.5)
    again.setup("fit")
    assert torch.equal(again.train_set.dataset.points, ds.points)
    with pytest.raises(MalformedPointFileError, match="03001627-tiny.npy"):
        ShapeNet55DataModule(root=tmp_path, num_points=64, strict=True).setup("fit")
    (tmp_path / "ShapeNet-55" / "test.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"ShapeNet-55 test split file.*test\.txt"):
        ShapeNet55DataModule(root=tmp_path)


# -- class-per-folder tree ---------------------------------------------------------------------------

def write_folder_tree(root, malformed: bool = True):
    """3 classes x 3 train files (npy, ascii ply, binary ply / off), 1 test file each, plus malformed ones."""
    for i, c in enumerate(["box", "cloud", "flat"]):
        pts = lambda k: cloud(200, 10 * i + k, stretch=(1.0, 1.0, 0.1) if c == "flat" else (1.0, 1.0, 1.0))
        if c == "box":
            for k in range(3):
                write_off(root / "train" / c / f"m{k}.off", CUBE_V * (1 + k), CUBE_QUADS)
        else:
            write_npy(root / "train" / c / "a.npy", pts(0))
            write_ply(root / "train" / c / "b.ply", pts(1), binary=False)
            write_ply(root / "train" / c / "c.ply", pts(2), binary=True)
        write_npy(root / "test" / c / "t.npy", pts(3))
    if malformed:
        (root / "train" / "box" / "bad_header.off").write_text("OF\n8 6 0\n")
        write_txt(root / "train" / "cloud" / "nan.txt", np.full((100, 3), np.nan))
        write_npy(root / "train" / "cloud" / "few.npy", cloud(3, 0))
        write_ply(root / "train" / "flat" / "cut.ply", cloud(200, 5), binary=True, truncate=100)
        (root / "train" / "flat" / "unreadable.npy").write_bytes(b"\x00garbage")
    return root


def test_point_folder_tree_skips_and_counts_malformed_files(tmp_path):
    root = write_folder_tree(tmp_path / "tree")
    dm = PointFolderDataModule(root=root, num_points=64, mesh_points=512, augment=False, max_bad_fraction=0.5)
    assert dm.class_names == ["box", "cloud", "flat"]
    with pytest.warns(UserWarning, match=r"skipped 5 unreadable or broken point file\(s\) of 14"):
        dm.setup("fit")
    ds = dm.train_set.dataset
    assert ds.points.shape == (9, 64, 3) and ds.labels == [0] * 3 + [1] * 3 + [2] * 3
    skipped = sorted(p.rsplit("/", 1)[1] for p, _ in ds.skipped)
    assert skipped == ["bad_header.off", "cut.ply", "few.npy", "nan.txt", "unreadable.npy"]
    assert dm.num_skipped == 5
    with pytest.raises(MalformedPointFileError, match=r"5 of the 14 point files .*max_bad_fraction=0\.1"):
        PointFolderDataModule(root=root, num_points=64, mesh_points=512).setup("fit")  # the default cap
    _unit_sphere(ds.points)
    # the stretched "flat" class keeps its shape after normalisation: small z extent
    assert ds.points[6:, :, 2].abs().max() < 0.5 < ds.points[6:, :, :2].abs().max()
    assert len(dm.test_set) == 3 and dm.val_set is dm.test_set
    # strict names the first malformed file (classes and files are read in sorted order)
    with pytest.raises(MalformedPointFileError, match=r"bad_header\.off.*bad OFF header"):
        PointFolderDataModule(root=root, num_points=64, mesh_points=512, strict=True).setup("fit")


def test_point_folder_pads_and_holds_out_val(tmp_path):
    root = tmp_path / "tree"
    for c in ("a", "b"):
        for k in range(5):
            write_npy(root / "train" / c / f"{k}.npy", cloud(40, k))
    dm = PointFolderDataModule(root=root, num_points=64, min_points=16, val_fraction=0.2, augment=False)
    dm.setup("fit")
    assert len(dm.train_set) == 8 and len(dm.val_set) == 2 and sorted(dm.val_set.labels) == [0, 1]
    pts = dm.train_set.dataset.points
    assert pts.shape == (8, 64, 3)
    _unit_sphere(pts)
    # padding keeps all 40 points and repeats some: 40 distinct points per cloud
    assert all(torch.unique(p, dim=0).shape[0] == 40 for p in pts)
    with pytest.raises(FileNotFoundError, match=r"train/<class>/<file>"):
        PointFolderDataModule(root=tmp_path / "empty")


def test_point_bert_classification_trains_on_point_folder(train_cfg, tmp_path):
    root = write_folder_tree(tmp_path / "tree")
    cfg = train_cfg("model=point_bert", "task=point_classification", "data=point_folder", f"data.root={root}",
                    "data.num_points=128", "data.mesh_points=512", "data.batch_size=4",
                    "+model.num_groups=8", "+model.group_size=8", "+model.depth=1", "debug=fdr",
                    "data.max_bad_fraction=0.5")
    _, task = build(cfg)  # num_classes and class_names: auto, from the folder tree
    assert task.model.num_classes == 3 and task.class_names == ["box", "cloud", "flat"]
    m = train(cfg)
    assert 0 <= m["test/acc1"] <= 1


# -- data_scripts/prepare_modelnet40.py, prepare_shapenet55.py ---------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "data_scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _zip_tree(folder: Path, archive: Path, arcroot: str) -> Path:
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(folder.rglob("*")):
            z.write(f, f"{arcroot}/{f.relative_to(folder)}")
    return archive


def test_prepare_modelnet40_txt_from_zip(tmp_path, capsys):
    script = _load_script("prepare_modelnet40")
    src = write_modelnet_txt(tmp_path / "src")
    archive = _zip_tree(src, tmp_path / "modelnet40_normal_resampled.zip", "modelnet40_normal_resampled")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    root = tmp_path / "data"
    with pytest.raises(SystemExit, match="md5 of .* expected 0+"):
        script.main(["--root", str(root), "--from-archive", str(archive), "--md5", "0" * 32])
    assert script.main(["--root", str(root), "--from-archive", str(archive), "--md5", md5]) == 0
    assert f"data=modelnet40 data.root={root}" in capsys.readouterr().out
    assert sorted(p.name for p in root.iterdir()) == ["modelnet40_normal_resampled"]  # no temp folder left
    dm = ModelNet40DataModule(root=root, num_points=64)
    dm.setup("fit")
    assert dm.num_classes == 3 and len(dm.train_set) == 9 and len(dm.test_set) == 3
    assert script.main(["--root", str(root), "--from-archive", str(archive)]) == 0
    assert "already prepared" in capsys.readouterr().out


def test_prepare_modelnet40_off_from_tar_to_npy(tmp_path, capsys):
    script = _load_script("prepare_modelnet40")
    src = write_modelnet_off(tmp_path / "src")
    (src / "chair" / "train" / "broken.off").write_text("COFF\n")
    archive = tmp_path / "ModelNet40.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="ModelNet40")
    root, out = tmp_path / "data", tmp_path / "npy"
    assert script.main(["--root", str(root), "--format", "off", "--from-archive", str(archive),
                        "--to-npy", str(out), "--num-points", "32", "--mesh-points", "256"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 6 point sets, skipped 1 malformed files" in printed and "broken.off" in printed
    assert f"data=point_folder data.root={out} data.num_points=32" in printed
    saved = np.load(out / "train" / "bed" / "bed_0001.npy")
    assert saved.shape == (32, 3) and saved.dtype == np.float32
    dm = PointFolderDataModule(root=out, num_points=32, augment=False)
    dm.setup("fit")
    assert dm.class_names == ["bed", "chair"] and len(dm.train_set) == 4 and len(dm.test_set) == 2
    with pytest.raises(SystemExit, match=r"no modelnet40_normal_resampled/ folder.*--format txt"):
        script.main(["--root", str(tmp_path / "other"), "--from-archive", str(archive), "--format", "txt"])


def test_prepare_shapenet55_from_tar(tmp_path, capsys):
    script = _load_script("prepare_shapenet55")
    src = write_shapenet55(tmp_path / "src" / "ShapeNet55-34")
    archive = tmp_path / "ShapeNet55-34.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(src, arcname="ShapeNet55-34")
    root = tmp_path / "data"
    assert script.main(["--root", str(root), "--from-archive", str(archive)]) == 0
    assert "2 test shapes" in capsys.readouterr().out
    assert sorted(p.name for p in root.iterdir()) == ["ShapeNet-55", "shapenet_pc"]
    dm = ShapeNet55DataModule(root=root, num_points=64)
    dm.setup("fit")
    assert dm.num_classes == 2 and len(dm.train_set) == 4
    # a listed file missing from the archive is named
    (src / "shapenet_pc" / "03001627-model001.npy").unlink()
    broken = tmp_path / "broken.zip"
    _zip_tree(src, broken, "ShapeNet55-34")
    with pytest.raises(SystemExit, match="missing from .*03001627-model001.npy"):
        script.main(["--root", str(tmp_path / "other"), "--from-archive", str(broken)])
    assert not (tmp_path / "other" / "shapenet_pc").exists()


def test_reading_in_chunks_changes_nothing(tmp_path, monkeypatch):
    from mmzoo.data.point_files import PointFileDataset
    files = [(write_npy(tmp_path / f"{k}.npy", cloud(100 + 20 * (k % 2), k)), k % 3) for k in range(7)]
    whole = PointFileDataset(files, num_points=32)
    monkeypatch.setattr(PointFileDataset, "CHUNK", 3)
    chunked = PointFileDataset(files, num_points=32)
    assert torch.equal(whole.points, chunked.points) and whole.labels == chunked.labels == [0, 1, 2, 0, 1, 2, 0]


def test_trimesh_and_plyfile_read_what_the_builtin_parsers_do_not(tmp_path):
    """OBJ / STL / GLB meshes through trimesh (points on the unit cube's surface), and a binary PLY with a
    list property before its vertices (the built-in parser refuses it) through plyfile."""
    trimesh = pytest.importorskip("trimesh")
    plyfile = pytest.importorskip("plyfile")
    from mmzoo.data.point_files import load_point_file, read_ply

    box = trimesh.creation.box(extents=(2.0, 2.0, 2.0))
    for ext in ("obj", "stl", "glb"):
        path = tmp_path / f"box.{ext}"
        box.export(str(path))
        pts = load_point_file(path, mesh_points=500, seed=1)
        assert pts.shape == (500, 3)
        # every sample lies on a face of the cube [-1, 1]^3: its largest |coordinate| is 1
        np.testing.assert_allclose(np.abs(pts).max(axis=1), 1.0, atol=1e-6)
        assert np.array_equal(pts, load_point_file(path, mesh_points=500, seed=1))  # seeded
    xyz = np.random.default_rng(0).normal(size=(40, 3))
    header = np.array([(np.array([1, 2, 3], dtype=np.int32),)], dtype=[("vertex_indices", "O")])
    elements = [plyfile.PlyElement.describe(header, "info"),
                plyfile.PlyElement.describe(np.array([tuple(r) for r in xyz],
                                                     dtype=[("x", "f8"), ("y", "f8"), ("z", "f8")]), "vertex")]
    path = tmp_path / "list_first.ply"
    plyfile.PlyData(elements, text=False).write(str(path))
    with pytest.raises(MalformedPointFileError, match="list"):
        read_ply(path)
    np.testing.assert_array_equal(load_point_file(path), xyz)
