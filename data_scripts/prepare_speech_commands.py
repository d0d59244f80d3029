"""Download (or take a local copy of) Google Speech Commands v0.02, check its sha256, extract it and build
the official train/val/test splits (``validation_list.txt`` / ``testing_list.txt``; training is every other
clip) in the formats ``data=audio_folder`` reads.

    python data_scripts/prepare_speech_commands.py --root data/speech_commands
    python data_scripts/prepare_speech_commands.py --root data/speech_commands \\
        --from-archive ~/Downloads/speech_commands_v0.02.tar.gz --keywords yes,no,up,down --unknown
    python train.py model=wav2vec2 task=audio_classification data=audio_folder data.root=data/speech_commands

Layouts (``--layout``):
  manifest (default)  ``root/train.tsv``, ``val.tsv``, ``test.tsv`` with columns ``path`` + ``label``,
                      paths pointing into the extracted ``root/speech_commands_v0.02/`` (no copies).
  folders             ``root/train/<label>/...``, ``root/val/...``, ``root/test/...`` class folders made of
                      hard links (copies across file systems) to the extracted clips.

``--keywords`` keeps only those words (and extracts only them); ``--unknown`` adds every other word as the
class ``unknown`` (the 12-class benchmark uses the ten keywords yes, no, up, down, left, right, on, off,
stop, go plus unknown and silence; silence clips cut from ``_background_noise_`` are not made here).
Extraction goes to a temporary folder renamed into place once complete, manifests are written to a
temporary name and renamed, so an interrupted run never leaves a half-prepared set that looks ready.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

from audio_prep import download, extract, link_or_copy, verify, write_tsv

URL = "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
# the publisher gives no md5; this sha256 is the one torchaudio and mlx-data check the archive against
SHA256 = "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58"
FOLDER = "speech_commands_v0.02"
LISTS = {"val": "validation_list.txt", "test": "testing_list.txt"}
NOISE = "_background_noise_"
UNKNOWN = "unknown"
SPLITS = ("train", "val", "test")


def read_list(path: Path) -> set[str]:
    if not path.is_file():
        raise SystemExit(f"error: {path} not found; the archive is not Speech Commands v0.02 ({URL})")
    return {line.strip().lstrip("./") for line in path.read_text().splitlines() if line.strip()}


def build_splits(data: Path, keywords: Optional[Sequence[str]] = None,
                 unknown: bool = False) -> tuple[dict[str, list[tuple[str, str]]], list[str]]:
    """(relative path ``word/clip.wav``, label) per split, from the two list files; every clip of a word
    folder that neither list names is a training clip. Returns the splits and the words found."""
    val, test = read_list(data / LISTS["val"]), read_list(data / LISTS["test"])
    words = sorted(d.name for d in data.iterdir() if d.is_dir() and not d.name.startswith(("_", ".")))
    if keywords:
        missing = sorted(set(keywords) - set(words))
        if missing:
            raise SystemExit(f"error: --keywords {missing} are not in {data}; words there: {words}")
    splits: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    for word in words:
        if keywords and word not in keywords:
            if not unknown:
                continue
            label = UNKNOWN
        else:
            label = word
        for clip in sorted((data / word).glob("*.wav")):
            rel = f"{word}/{clip.name}"
            splits["val" if rel in val else "test" if rel in test else "train"].append((rel, label))
    return splits, words


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, type=Path, help="folder to prepare the data set in")
    parser.add_argument("--from-archive", type=Path, default=None,
                        help="use this already downloaded speech_commands_v0.02.tar.gz instead of downloading")
    parser.add_argument("--sha256", default=SHA256,
                        help="expected sha256 of the archive (default: the official one; 'none' skips the check)")
    parser.add_argument("--keywords", default=None, help="comma-separated words to keep (default: all 35)")
    parser.add_argument("--unknown", action="store_true",
                        help="label the other words 'unknown' instead of dropping them")
    parser.add_argument("--layout", choices=("manifest", "folders"), default="manifest")
    parser.add_argument("--force", action="store_true", help="re-extract even if the data is already there")
    args = parser.parse_args(argv)

    root = args.root.expanduser()
    root.mkdir(parents=True, exist_ok=True)
    keywords = sorted({k.strip() for k in args.keywords.split(",") if k.strip()}) if args.keywords else None
    if args.unknown and not keywords:
        raise SystemExit("error: --unknown needs --keywords (every word is a keyword otherwise)")
    if keywords and UNKNOWN in keywords and args.unknown:
        raise SystemExit(f"error: the keyword {UNKNOWN!r} clashes with the --unknown class name")
    data = root / FOLDER
    marker = data / ".complete"
    # a partial extraction (--keywords without --unknown) must not pass for the full set: the marker says what is there
    wanted = "all" if not keywords or args.unknown else ",".join(keywords)
    have = marker.read_text().strip() if marker.is_file() else None
    if not args.force and have is not None and have in ("all", wanted):
        print(f"{data} is already extracted (use --force to redo it)")
    else:
        if args.from_archive is not None:
            archive = args.from_archive.expanduser()
            if not archive.is_file():
                raise SystemExit(f"error: --from-archive {archive} does not exist")
        else:
            archive = root / Path(URL).name
            if not archive.is_file():
                download(URL, archive)
        verify(archive, None if args.sha256.lower() == "none" else args.sha256, "sha256")
        keep = None
        if wanted != "all":
            def keep(name: str) -> bool:
                parts = Path(name.lstrip("./")).parts
                return len(parts) <= 1 or parts[0] in keywords or parts[0] in LISTS.values()
        print(f"extracting {archive} -> {data}")
        extract(archive, data, keep)
        (data / ".complete").write_text(wanted + "\n")

    splits, words = build_splits(data, keywords, args.unknown)
    if not splits["train"]:
        raise SystemExit(f"error: no training clips found under {data} (words: {words})")
    if args.layout == "manifest":
        for split in SPLITS:
            write_tsv(root / f"{split}.tsv", ["path", "label"], [(f"{FOLDER}/{p}", l) for p, l in splits[split]])
    else:
        for split in SPLITS:
            if (root / split).is_dir():  # links of an earlier run (maybe other keywords)
                shutil.rmtree(root / split)
            for rel, label in splits[split]:
                word, name = rel.split("/")
                dst = root / split / label / (name if label == word else f"{word}_{name}")
                link_or_copy(data / rel, dst)
    labels = sorted({l for s in splits.values() for _, l in s})
    for split in SPLITS:
        print(f"  {split}: {len(splits[split])} clips")
    print(f"{len(labels)} classes: {', '.join(labels)}\ntrain with:\n  python train.py model=wav2vec2 "
          f"task=audio_classification data=audio_folder data.root={root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
