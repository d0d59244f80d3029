"""Lay out UCF101 (already downloaded and extracted) for ``mmzoo.data.VideoDataModule``.

    # UCF-101/<Class>/v_<Class>_gXX_cYY.avi and ucfTrainTestlist/{classInd,trainlist0N,testlist0N}.txt
    python data_scripts/prepare_ucf101.py --videos UCF-101 --splits ucfTrainTestlist --split 1 \\
        --out data/ucf101 --short-side 128
    python train.py model=timesformer data=video data.root=data/ucf101 data.num_frames=8 data.sampling_rate=4

Writes ``OUT/{train,val,test}/<Class>/<video>`` and ``OUT/{train,val,test}.csv``. UCF101 has no
validation split: the highest-numbered group of each class in the training list becomes validation
(groups hold clips cut from the same long video, so splitting by group avoids near-duplicates across
splits). Without ``--short-side`` videos are symlinked (``--copy`` copies them).
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Optional, Sequence

from video_prep import place_videos


def read_split_lists(splits: Path, split: int) -> tuple[list[str], list[str], list[str]]:
    """Class names (classInd order) and the train / test video paths (relative) of split 1, 2 or 3."""
    classes = [line.split()[1] for line in (splits / "classInd.txt").read_text().split("\n") if line.strip()]
    train = [line.split()[0] for line in (splits / f"trainlist0{split}.txt").read_text().split("\n") if line.strip()]
    test = [line.strip() for line in (splits / f"testlist0{split}.txt").read_text().split("\n") if line.strip()]
    return classes, train, test


def group_of(name: str) -> int:
    m = re.search(r"_g(\d+)_c\d+", name)
    if not m:
        raise ValueError(f"UCF101 video name without a group: {name}")
    return int(m.group(1))


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=Path, required=True, help="the extracted UCF-101 folder")
    ap.add_argument("--splits", type=Path, required=True, help="the extracted ucfTrainTestlist folder")
    ap.add_argument("--split", type=int, default=1, choices=(1, 2, 3))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--short-side", type=int, default=None, help="re-encode with this short side (pixels)")
    ap.add_argument("--copy", action="store_true", help="copy instead of symlinking (no --short-side)")
    args = ap.parse_args(argv)
    for p in (args.videos, args.splits / "classInd.txt"):
        if not p.exists():
            raise SystemExit(f"{p} not found: pass the extracted UCF-101 and ucfTrainTestlist folders")
    _, train, test = read_split_lists(args.splits, args.split)
    last_group: dict[str, int] = {}
    for rel in train:
        cls = rel.split("/")[0]
        last_group[cls] = max(last_group.get(cls, 0), group_of(rel))
    items = []
    for rel in train:
        cls = rel.split("/")[0]
        items.append((args.videos / rel, cls, "val" if group_of(rel) == last_group[cls] else "train"))
    items += [(args.videos / rel, rel.split("/")[0], "test") for rel in test]
    place_videos(items, args.out, args.short_side, args.copy)


if __name__ == "__main__":
    main()
