"""Lay out Kinetics-400/600/700 videos (already downloaded) for ``mmzoo.data.VideoDataModule``.

    # annotations: the official {train,validate,test}.csv (label,youtube_id,time_start,time_end,split)
    # videos: files named <youtube_id>_<start:06d>_<end:06d>.<ext> (the usual downloader naming), in
    # one folder or in sub-folders
    python data_scripts/prepare_kinetics.py --annotations kinetics400 --videos k400_videos \\
        --out data/k400 --short-side 256
    python train.py model=timesformer model.name=timesformer_base data=video data.root=data/k400 \\
        data.sampling_rate=32 data.crop_size=224

Writes ``OUT/{train,val,test}/<label>/<video>`` and ``OUT/{train,val,test}.csv``; the official
``validate`` split becomes ``val``, and the official test split (no public labels in Kinetics-400)
is skipped when it has no labels. Videos missing on disk (YouTube removals) are counted, not fatal.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Optional, Sequence

from video_prep import place_videos

SPLIT_FILES = {"train": "train.csv", "val": "validate.csv", "test": "test.csv"}
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi")


def clip_name(youtube_id: str, start: str, end: str) -> str:
    return f"{youtube_id}_{int(float(start)):06d}_{int(float(end)):06d}"


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--annotations", type=Path, required=True, help="folder with train/validate/test.csv")
    ap.add_argument("--videos", type=Path, required=True, help="folder (searched recursively) of the videos")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--short-side", type=int, default=None, help="re-encode with this short side (pixels)")
    ap.add_argument("--copy", action="store_true", help="copy instead of symlinking (no --short-side)")
    args = ap.parse_args(argv)
    on_disk = {p.stem: p for p in args.videos.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS}
    items = []
    for split, fname in SPLIT_FILES.items():
        path = args.annotations / fname
        if not path.is_file():
            print(f"no {path}: split {split} skipped")
            continue
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                label = (row.get("label") or "").strip()
                if not label:
                    continue  # unlabelled test entries
                name = clip_name(row["youtube_id"], row["time_start"], row["time_end"])
                src = on_disk.get(name, args.videos / f"{name}.mp4")  # a missing one is counted later
                items.append((src, label.replace(" ", "_"), split))
    if not items:
        raise SystemExit(f"no labelled entries found in {args.annotations} ({list(SPLIT_FILES.values())})")
    place_videos(items, args.out, args.short_side, args.copy)


if __name__ == "__main__":
    main()
