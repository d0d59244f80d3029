"""Prepare ShapeNet-55 (Point-BERT's pre-training data) for ``data=shapenet55``.

The archive (``ShapeNet55-34.zip`` / ``.tar`` from the Point-BERT repository's DATASET.md; it is served
from cloud drives, so there is no download here) holds ``ShapeNet-55/{train,test}.txt`` and
``shapenet_pc/<synset>-<model>.npy`` (8192 points each), possibly below a top folder. This script extracts
it, checks that the split files are well formed and that every listed file exists, and writes

    <root>/ShapeNet-55/{train,test}.txt
    <root>/shapenet_pc/*.npy

    python data_scripts/prepare_shapenet55.py --root data/shapenet55 --from-archive ~/Downloads/ShapeNet55-34.zip

Extraction goes to a temporary folder inside ``root`` and is moved into place only once checked.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from point_archives import check_md5, extract_archive, find_dir, replace_dir, temp_dir  # noqa: E402

SPLITS = ("train", "test")
NAME = re.compile(r"^\d{8}-[^/\\\s]+\.npy$")  # <synset>-<model>.npy


def check_layout(lists: Path, points: Path) -> dict[str, int]:
    """Number of entries per split file; stops naming the problem when a line is malformed or a listed
    file is missing."""
    counts = {}
    for split in SPLITS:
        f = lists / f"{split}.txt"
        if not f.is_file():
            raise SystemExit(f"error: split file {f.name} missing from {lists}")
        names = [s.strip() for s in f.read_text().splitlines() if s.strip()]
        bad = [n for n in names if not NAME.match(n)]
        if bad:
            raise SystemExit(f"error: {f}: {len(bad)} lines are not <synset>-<model>.npy, e.g. {bad[:3]}")
        missing = [n for n in names if not (points / n).is_file()]
        if missing:
            raise SystemExit(f"error: {len(missing)} files listed in {f} are missing from {points}, e.g. {missing[:3]}")
        counts[split] = len(names)
    return counts


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, type=Path, help="folder to write ShapeNet-55/ and shapenet_pc/ in")
    parser.add_argument("--from-archive", type=Path, required=True, help="the downloaded ShapeNet55-34 zip / tar")
    parser.add_argument("--md5", default=None, help="expected md5 of the archive (checked when given)")
    parser.add_argument("--force", action="store_true", help="re-extract even if the data is already there")
    args = parser.parse_args(argv)

    root = args.root.expanduser()
    cmd = f"python train.py model=point_bert data=shapenet55 data.root={root}"
    if not args.force and (root / "ShapeNet-55").is_dir() and (root / "shapenet_pc").is_dir():
        counts = check_layout(root / "ShapeNet-55", root / "shapenet_pc")
        print(f"{root} is already prepared ({counts}; use --force to redo it)\ntrain with:\n  {cmd}")
        return 0
    archive = args.from_archive.expanduser()
    if not archive.is_file():
        raise SystemExit(f"error: --from-archive {archive} does not exist")
    check_md5(archive, args.md5)
    tmp = temp_dir(root, ".shapenet55-extract-")
    try:
        print(f"extracting {archive}")
        extract_archive(archive, tmp)
        lists, points = find_dir(tmp, "ShapeNet-55"), find_dir(tmp, "shapenet_pc")
        if lists is None or points is None:
            raise SystemExit(f"error: {archive} has no ShapeNet-55/ and shapenet_pc/ folders; is it Point-BERT's "
                             f"ShapeNet55-34 archive?")
        counts = check_layout(lists, points)
        replace_dir(lists, root / "ShapeNet-55")
        replace_dir(points, root / "shapenet_pc")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"ShapeNet-55 ready in {root}: {counts['train']} train / {counts['test']} test shapes\n"
          f"train with:\n  {cmd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
