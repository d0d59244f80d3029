"""Convert data mmzoo reads from folders and tables into WebDataset shards for streaming.

Every sub-command writes ``OUT/000000.tar, 000001.tar ...`` (``--gzip``: ``.tar.gz``) holding
``--shard-size`` samples each (the last one the rest), plus ``OUT/_info.json`` (shard names and sample
counts, the total, the classes / transcript characters) and ``OUT/sizes.json`` (open_clip's
``{shard: count}``), which the streaming data modules read (mmzoo/data/streaming.py). Shards are written with
``webdataset``'s ``ShardWriter``; the samples are members sharing a key (``000000123.jpg`` + ``.txt``...)::

    images  ROOT/<class>/<image>             -> .jpg/.png/.webp + .cls (+ .txt "a photo of a {class}")
    csv     TABLE with filepath,title[,label] -> image + .txt (+ .cls)          (open_clip's CSV layout)
    coco    captions_*.json + image folder    -> image + .txt, one sample per caption
    audio   ROOT/<class>/<clip> or a manifest -> .wav/.flac + .cls, or + .txt transcript
    video   ROOT/<class>/<video>              -> .mp4/.avi/... + .cls
    points  ROOT/<class>/<file>               -> .npy/.ply/.off/.txt/.obj/.stl/.glb + .cls

Files are copied byte for byte (no re-encoding). ``--shuffle`` writes the samples in a seeded random order
(streaming reads shards in order, so shards should be shuffled once here). Unreadable or missing source files
are skipped and named; ``--strict`` stops on the first one.

    python data_scripts/write_shards.py images data/tree --out shards/tree --shard-size 1000 --shuffle
    python data_scripts/write_shards.py csv data/train.csv --out shards/cc --label-key label
    python train.py model=clip data=webdataset_stream 'data.urls="shards/cc/{000000..000009}.tar"'
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")
POINT_EXTENSIONS = (".npy", ".ply", ".off", ".txt", ".xyz", ".obj", ".stl", ".glb")

# one sample to write: key -> (extension -> source file path or str/bytes value)
Sample = dict[str, object]


def class_folders(root: Path, extensions: Sequence[str]) -> tuple[list[tuple[Path, int]], list[str]]:
    """(file, class index) of ``root/<class>/<file>`` (classes sorted by name) and the class names."""
    if not root.is_dir():
        raise SystemExit(f"{root} is not a folder (expected ROOT/<class>/<file>)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise SystemExit(f"no class folders in {root}")
    files = [(p, i) for i, c in enumerate(classes) for p in sorted((root / c).rglob("*"))
             if p.is_file() and p.suffix.lower() in extensions]
    if not files:
        raise SystemExit(f"no {'/'.join(extensions)} files under {root}/<class>/")
    return files, classes


def _ext(path: Path) -> str:
    ext = path.suffix.lower().lstrip(".")
    return "jpg" if ext == "jpeg" else ext


def write_shards(samples: Iterable[Sample], out: Path, shard_size: int, gzip: bool = False,
                 info: Optional[dict] = None, strict: bool = False) -> dict:
    """Write ``samples`` (``{"__key__", ext: path | bytes | str}``) into fixed-size shards with
    ``webdataset.ShardWriter``; returns the ``_info.json`` written next to them."""
    import webdataset as wds

    if shard_size < 1:
        raise SystemExit(f"--shard-size must be >= 1, got {shard_size}")
    out.mkdir(parents=True, exist_ok=True)
    suffix = ".tar.gz" if gzip else ".tar"
    counts: list[int] = []
    skipped: list[str] = []
    with wds.ShardWriter(str(out / f"%06d{suffix}"), maxcount=shard_size, maxsize=float("inf"), verbose=0,
                         mtime=0.0) as writer:
        for sample in samples:
            record = {"__key__": sample["__key__"]}
            try:
                for ext, value in sample.items():
                    if ext == "__key__":
                        continue
                    if isinstance(value, Path):
                        data = value.read_bytes()
                        if not data:
                            raise ValueError(f"{value} is empty")
                        record[ext] = data
                    else:
                        record[ext] = value.encode("utf-8") if isinstance(value, str) else value
            except (OSError, ValueError) as e:
                if strict:
                    raise SystemExit(f"cannot read sample {sample['__key__']}: {e}") from None
                skipped.append(f"{sample['__key__']}: {e}")
                continue
            writer.write(record)
            if not counts or counts[-1] == shard_size:
                counts.append(0)
            counts[-1] += 1
    if not counts:
        raise SystemExit("no sample was written")
    names = [f"{i:06d}{suffix}" for i in range(len(counts))]
    info = {"format": "webdataset", **(info or {}), "total_samples": sum(counts), "shard_size": shard_size,
            "shards": [{"name": n, "samples": c} for n, c in zip(names, counts)], "skipped": skipped}
    (out / "_info.json").write_text(json.dumps(info, indent=1) + "\n")
    (out / "sizes.json").write_text(json.dumps(dict(zip(names, counts)), indent=1) + "\n")
    if skipped:
        print(f"skipped {len(skipped)} unreadable sample(s): {'; '.join(skipped[:5])}", file=sys.stderr)
    return info


def _ordered(items: list, shuffle: bool, seed: int) -> list:
    if shuffle:
        items = list(items)
        random.Random(seed).shuffle(items)
    return items


# -- sources -----------------------------------------------------------------------------------------


def images_source(root: Path, caption_template: Optional[str]) -> tuple[list[Sample], dict]:
    files, classes = class_folders(root, IMAGE_EXTENSIONS)
    samples = []
    for k, (path, label) in enumerate(files):
        s: Sample = {"__key__": f"{k:09d}", _ext(path): path, "cls": str(label)}
        if caption_template:
            s["txt"] = caption_template.format(classes[label])
        samples.append(s)
    return samples, {"modality": "image", "classes": classes}


def csv_source(table: Path, img_key: str, caption_key: str, label_key: Optional[str],
               image_root: Optional[Path]) -> tuple[list[Sample], dict]:
    if not table.is_file():
        raise SystemExit(f"{table} does not exist (a CSV/TSV with a header row)")
    sep = "\t" if table.suffix.lower() in (".tsv", ".tab") else ","
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter=sep))
    if rows and (img_key not in rows[0] or caption_key not in rows[0]):
        raise SystemExit(f"{table} has the columns {list(rows[0])}, not {img_key!r} and {caption_key!r}")
    root = image_root or table.parent
    classes = sorted({r[label_key].strip() for r in rows}) if label_key else None
    index = {c: i for i, c in enumerate(classes or [])}
    samples = []
    for k, r in enumerate(rows):
        path = Path(r[img_key]).expanduser()
        path = path if path.is_absolute() else root / path
        s: Sample = {"__key__": f"{k:09d}", _ext(path): path, "txt": r[caption_key].strip()}
        if label_key:
            s["cls"] = str(index[r[label_key].strip()])
        samples.append(s)
    return samples, {"modality": "image-text", **({"classes": classes} if classes else {})}


def coco_source(annotations: Path, images: Path) -> tuple[list[Sample], dict]:
    data = json.loads(annotations.read_text(encoding="utf-8"))
    files = {im["id"]: images / im["file_name"] for im in data["images"]}
    samples = []
    for k, ann in enumerate(data["annotations"]):
        if ann.get("image_id") in files and str(ann.get("caption", "")).strip():
            path = files[ann["image_id"]]
            samples.append({"__key__": f"{k:09d}", _ext(path): path, "txt": ann["caption"].strip()})
    return samples, {"modality": "image-text"}


def audio_source(root: Path, manifest: Optional[Path], column: str) -> tuple[list[Sample], dict]:
    if manifest is None:
        files, classes = class_folders(root, AUDIO_EXTENSIONS)
        return ([{"__key__": f"{k:09d}", _ext(p): p, "cls": str(y)} for k, (p, y) in enumerate(files)],
                {"modality": "audio", "classes": classes})
    sep = "\t" if manifest.suffix.lower() == ".tsv" else ","
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter=sep))
    if rows and ("path" not in rows[0] or column not in rows[0]):
        raise SystemExit(f"{manifest} has the columns {list(rows[0])}, not 'path' and {column!r}")
    samples, values = [], []
    for k, r in enumerate(rows):
        p = Path(r["path"])
        p = p if p.is_absolute() else manifest.parent / p
        values.append(r[column].strip())
        samples.append({"__key__": f"{k:09d}", _ext(p): p, "value": values[-1]})
    if column == "transcript":
        for s in samples:
            s["txt"] = s.pop("value")
        chars = sorted({c for v in values for c in v.replace(" ", "|")})
        return samples, {"modality": "audio", "vocab": "".join(chars)}
    classes = sorted(set(values))
    index = {c: i for i, c in enumerate(classes)}
    for s in samples:
        s["cls"] = str(index[s.pop("value")])
    return samples, {"modality": "audio", "classes": classes}


def folder_source(root: Path, extensions: Sequence[str], modality: str) -> tuple[list[Sample], dict]:
    files, classes = class_folders(root, extensions)
    return ([{"__key__": f"{k:09d}", _ext(p): p, "cls": str(y)} for k, (p, y) in enumerate(files)],
            {"modality": modality, "classes": classes})


# -- command line ------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("images", "csv", "coco", "audio", "video", "points"):
        p = sub.add_parser(name)
        p.add_argument("source", type=Path, help="the folder / table / annotations file to convert")
        p.add_argument("--out", type=Path, required=True, help="folder of the shards")
        p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
        p.add_argument("--gzip", action="store_true", help="write .tar.gz shards")
        p.add_argument("--shuffle", action="store_true", help="write the samples in a seeded random order")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--strict", action="store_true", help="stop on the first unreadable file")
        if name == "images":
            p.add_argument("--caption-template", default=None,
                           help='also write a caption per image, e.g. "a photo of a {}" (for CLIP)')
        if name == "csv":
            p.add_argument("--img-key", default="filepath")
            p.add_argument("--caption-key", default="title")
            p.add_argument("--label-key", default=None)
            p.add_argument("--image-root", type=Path, default=None)
        if name == "coco":
            p.add_argument("--images", type=Path, required=True, help="the folder of the file_names")
        if name == "audio":
            p.add_argument("--manifest", action="store_true", help="SOURCE is a path,label / path,transcript table")
            p.add_argument("--column", default="label", help="manifest column: label or transcript")
    args = ap.parse_args(argv)
    if args.command == "images":
        samples, info = images_source(args.source, args.caption_template)
    elif args.command == "csv":
        samples, info = csv_source(args.source, args.img_key, args.caption_key, args.label_key, args.image_root)
    elif args.command == "coco":
        samples, info = coco_source(args.source, args.images)
    elif args.command == "audio":
        samples, info = audio_source(args.source, args.source if args.manifest else None, args.column)
    elif args.command == "video":
        samples, info = folder_source(args.source, VIDEO_EXTENSIONS, "video")
    else:
        samples, info = folder_source(args.source, POINT_EXTENSIONS, "points")
    samples = _ordered(samples, args.shuffle, args.seed)
    result = write_shards(samples, args.out, args.shard_size, args.gzip, info, args.strict)
    last = len(result["shards"]) - 1
    ext = ".tar.gz" if args.gzip else ".tar"
    print(f"wrote {result['total_samples']} samples into {last + 1} shard(s) under {args.out}")
    print(f"data.urls='\"{args.out}/{{000000..{last:06d}}}{ext}\"'")
    return result


if __name__ == "__main__":
    main()
