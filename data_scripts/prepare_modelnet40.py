"""Prepare ModelNet40 for ``data=modelnet40`` (or, converted to point sets, ``data=point_folder``).

Two sources, both 40 classes, 9843 train / 2468 test shapes:

* ``--format txt`` (default): ``modelnet40_normal_resampled.zip``, 10k points with normals per shape, the
  data Point-BERT and PointNet++ train on; gives ``<root>/modelnet40_normal_resampled/``.
* ``--format off``: Princeton's ``ModelNet40.zip`` meshes; gives ``<root>/ModelNet40/<class>/{train,test}/``.

    python data_scripts/prepare_modelnet40.py --root data/modelnet40
    python data_scripts/prepare_modelnet40.py --root data/modelnet40 \\
        --from-archive ~/Downloads/modelnet40_normal_resampled.zip
    python data_scripts/prepare_modelnet40.py --root data/modelnet40 --format off --from-archive ModelNet40.zip \\
        --to-npy data/modelnet40_npy --num-points 1024

``--to-npy OUT`` also writes every shape as a fixed-size ``.npy`` point set to ``OUT/{train,test}/<class>/``
(meshes sampled on their surface, then farthest point sampling, all deterministic from ``--seed``), which
``data=point_folder`` reads much faster than meshes. Extraction goes to a temporary folder inside ``root``
and is moved into place only once complete. Neither archive has a published checksum: the script prints
the md5 it computed; pass ``--md5`` to check a known one.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from point_archives import (check_md5, convert_to_npy, download, extract_archive, find_dir,  # noqa: E402
                            replace_dir, temp_dir)

URLS = {"txt": "https://shapenet.cs.stanford.edu/media/modelnet40_normal_resampled.zip",
        "off": "http://modelnet.cs.princeton.edu/ModelNet40.zip"}
FOLDERS = {"txt": "modelnet40_normal_resampled", "off": "ModelNet40"}
TXT_FILES = ("modelnet40_shape_names.txt", "modelnet40_train.txt", "modelnet40_test.txt")


def is_prepared(folder: Path, fmt: str) -> bool:
    if fmt == "txt":
        return all((folder / f).is_file() for f in TXT_FILES)
    return folder.is_dir() and any((d / "train").is_dir() for d in folder.iterdir())


def list_shapes(folder: Path, fmt: str) -> list[tuple[str, str, Path]]:
    """(split, class, file) of every shape of a prepared folder."""
    shapes = []
    if fmt == "txt":
        for split in ("train", "test"):
            for name in (folder / f"modelnet40_{split}.txt").read_text().split():
                cls = name.rsplit("_", 1)[0]
                shapes.append((split, cls, folder / cls / f"{name}.txt"))
    else:
        for cls_dir in sorted(d for d in folder.iterdir() if d.is_dir()):
            for split in ("train", "test"):
                shapes += [(split, cls_dir.name, f) for f in sorted((cls_dir / split).glob("*.off"))]
    return shapes


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, type=Path, help="folder to create the data set folder in")
    parser.add_argument("--format", choices=sorted(FOLDERS), default="txt",
                        help="txt: modelnet40_normal_resampled.zip; off: Princeton's ModelNet40.zip meshes")
    parser.add_argument("--from-archive", type=Path, default=None, help="use this downloaded zip / tar instead")
    parser.add_argument("--md5", default=None, help="expected md5 of the archive (checked when given)")
    parser.add_argument("--force", action="store_true", help="re-extract even if the data is already there")
    parser.add_argument("--to-npy", type=Path, default=None,
                        help="also write fixed-size .npy point sets to TO_NPY/{train,test}/<class>/")
    parser.add_argument("--num-points", type=int, default=1024, help="points per .npy point set")
    parser.add_argument("--mesh-points", type=int, default=8192, help="surface samples per mesh before FPS")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mesh surface sampling")
    args = parser.parse_args(argv)

    root = args.root.expanduser()
    target = root / FOLDERS[args.format]
    if not args.force and is_prepared(target, args.format):
        print(f"{target} is already prepared (use --force to redo it)")
    else:
        if args.from_archive is not None:
            archive = args.from_archive.expanduser()
            if not archive.is_file():
                raise SystemExit(f"error: --from-archive {archive} does not exist")
        else:
            root.mkdir(parents=True, exist_ok=True)
            archive = root / Path(URLS[args.format]).name
            if not archive.is_file():
                download(URLS[args.format], archive)
        check_md5(archive, args.md5)
        tmp = temp_dir(root, ".modelnet40-extract-")
        try:
            print(f"extracting {archive}")
            extract_archive(archive, tmp)
            found = find_dir(tmp, FOLDERS[args.format])
            if found is None or not is_prepared(found, args.format):
                need = ", ".join(TXT_FILES) if args.format == "txt" else "<class>/train/*.off"
                raise SystemExit(f"error: {archive} has no {FOLDERS[args.format]}/ folder with {need}; is it "
                                 f"{Path(URLS[args.format]).name} (--format {args.format})?")
            replace_dir(found, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"ModelNet40 ready in {target}")
    cmd = f"python train.py model=point_bert task=point_classification data=modelnet40 data.root={root}"
    if args.format == "off":
        cmd += " data.format=off"
    if args.to_npy is not None:
        out = args.to_npy.expanduser()
        shapes = list_shapes(target, args.format)
        print(f"converting {len(shapes)} shapes to {args.num_points}-point .npy sets in {out}")
        written, skipped = convert_to_npy(((f, out / split / cls / (f.stem + ".npy")) for split, cls, f in shapes),
                                          args.num_points, args.mesh_points, args.seed)
        print(f"wrote {written} point sets, skipped {len(skipped)} malformed files"
              + "".join(f"\n  {s}" for s in skipped[:5]))
        cmd = (f"python train.py model=point_bert task=point_classification data=point_folder data.root={out} "
               f"data.num_points={args.num_points}")
    print(f"train with:\n  {cmd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
