"""Convert image-caption datasets already on disk into the formats ``mmzoo.data.captions`` reads: a
captions CSV (``filepath,title[,label]``, paths relative to the CSV) and/or WebDataset tar shards.

    # COCO captions: annotations JSON + image folder
    python data_scripts/prepare_captions.py coco --annotations coco/annotations/captions_train2017.json \\
        --images coco/train2017 --out-dir data/coco --name train --format both
    # Flickr30k: results_20130124.token ("image.jpg#n<TAB>caption") or results.csv ("image| n| caption")
    python data_scripts/prepare_captions.py flickr30k --root flickr30k --out-dir data/flickr30k
    # CC3M-style TSV (caption<TAB>url, no header) whose images were downloaded as <row index>.<ext>
    python data_scripts/prepare_captions.py cc3m --tsv Train_GCC-training.tsv --images cc3m/images \\
        --out-dir data/cc3m --format webdataset
    # a labelled ImageFolder tree (root/<class>/<image>) -> train/test captions CSVs with a label column
    python data_scripts/prepare_captions.py labelled --root my_photos --out-dir data/my_photos \\
        --template "a photo of a {label}" --test-fraction 0.2

Nothing is downloaded. Every output file is written to a temporary name and renamed into place once
complete, so an interrupted run never leaves a truncated CSV or shard that looks ready. Images are copied
into shards byte for byte (formats the reader does not take are re-encoded as PNG). Shards of COCO and
Flickr30k hold one sample per image whose ``.txt`` lists all its captions, one per line: read them with
``data.caption_lines=true`` (the script prints the command).
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import shlex
import sys
import tarfile
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

from mmzoo.data.captions import WDS_IMAGE_EXTENSIONS, read_coco_captions
from mmzoo.data.image_folder import IMG_EXTENSIONS
from mmzoo.data.transforms import stratified_split

FORMATS = ("csv", "webdataset", "both")
FLICKR_CAPTION_FILES = ("results_20130124.token", "results.token", "results.csv", "captions.txt")
FLICKR_IMAGE_DIRS = ("flickr30k-images", "flickr30k_images", "images", "Images")

Sample = tuple[str, list[str]]  # (image path, its captions)


# ----------------------------------------------------------------------------------------------------
# writers
# ----------------------------------------------------------------------------------------------------


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then rename ``tmp`` to ``path`` (same folder, so the rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # a hidden name no reader globs for
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _relative(image: str, folder: Path) -> str:
    try:
        return os.path.relpath(os.path.abspath(image), os.path.abspath(folder))
    except ValueError:  # another drive (Windows): keep it absolute
        return os.path.abspath(image)


def write_csv(path: Path, samples: Iterable[Sample], labels: Optional[Sequence[str]] = None) -> int:
    """One row per caption: ``filepath,title[,label]``, paths relative to the CSV's folder. Returns rows."""
    rows = 0

    def write(tmp: Path) -> None:
        nonlocal rows
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["filepath", "title"] + (["label"] if labels is not None else []))
            for k, (image, captions) in enumerate(samples):
                for caption in captions:
                    w.writerow([_relative(image, path.parent), caption] + ([labels[k]] if labels is not None else []))
                    rows += 1

    _atomic(path, write)
    return rows


def _image_member(image: str) -> tuple[str, bytes]:
    ext = Path(image).suffix.lower().lstrip(".")
    data = Path(image).read_bytes()
    if ext in WDS_IMAGE_EXTENSIONS:
        return ext, data
    from PIL import Image  # only for formats the shard reader does not take (bmp, tif ...)

    buf = io.BytesIO()
    with Image.open(io.BytesIO(data)) as im:
        im.convert("RGB").save(buf, format="PNG")
    return "png", buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed metadata: reproducible shards
    tar.addfile(info, io.BytesIO(data))


def write_shards(out_dir: Path, name: str, samples: Sequence[Sample], shard_size: int) -> list[Path]:
    """WebDataset shards ``<name>-000000.tar`` ...: per image ``<key>.<ext>`` + ``<key>.txt`` (its captions,
    one per line); keys are the sample's position, zero-padded. Returns the shard paths."""
    if shard_size < 1:
        raise SystemExit(f"error: --shard-size must be >= 1, got {shard_size}")
    paths = []
    for s, start in enumerate(range(0, len(samples), shard_size)):
        path = out_dir / f"{name}-{s:06d}.tar"

        def write(tmp: Path, start: int = start) -> None:
            with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
                for k in range(start, min(start + shard_size, len(samples))):
                    image, captions = samples[k]
                    ext, data = _image_member(image)
                    _add(tar, f"{k:09d}.{ext}", data)
                    _add(tar, f"{k:09d}.txt", "\n".join(c.replace("\n", " ") for c in captions).encode("utf-8"))

        _atomic(path, write)
        paths.append(path)
    return paths


def shard_pattern(paths: Sequence[Path]) -> str:
    first, last = paths[0].name, paths[-1].name
    prefix = first[: -len("000000.tar")]
    if len(paths) == 1:
        return str(paths[0])
    return str(paths[0].parent / f"{prefix}{{{first[len(prefix):-4]}..{last[len(prefix):-4]}}}.tar")


def emit(samples: list[Sample], out_dir: Path, name: str, fmt: str, shard_size: int,
         multi_caption: bool) -> list[str]:
    """Write the CSV and/or shards; returns the data-module overrides that read them."""
    if not samples:
        raise SystemExit("error: nothing to write: no image with a caption was found")
    hints = []
    n_captions = sum(len(c) for _, c in samples)
    if fmt in ("csv", "both"):
        path = out_dir / f"{name}.csv"
        rows = write_csv(path, samples)
        print(f"wrote {path}: {rows} captions of {len(samples)} images")
        hints.append(f"data=csv {shlex.quote(f'data.train_file={path}')}")
    if fmt in ("webdataset", "both"):
        paths = write_shards(out_dir, name, samples, shard_size)
        pattern = shard_pattern(paths)
        print(f"wrote {len(paths)} shard(s) {pattern}: {len(samples)} images, {n_captions} captions")
        shards = f'data.shards="{pattern}"'  # Hydra's override grammar reads an unquoted '{' as a dict
        hints.append(f"data=webdataset {shlex.quote(shards)}" + (" data.caption_lines=true" if multi_caption else ""))
    return hints


# ----------------------------------------------------------------------------------------------------
# sources
# ----------------------------------------------------------------------------------------------------


def _group(pairs: Iterable[tuple[str, str]]) -> list[Sample]:
    """(image, caption) pairs -> samples, images in first-seen order."""
    out: dict[str, list[str]] = {}
    for image, caption in pairs:
        out.setdefault(image, []).append(caption)
    return list(out.items())


def _drop_missing(samples: list[Sample], what: str) -> list[Sample]:
    kept = [s for s in samples if os.path.isfile(s[0])]
    if len(kept) < len(samples):
        missing = [s[0] for s in samples if not os.path.isfile(s[0])]
        print(f"warning: {len(missing)} of the {len(samples)} images of {what} do not exist and are left out, "
              f"e.g. {missing[0]}", file=sys.stderr)
    return kept


def coco_samples(annotations: Path, images: Path) -> list[Sample]:
    if not annotations.is_file():
        raise SystemExit(f"error: --annotations {annotations} does not exist")
    if not images.is_dir():
        raise SystemExit(f"error: --images {images} is not a folder")
    try:
        records = read_coco_captions(annotations, images)
    except (ValueError, KeyError) as e:
        raise SystemExit(f"error: {e}") from e
    return _drop_missing(_group((str(r.image), r.caption) for r in records), str(annotations))


def parse_flickr_captions(path: Path) -> Iterator[tuple[str, str]]:
    """(image file name, caption) of a Flickr30k/8k caption file, in file order.

    Two layouts: ``results_20130124.token`` (``1000092795.jpg#0<TAB>caption``, no header) and Kaggle's
    ``results.csv`` (header ``image_name| comment_number| comment``, '|'-separated) or ``captions.txt``
    (header ``image,caption``). Malformed lines are reported and left out.
    """
    bad = 0
    with open(path, encoding="utf-8", newline="") as f:
        first = f.readline()
        head = [c.strip().lower() for c in first.replace("|", ",").split(",")]
        if "\t" in first and "#" in first.split("\t")[0]:
            lines, mode = [first, *f], "token"
        elif head[:1] == ["image_name"] or head[:1] == ["image"]:
            lines, mode = list(f), "pipe" if "|" in first else "comma"
        else:
            raise SystemExit(f"error: {path} is neither a Flickr .token file ('image.jpg#0<TAB>caption') nor a "
                             f"results.csv ('image_name| comment_number| comment') / captions.txt ('image,caption')")
        rows = csv.reader(lines) if mode == "comma" else ([ln] for ln in lines)
        for row in rows:
            if mode == "token":
                image, tab, caption = row[0].rstrip("\r\n").partition("\t")
                image = image.split("#")[0]
            elif mode == "pipe":
                parts = row[0].rstrip("\r\n").split("|", 2)
                image, tab, caption = parts[0], len(parts) == 3, parts[-1]
            else:
                image, tab, caption = (row[0], True, ",".join(row[1:])) if len(row) >= 2 else ("", False, "")
            image, caption = image.strip(), caption.strip()
            if not (image and tab and caption):
                if any(c.strip() for c in row):
                    bad += 1
                continue
            yield image, caption
    if bad:
        print(f"warning: {bad} malformed line(s) of {path} left out", file=sys.stderr)


def _find(root: Path, names: Sequence[str], what: str, is_dir: bool) -> Path:
    for n in names:
        p = root / n
        if (p.is_dir() if is_dir else p.is_file()):
            return p
    raise SystemExit(f"error: no {what} in {root} (looked for {', '.join(names)}); pass it explicitly")


def flickr_samples(captions: Path, images: Path) -> list[Sample]:
    if not captions.is_file():
        raise SystemExit(f"error: caption file {captions} does not exist")
    if not images.is_dir():
        raise SystemExit(f"error: image folder {images} does not exist")
    return _drop_missing(_group((str(images / name), c) for name, c in parse_flickr_captions(captions)),
                         str(captions))


def cc3m_samples(tsv: Path, images: Path) -> list[Sample]:
    """Rows ``caption<TAB>url`` (no header); row ``i``'s image is any file below ``images`` whose name,
    without extension, is ``i`` in decimal (zero padding allowed: ``00000042.jpg``, img2dataset's
    ``00000/000000042.jpg``)."""
    if not tsv.is_file():
        raise SystemExit(f"error: --tsv {tsv} does not exist")
    if not images.is_dir():
        raise SystemExit(f"error: --images {images} is not a folder")
    found: dict[int, str] = {}
    for dirpath, _, files in os.walk(images, followlinks=True):
        for f in files:
            stem, ext = os.path.splitext(f)
            if stem.isdigit() and ext.lower() in IMG_EXTENSIONS:
                found.setdefault(int(stem), os.path.join(dirpath, f))
    samples, rows = [], 0
    with open(tsv, encoding="utf-8", newline="") as f:
        # QUOTE_NONE: captions hold quotes, and the file has no quoting
        for i, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)):
            rows += 1
            if i in found and row and row[0].strip():
                samples.append((found[i], [row[0].strip()]))
    print(f"{len(samples)} of the {rows} rows of {tsv} have an image in {images}")
    return samples


def labelled_tree(root: Path) -> tuple[list[str], list[int], list[str]]:
    """(image paths, class index of each, class folder names) of ``root/<class>/<image>``, sorted."""
    if not root.is_dir():
        raise SystemExit(f"error: --root {root} is not a folder")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise SystemExit(f"error: no class folders in {root}; expected {root}/<class>/<image>")
    paths, class_of = [], []
    for c, name in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(root / name, followlinks=True)):
            for f in sorted(files):
                if f.lower().endswith(IMG_EXTENSIONS) and not f.startswith("."):
                    paths.append(os.path.join(dirpath, f))
                    class_of.append(c)
    if not paths:
        raise SystemExit(f"error: no images ({', '.join(IMG_EXTENSIONS)}) below {root}")
    return paths, class_of, classes


# ----------------------------------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------------------------------


def _output_args(p: argparse.ArgumentParser, default_name: Optional[str]) -> None:
    p.add_argument("--out-dir", required=True, type=Path, help="folder for the CSV / shards")
    p.add_argument("--name", default=default_name, help="file name stem (<name>.csv, <name>-000000.tar)")
    p.add_argument("--format", choices=FORMATS, default="csv", help="what to write (default: csv)")
    p.add_argument("--shard-size", type=int, default=1000, help="images per shard (default: 1000)")


def cmd_coco(args: argparse.Namespace) -> list[str]:
    samples = coco_samples(args.annotations.expanduser(), args.images.expanduser())
    name = args.name or args.annotations.stem.replace("captions_", "")
    return emit(samples, args.out_dir.expanduser(), name, args.format, args.shard_size, multi_caption=True)


def cmd_flickr30k(args: argparse.Namespace) -> list[str]:
    root = args.root.expanduser() if args.root else None
    if root is None and (args.captions is None or args.images is None):
        raise SystemExit("error: pass --root, or both --captions and --images")
    captions = args.captions.expanduser() if args.captions else _find(root, FLICKR_CAPTION_FILES, "caption file", False)
    images = args.images.expanduser() if args.images else _find(root, FLICKR_IMAGE_DIRS, "image folder", True)
    samples = flickr_samples(captions, images)
    return emit(samples, args.out_dir.expanduser(), args.name, args.format, args.shard_size, multi_caption=True)


def cmd_cc3m(args: argparse.Namespace) -> list[str]:
    samples = cc3m_samples(args.tsv.expanduser(), args.images.expanduser())
    name = args.name or args.tsv.stem
    return emit(samples, args.out_dir.expanduser(), name, args.format, args.shard_size, multi_caption=False)


def cmd_labelled(args: argparse.Namespace) -> list[str]:
    if "{label}" not in args.template:
        raise SystemExit(f"error: --template {args.template!r} needs a {{label}} placeholder")
    if not 0 < args.test_fraction < 1:
        raise SystemExit(f"error: --test-fraction must be in (0, 1), got {args.test_fraction}")
    paths, class_of, classes = labelled_tree(args.root.expanduser())
    names = [c.replace("_", " ") for c in classes]  # the label text: "golden_retriever" -> "golden retriever"
    labels = [names[c] for c in class_of]
    counts = Counter(class_of)
    n_test = max(1, round(args.test_fraction * len(paths)))
    if n_test >= len(paths):
        raise SystemExit(f"error: {len(paths)} images are too few to hold out --test-fraction {args.test_fraction}")
    # stratified and a function of --seed only: the same tree gives the same split on every machine
    train_idx, test_idx = stratified_split(class_of, [len(paths) - n_test, n_test], args.seed)
    out = args.out_dir.expanduser()
    written = {}
    for split, idx in (("train", train_idx.tolist()), ("test", test_idx.tolist())):
        samples = [(paths[i], [args.template.format(label=labels[i])]) for i in idx]
        path = out / f"{split}.csv"
        write_csv(path, samples, [labels[i] for i in idx])
        written[split] = path
        print(f"wrote {path}: {len(idx)} images")
    print(f"{len(classes)} classes, {min(counts.values())}-{max(counts.values())} images per class")
    prompt = args.template.replace("{label}", "{}").replace('"', '\\"')
    overrides = [f"data.train_file={written['train']}", f"data.test_file={written['test']}", "data.label_key=label",
                 f'data.zeroshot_templates=["{prompt}"]']  # the prompt of the captions, for zero-shot evaluation
    return ["data=csv " + " ".join(shlex.quote(o) for o in overrides)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("coco", help="COCO captions JSON + image folder")
    p.add_argument("--annotations", required=True, type=Path, help="captions_<split>.json")
    p.add_argument("--images", required=True, type=Path, help="folder of the JSON's file_name entries")
    _output_args(p, None)
    p.set_defaults(run=cmd_coco)

    p = sub.add_parser("flickr30k", help="Flickr30k (or 8k) caption file + image folder")
    p.add_argument("--root", type=Path, help="dataset folder (finds the caption file and image folder in it)")
    p.add_argument("--captions", type=Path, help=f"caption file (default: one of {FLICKR_CAPTION_FILES} in --root)")
    p.add_argument("--images", type=Path, help=f"image folder (default: one of {FLICKR_IMAGE_DIRS} in --root)")
    _output_args(p, "flickr30k")
    p.set_defaults(run=cmd_flickr30k)

    p = sub.add_parser("cc3m", help="CC3M-style TSV (caption<TAB>url) + images named by row index")
    p.add_argument("--tsv", required=True, type=Path)
    p.add_argument("--images", required=True, type=Path, help="folder holding <row index>.<ext> (any depth)")
    _output_args(p, None)
    p.set_defaults(run=cmd_cc3m)

    p = sub.add_parser("labelled", help="ImageFolder tree root/<class>/<image> -> train/test captions CSVs")
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument("--template", default="a photo of a {label}", help="caption template (default: %(default)r)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="images held out for testing, per class")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/test split")
    p.set_defaults(run=cmd_labelled)

    args = parser.parse_args(argv)
    hints = args.run(args)
    print("train with:\n" + "\n".join(f"  python train.py model=clip {h}" for h in hints))
    return 0


if __name__ == "__main__":
    sys.exit(main())
