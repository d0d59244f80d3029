"""Point clouds read from files: ModelNet40 (resampled ``.txt`` or ``.off`` meshes), ShapeNet-55 (``.npy``)
and any class-per-folder tree of ``.npy`` / ``.ply`` / ``.off`` / ``.txt`` files.

Every file becomes one ``(points (num_points, 3), label)`` sample: meshes are sampled uniformly on their
surface (area-weighted triangles, deterministic from ``seed``), the cloud is reduced or padded to
``num_points`` (farthest point sampling or a seeded random subset) and scaled into the unit sphere. A split
is read once at ``setup`` and kept in memory; augmentation is the one of :class:`PointCloudDataModule`.

Malformed files (bad header, NaN/inf values, fewer than ``min_points`` points, truncated or unreadable) are
skipped and counted, with one summary line naming the first few; ``strict=True`` raises on the first one,
naming it; more than ``max_bad_fraction`` of a split malformed stops the run (:mod:`mmzoo.data.bad_samples`).
Headers are checked against the file's size before anything is allocated: a ``.npy`` claiming 10^10
points or a ``.ply`` with a negative vertex count is malformed, not a ``MemoryError``. Only numpy and torch
are needed (the PLY and OFF parsers are here).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..layers.points import farthest_point_sample
from .bad_samples import DEFAULT_MAX_BAD_FRACTION, BadSampleError, BadSamples, check_fraction
from .base import sample_seed
from .points import PointCloudDataModule, normalize_unit_sphere, sample_triangles

PathLike = Union[str, os.PathLike]
MESH_EXTENSIONS = (".obj", ".stl", ".glb", ".gltf")  # read with trimesh (optional)
POINT_EXTENSIONS = (".npy", ".ply", ".off", ".txt") + MESH_EXTENSIONS
SAMPLINGS = ("fps", "random")
SPLIT_IDS = {"train": 1, "val": 2, "test": 3}


class MalformedPointFileError(BadSampleError):
    """A point file that cannot be read as a point cloud (raised with ``strict=True``)."""


# --------------------------------------------------------------------------------------------------
# readers: path -> float64 array (N, 3)
# --------------------------------------------------------------------------------------------------
def read_txt(path: PathLike) -> np.ndarray:
    """``x,y,z[,nx,ny,nz,...]`` per line (ModelNet40 resampled; commas or whitespace)."""
    with open(path) as f:
        rows = [line.replace(",", " ").split() for line in f if line.strip()]
    if not rows:
        raise MalformedPointFileError("no points")
    try:
        return np.array([r[:3] for r in rows], dtype=np.float64)
    except ValueError as e:  # ragged rows or non-numbers
        raise MalformedPointFileError(f"not a table of numbers ({e})") from None


def read_npy(path: PathLike) -> np.ndarray:
    """A ``.npy`` array (N, C >= 3); the first three columns are x, y, z. The header's shape and dtype
    are checked against the file's size before the array is read; object (pickled) arrays are refused."""
    fmt = np.lib.format
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        try:
            version = fmt.read_magic(f)
            read_header = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
            if read_header is None:
                raise MalformedPointFileError(f"unsupported .npy format version {version}")
            shape, _, dtype = read_header(f)
        except MalformedPointFileError:
            raise
        except Exception as e:  # noqa: BLE001 - ValueError / EOFError / SyntaxError for a bad header
            raise MalformedPointFileError(f"not a .npy file ({type(e).__name__}: {e})") from None
        data_bytes = size - f.tell()
    if dtype.hasobject:
        raise MalformedPointFileError("an object array (a pickle), refused: point files hold numbers")
    claimed = math.prod(shape) * dtype.itemsize
    if claimed != data_bytes:
        raise MalformedPointFileError(f"the header claims shape {shape} of {dtype} ({claimed:,} bytes) but the "
                                      f"file holds {data_bytes:,} bytes of data (truncated or forged)")
    a = np.load(path, allow_pickle=False)
    if a.ndim != 2 or a.shape[1] < 3:
        raise MalformedPointFileError(f"expected an (N, >=3) array, got shape {a.shape}")
    return a[:, :3].astype(np.float64)


def read_off(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """An OFF mesh: vertices (V, 3) and triangles (F, 3); faces with more than three vertices are split into
    a fan. Accepts ModelNet's malformed first line ``OFF<V> <F> <E>`` (header and counts run together)."""
    with open(path) as f:
        lines = [s for s in (line.split("#", 1)[0].strip() for line in f) if s]
    if not lines or not lines[0].startswith("OFF"):
        raise MalformedPointFileError(f"bad OFF header {lines[0][:40]!r}" if lines else "empty file")
    rest, body = lines[0][3:].split(), lines[1:]
    if not rest:  # the counts are on their own line
        rest, body = (body[0].split(), body[1:]) if body else ([], [])
    try:
        num_v, num_f = int(rest[0]), int(rest[1])
        if num_v < 0 or num_f < 0:
            raise MalformedPointFileError(f"negative counts in the header ({num_v} vertices, {num_f} faces)")
        if len(body) < num_v + num_f:
            raise MalformedPointFileError(f"header announces {num_v} vertices and {num_f} faces, file has "
                                          f"{len(body)} lines")
        vertices = np.array([s.split()[:3] for s in body[:num_v]], dtype=np.float64)
        tris = []
        for s in body[num_v:num_v + num_f]:
            p = s.split()
            n = int(p[0])
            idx = [int(i) for i in p[1:1 + n]]
            if n < 3 or len(idx) != n:
                raise MalformedPointFileError(f"bad face line {s[:40]!r}")
            tris += [(idx[0], idx[k], idx[k + 1]) for k in range(1, n - 1)]  # fan triangulation
    except (IndexError, ValueError) as e:
        if isinstance(e, MalformedPointFileError):
            raise
        raise MalformedPointFileError(f"bad OFF body ({e})") from None
    faces = np.array(tris, dtype=np.int64).reshape(-1, 3)
    if vertices.shape != (num_v, 3) or (faces.size and (faces.min() < 0 or faces.max() >= num_v)):
        raise MalformedPointFileError("face indices out of range or vertices without 3 coordinates")
    return vertices, faces


_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def read_ply(path: PathLike) -> np.ndarray:
    """The x, y, z of a PLY file's ``vertex`` element (ascii, binary_little_endian or binary_big_endian).

    Elements before ``vertex`` are skipped when their size is known (no list properties in binary files);
    elements after it (faces) are ignored."""
    with open(path, "rb") as f:
        data = f.read()
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise MalformedPointFileError("bad PLY header (no 'ply' magic or no 'end_header')")
    body_start = data.index(b"\n", end) + 1 if b"\n" in data[end:] else len(data)
    fmt, elements = None, []  # elements: [name, count, [(type, name) or ("list", ...)]]
    for line in data[:end].decode("ascii", "replace").splitlines()[1:]:
        p = line.split()
        if not p or p[0] in ("comment", "obj_info"):
            continue
        if p[0] == "format" and len(p) >= 2:
            fmt = p[1]
        elif p[0] == "element" and len(p) == 3:
            count = int(p[2]) if p[2].isdigit() else -1
            if count < 0:
                raise MalformedPointFileError(f"PLY element {p[1]!r} has the count {p[2]!r}, not a count >= 0")
            elements.append([p[1], count, []])
        elif p[0] == "property" and elements and len(p) >= 3:
            elements[-1][2].append(("list", p[-1]) if p[1] == "list" else (p[1], p[2]))
        else:
            raise MalformedPointFileError(f"bad PLY header line {line!r}")
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise MalformedPointFileError(f"unknown PLY format {fmt!r}")
    names = [e[0] for e in elements]
    if "vertex" not in names:
        raise MalformedPointFileError("PLY file has no vertex element")
    k = names.index("vertex")
    _, count, props = elements[k]
    cols = [n for _, n in props]
    if not {"x", "y", "z"} <= set(cols):
        raise MalformedPointFileError(f"PLY vertex element has no x, y, z properties ({cols})")
    if fmt == "ascii":
        lines = data[body_start:].decode("ascii", "replace").splitlines()
        skip = sum(e[1] for e in elements[:k])
        rows = [s.split() for s in lines[skip:skip + count]]
        if len(rows) < count or any(len(r) < len(props) for r in rows):
            raise MalformedPointFileError(f"PLY body ends before its {count} vertices")
        try:
            table = np.array([r[:len(props)] for r in rows], dtype=np.float64)
        except ValueError as e:
            raise MalformedPointFileError(f"bad PLY vertex row ({e})") from None
        return table[:, [cols.index(c) for c in "xyz"]]
    order = "<" if fmt == "binary_little_endian" else ">"
    offset = body_start
    for e in elements[:k + 1]:
        if any(t == "list" or t not in _PLY_TYPES for t, _ in e[2]):
            raise MalformedPointFileError(f"binary PLY element {e[0]!r} before the vertices has list or "
                                          f"unknown properties; cannot skip it")
        dtype = np.dtype([(n, order + _PLY_TYPES[t]) for t, n in e[2]])
        if e is elements[k]:
            if len(data) - offset < dtype.itemsize * count:
                raise MalformedPointFileError(f"binary PLY truncated: {count} vertices need "
                                              f"{dtype.itemsize * count} bytes, {len(data) - offset} left")
            table = np.frombuffer(data, dtype, count, offset)
            return np.stack([table[c].astype(np.float64) for c in "xyz"], axis=-1)
        offset += dtype.itemsize * e[1]
    raise AssertionError("unreachable")


def read_mesh_trimesh(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) and triangles (F, 3) of an OBJ / STL / GLB / glTF mesh read with ``trimesh`` (an
    optional dependency: ``pip install 'mmzoo[meshes]'``); a scene's meshes are concatenated."""
    try:
        import trimesh
    except ImportError:
        raise MalformedPointFileError(f"reading {os.path.splitext(str(path))[1]} meshes needs trimesh: "
                                      f"pip install 'mmzoo[meshes]'") from None
    try:
        mesh = trimesh.load(str(path), force="mesh", process=False)
    except Exception as e:  # noqa: BLE001 - trimesh raises many types for broken files
        raise MalformedPointFileError(f"trimesh cannot read the mesh ({type(e).__name__}: {e})") from None
    vertices = np.asarray(getattr(mesh, "vertices", ()), dtype=np.float64).reshape(-1, 3)
    faces = np.asarray(getattr(mesh, "faces", ()), dtype=np.int64).reshape(-1, 3)
    return vertices, faces


def read_ply_plyfile(path: PathLike) -> np.ndarray:
    """x, y, z of a PLY's ``vertex`` element read with ``plyfile`` (optional: ``pip install 'mmzoo[meshes]'``),
    for variants :func:`read_ply` does not parse (list properties before the vertices in a binary file ...)."""
    from plyfile import PlyData

    vertex = PlyData.read(str(path))["vertex"]
    return np.stack([np.asarray(vertex[c], dtype=np.float64) for c in "xyz"], axis=-1)


def _sample_mesh(vertices: np.ndarray, faces: np.ndarray, mesh_points: int, seed: int) -> np.ndarray:
    if len(faces) == 0:
        raise MalformedPointFileError("mesh has no faces")
    if not np.isfinite(vertices).all():
        raise MalformedPointFileError("non-finite vertex coordinates (NaN or inf)")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise MalformedPointFileError("face indices out of range")
    g = torch.Generator().manual_seed(seed)
    try:
        points = sample_triangles(torch.from_numpy(vertices), torch.from_numpy(faces), mesh_points, g)
    except ValueError as e:  # no surface area
        raise MalformedPointFileError(str(e)) from None
    return points.numpy()


def load_point_file(path: PathLike, mesh_points: int = 8192, seed: int = 0) -> np.ndarray:
    """Points (N, 3) of any supported file; meshes (``.off``; ``.obj``, ``.stl``, ``.glb``, ``.gltf`` with
    trimesh) give ``mesh_points`` surface samples drawn from ``seed``. A ``.ply`` the built-in parser
    refuses is read with plyfile when it is installed. Raises :class:`MalformedPointFileError` (or
    ``OSError``) on a bad file."""
    ext = os.path.splitext(str(path))[1].lower()
    if ext == ".off":
        return _sample_mesh(*read_off(path), mesh_points, seed)
    if ext in MESH_EXTENSIONS:
        return _sample_mesh(*read_mesh_trimesh(path), mesh_points, seed)
    if ext == ".ply":
        try:
            return read_ply(path)
        except MalformedPointFileError as first:
            try:
                return read_ply_plyfile(path)
            except ImportError:
                raise first from None
            except Exception:  # noqa: BLE001 - plyfile cannot read it either: the built-in parser's reason
                raise first from None
    readers: dict[str, Callable[[PathLike], np.ndarray]] = {".txt": read_txt, ".npy": read_npy}
    if ext not in readers:
        raise MalformedPointFileError(f"unsupported extension {ext!r}; supported: {POINT_EXTENSIONS}")
    return readers[ext](path)


# --------------------------------------------------------------------------------------------------
# a split of files in memory
# --------------------------------------------------------------------------------------------------
class PointFileDataset(Dataset):
    """Reads ``(path, label)`` files once into a tensor (len, num_points, 3) of unit-sphere clouds.

    Args:
        samples: ``(path, label)`` pairs.
        num_points: points per cloud (fewer in a file: padded by repeating seeded random points).
        sampling: "fps" (farthest point sampling from the first point, as Point-BERT's ModelNet loader) or
            "random" (a seeded random subset).
        seed: sample ``i`` of the listing draws its randomness from ``(seed, split, i)``.
        split: sample ``i`` of the listing draws its randomness from ``(seed, split, i)``.
        strict: raise on a malformed file instead of skipping it.
        min_points: files with fewer points are malformed.
        mesh_points: surface samples drawn from a mesh before ``sampling`` reduces them.
        name: data set name for the skip summary.
        bad: the split's :class:`~mmzoo.data.bad_samples.BadSamples` (default: one from ``strict``).
    """

    CHUNK = 512  # files read before their clouds are reduced to num_points

    def __init__(self, samples: Sequence[tuple[PathLike, int]], num_points: int, sampling: str = "fps",
                 seed: int = 0, split: str = "train", strict: bool = False, min_points: int = 32,
                 mesh_points: int = 8192, name: str = "point files", bad: Optional[BadSamples] = None) -> None:
        if sampling not in SAMPLINGS:
            raise ValueError(f"data.sampling must be one of {SAMPLINGS}, got {sampling!r}")
        bad = bad if bad is not None else BadSamples(f"{name} {split}", strict, DEFAULT_MAX_BAD_FRACTION,
                                                     MalformedPointFileError, "point file")
        seen = len(bad.scan)
        self.labels: list[int] = []
        self.paths: list[str] = []
        raw: list[tuple[int, np.ndarray]] = []
        done: list[torch.Tensor] = []  # resampled in chunks: full-size clouds of a whole split need not fit in memory
        for i, (path, label) in enumerate(samples):
            s = sample_seed(seed, SPLIT_IDS.get(split, 0), i)
            try:
                pts = load_point_file(path, mesh_points, s)
                if pts.shape[0] < min_points:
                    raise MalformedPointFileError(f"{pts.shape[0]} points, fewer than data.min_points={min_points}")
                if not np.isfinite(pts).all():
                    raise MalformedPointFileError("non-finite coordinates (NaN or inf)")
                if np.ptp(pts, axis=0).max() <= 0:
                    raise MalformedPointFileError("all points coincide")
            except Exception as e:  # noqa: BLE001 - parsers of hostile files: every failure is a bad file
                bad.reject(str(path), e)
                continue
            raw.append((s, pts.astype(np.float32)))
            self.labels.append(int(label))
            self.paths.append(str(path))
            if len(raw) == self.CHUNK:
                done.append(self._resample(raw, num_points, sampling))
                raw = []
        self.skipped: list[tuple[str, str]] = bad.scan[seen:]  # (path, reason) of this listing
        bad.scanned(len(samples))
        done.append(self._resample(raw, num_points, sampling))
        self.points = torch.cat(done)

    @staticmethod
    def _resample(raw: list[tuple[int, np.ndarray]], num_points: int, sampling: str) -> torch.Tensor:
        out = torch.empty(len(raw), num_points, 3)
        fps_groups: dict[int, list[int]] = {}  # clouds of one size go through FPS together
        for j, (s, pts) in enumerate(raw):
            p = torch.from_numpy(pts)
            n = p.shape[0]
            if n < num_points:  # pad: every point once, then seeded repeats
                g = torch.Generator().manual_seed(s)
                p = torch.cat([p, p[torch.randint(n, (num_points - n,), generator=g)]])
            elif n > num_points and sampling == "random":
                g = torch.Generator().manual_seed(s)
                p = p[torch.randperm(n, generator=g)[:num_points]]
            elif n > num_points:
                fps_groups.setdefault(n, []).append(j)
                continue
            out[j] = normalize_unit_sphere(p)
        for n, idx in fps_groups.items():
            for c in range(0, len(idx), 64):
                chunk = idx[c:c + 64]
                xyz = torch.stack([torch.from_numpy(raw[j][1]) for j in chunk])  # (B, n, 3)
                sel = farthest_point_sample(xyz, num_points)  # (B, num_points)
                for b, j in enumerate(chunk):
                    out[j] = normalize_unit_sphere(xyz[b, sel[b]])
        return out

    def subset(self, indices: Sequence[int]) -> "PointFileDataset":
        """A dataset holding only ``indices`` (used to hold out a validation split)."""
        new = object.__new__(PointFileDataset)
        new.skipped = []
        new.points = self.points[list(indices)]
        new.labels = [self.labels[i] for i in indices]
        new.paths = [self.paths[i] for i in indices]
        return new

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.points[index], self.labels[index]


# --------------------------------------------------------------------------------------------------
# data modules
# --------------------------------------------------------------------------------------------------
def _require(path: Path, what: str, hint: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}. {hint}")
    return path


def _read_list(path: Path) -> list[str]:
    return [s.strip() for s in path.read_text().splitlines() if s.strip()]


class PointFilesDataModule(PointCloudDataModule):
    """What the file-backed point data modules share: class names known at construction (so ``auto``
    config values resolve), splits read at ``setup``. Subclasses set ``class_names`` and implement
    :meth:`list_split` returning ``(path, label)`` pairs, or ``None`` for a split the layout lacks.

    Args:
        root: data folder.
        sampling: "fps" or "random" reduction to ``num_points`` (deterministic).
        strict: raise on the first malformed file instead of skipping it.
        min_points: files with fewer points are malformed.
        mesh_points: surface samples drawn from each mesh before the reduction.
        max_bad_fraction: fail when more than this share of a split's files is malformed.

    Other arguments: see :class:`PointCloudDataModule`.
    """

    def __init__(self, root: PathLike, batch_size: int = 32, num_workers: int = 0, seed: int = 0,
                 pin_memory: bool = False, eval_batch_size: Optional[int] = None, num_points: int = 1024,
                 augment: bool = True, rotate: str = "none", jitter: float = 0.0,
                 labels_per_class: Optional[int] = None, sampling: str = "fps", strict: bool = False,
                 min_points: int = 32, mesh_points: int = 8192,
                 max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory, eval_batch_size, num_points, augment,
                         rotate, jitter, labels_per_class)
        if sampling not in SAMPLINGS:
            raise ValueError(f"data.sampling must be one of {SAMPLINGS}, got {sampling!r}")
        self.root = Path(os.path.expanduser(str(root)))
        self.sampling, self.strict, self.min_points, self.mesh_points = sampling, strict, min_points, mesh_points
        self.max_bad_fraction = check_fraction(max_bad_fraction)

    def list_split(self, split: str) -> Optional[list[tuple[Path, int]]]:
        raise NotImplementedError

    def read_split(self, split: str, samples: Sequence[tuple[Path, int]]) -> PointFileDataset:
        bad = self.bad_samples_of(split, f"the {split} split of {type(self).__name__} under {self.root}",
                                  "point file", MalformedPointFileError)
        ds = PointFileDataset(samples, self.num_points, self.sampling, self.seed, split, self.strict,
                              self.min_points, self.mesh_points, type(self).__name__, bad)
        if len(ds) == 0:
            raise ValueError(f"{type(self).__name__}: no readable point file in the {split} split under {self.root} "
                             f"({len(samples)} listed, {len(ds.skipped)} malformed)")
        return ds

    def build_splits(self):
        train = self.read_split("train", self.list_split("train"))
        val_list, test_list = self.list_split("val"), self.list_split("test")
        val = self.read_split("val", val_list) if val_list is not None else None
        test = self.read_split("test", test_list) if test_list is not None else None
        if val is None and test is None:
            raise FileNotFoundError(f"{type(self).__name__}: no val or test split under {self.root}")
        return train, val if val is not None else test, test if test is not None else val


class ModelNet40DataModule(PointFilesDataModule):
    """ModelNet40, 40 classes, 9843 train / 2468 test shapes (the test split also validates, as Point-BERT).

    ``format="txt"``: the resampled point sets (``modelnet40_normal_resampled/``, 10k points per shape,
    ``x,y,z,nx,ny,nz`` lines) with ``modelnet40_shape_names.txt`` and ``modelnet40_{train,test}.txt``.
    ``format="off"``: the original meshes ``ModelNet40/<class>/{train,test}/<class>_0001.off``, sampled on
    their surface. ``root`` is the folder itself or its parent. Prepare with
    ``data_scripts/prepare_modelnet40.py``.

    Args:
        format: "txt" or "off".

    Other arguments: see :class:`PointFilesDataModule`.
    """

    FOLDERS = {"txt": "modelnet40_normal_resampled", "off": "ModelNet40"}

    def __init__(self, root: PathLike, format: str = "txt", **kwargs) -> None:
        super().__init__(root, **kwargs)
        if format not in self.FOLDERS:
            raise ValueError(f"data.format must be one of {list(self.FOLDERS)}, got {format!r}")
        self.format = format
        hint = (f"Set data.root to the folder holding {self.FOLDERS[format]}/ (or that folder itself); "
                f"prepare it with python data_scripts/prepare_modelnet40.py --root {self.root}")
        _require(self.root, "ModelNet40 root", hint)
        if (self.root / self.FOLDERS[format]).is_dir():
            self.root = self.root / self.FOLDERS[format]
        if format == "txt":
            names = _require(self.root / "modelnet40_shape_names.txt", "ModelNet40 class list", hint)
            self.class_names = _read_list(names)
        else:
            self.class_names = sorted(e.name for e in os.scandir(self.root) if e.is_dir() and
                                      (Path(e.path) / "train").is_dir())
            if not self.class_names:
                raise FileNotFoundError(f"no <class>/train/ folder under {self.root}. {hint}")
        self._hint = hint

    def list_split(self, split: str):
        if split == "val":
            return None
        index = {c: i for i, c in enumerate(self.class_names)}
        if self.format == "off":
            return [(self.root / c / split / f, index[c]) for c in self.class_names
                    if (self.root / c / split).is_dir()
                    for f in sorted(os.listdir(self.root / c / split)) if f.lower().endswith(".off")]
        listing = _require(self.root / f"modelnet40_{split}.txt", f"ModelNet40 {split} split file", self._hint)
        samples = []
        for name in _read_list(listing):
            cls = name.rsplit("_", 1)[0]  # night_stand_0001 -> night_stand
            if cls not in index:
                raise ValueError(f"{listing}: {name!r} names class {cls!r}, not in modelnet40_shape_names.txt")
            samples.append((self.root / cls / f"{name}.txt", index[cls]))
        return samples


class ShapeNet55DataModule(PointFilesDataModule):
    """ShapeNet-55 (Point-BERT's pre-training set): ``ShapeNet-55/{train,test}.txt`` list
    ``<synset>-<model>.npy`` files of ``shapenet_pc/`` (8192 points each); the 55 synset ids, sorted, are
    the classes. ``root`` holds both folders. Prepare with ``data_scripts/prepare_shapenet55.py``.

    Args: see :class:`PointFilesDataModule` (``sampling`` defaults to "random", as Point-BERT).
    """

    def __init__(self, root: PathLike, sampling: str = "random", **kwargs) -> None:
        super().__init__(root, sampling=sampling, **kwargs)
        hint = (f"Set data.root to the folder holding ShapeNet-55/ and shapenet_pc/; prepare it with "
                f"python data_scripts/prepare_shapenet55.py --root {self.root} --from-archive PATH")
        _require(self.root, "ShapeNet-55 root", hint)
        _require(self.root / "shapenet_pc", "ShapeNet-55 point folder", hint)
        self.lists = {s: _read_list(_require(self.root / "ShapeNet-55" / f"{s}.txt", f"ShapeNet-55 {s} split file",
                                             hint)) for s in ("train", "test")}
        self.class_names = sorted({n.split("-", 1)[0] for names in self.lists.values() for n in names})

    def list_split(self, split: str):
        if split == "val":
            return None
        index = {c: i for i, c in enumerate(self.class_names)}
        return [(self.root / "shapenet_pc" / n, index[n.split("-", 1)[0]]) for n in self.lists[split]]


class PointFolderDataModule(PointFilesDataModule):
    """Any class-per-folder tree of point files (``.npy``, ``.ply``, ``.off``, ``.txt``):
    ``root/train/<class>/*``, optional ``root/val/<class>/*`` and ``root/test/<class>/*``. Classes are the
    sorted folder names of ``train``. Without ``val`` the test split validates, without ``test`` the val
    split tests, and without both ``val_fraction`` of ``train`` is held out (stratified, from ``seed``).

    Args:
        val_fraction: share of ``train`` held out when there is neither ``val`` nor ``test``.

    Other arguments: see :class:`PointFilesDataModule`.
    """

    LAYOUT = "<root>/train/<class>/<file>, optional <root>/val/<class>/<file> and <root>/test/<class>/<file>"

    def __init__(self, root: PathLike, val_fraction: float = 0.1, **kwargs) -> None:
        super().__init__(root, **kwargs)
        _require(self.root / "train", "point folder train split", f"Expected the layout {self.LAYOUT}.")
        self.class_names = sorted(e.name for e in os.scandir(self.root / "train") if e.is_dir()
                                  and not e.name.startswith("."))
        if not self.class_names:
            raise FileNotFoundError(f"no class folder in {self.root / 'train'}; expected the layout {self.LAYOUT}")
        self.val_fraction = val_fraction

    def list_split(self, split: str):
        d = self.root / split
        if not d.is_dir():
            return None
        samples = []
        for label, name in enumerate(self.class_names):
            for dirpath, _, files in sorted(os.walk(d / name, followlinks=True)):
                samples += [(Path(dirpath) / f, label) for f in sorted(files)
                            if f.lower().endswith(POINT_EXTENSIONS) and not f.startswith(".")]
        return samples

    def build_splits(self):
        if (self.root / "val").is_dir() or (self.root / "test").is_dir():
            return super().build_splits()
        from .transforms import stratified_split
        full = self.read_split("train", self.list_split("train"))
        n_val = max(1, round(self.val_fraction * len(full)))
        train_idx, val_idx = stratified_split(full.labels, [len(full) - n_val, n_val], self.seed)
        val = full.subset(val_idx.tolist())
        return full.subset(train_idx.tolist()), val, val
