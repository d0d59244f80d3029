"""Download (or take a local copy of) the official CIFAR-10 python tarball, check its md5 and extract it
to ``<root>/cifar-10-batches-py``, the layout ``mmzoo.data.CIFAR10DataModule`` reads.

    python data_scripts/prepare_cifar10.py --root data/cifar10
    python data_scripts/prepare_cifar10.py --root data/cifar10 --from-tarball ~/Downloads/cifar-10-python.tar.gz

Extraction goes to a temporary folder inside ``root`` and is renamed into place only once complete, so
an interrupted run never leaves a half-extracted dataset that looks ready. Standard library only.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import safe_archive  # noqa: E402

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
FILES = ("batches.meta", "test_batch") + tuple(f"data_batch_{i}" for i in range(1, 6))


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: Path) -> None:
    """Download to ``dest`` via a ``.part`` file renamed at the end."""
    part = dest.with_name(dest.name + ".part")
    print(f"downloading {url} -> {dest}")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(part, "wb") as f:
            total, done = int(r.headers.get("Content-Length", 0)), 0
            while block := r.read(1 << 20):
                f.write(block)
                done += len(block)
                if total:
                    print(f"\r  {done / 2**20:.0f} / {total / 2**20:.0f} MiB", end="", flush=True)
        print()
    except OSError as e:
        part.unlink(missing_ok=True)
        raise SystemExit(f"error: download of {url} failed ({e}). Without network access, download the file "
                         f"elsewhere and pass it with --from-tarball PATH") from e
    os.replace(part, dest)


def extract(tarball: Path, root: Path) -> Path:
    """Extract ``tarball`` (which must contain ``cifar-10-batches-py/``) atomically into ``root``."""
    target = root / FOLDER
    tmp = Path(tempfile.mkdtemp(prefix=".cifar10-extract-", dir=root))
    try:
        try:
            with tarfile.open(tarball, "r:gz") as tar:
                safe_archive.extract_tar(tar, tmp)  # refuses "..", absolute names, links out, devices
        except safe_archive.UnsafeArchiveError as e:
            raise SystemExit(f"error: {e}") from e
        missing = [f for f in FILES if not (tmp / FOLDER / f).is_file()]
        if missing:
            raise SystemExit(f"error: {tarball} does not contain {FOLDER}/{missing}; is it the CIFAR-10 "
                             f"python version ({URL})?")
        if target.exists():  # an older copy: replace it only now that the new one is complete
            shutil.rmtree(target)
        os.replace(tmp / FOLDER, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, type=Path, help="folder to create cifar-10-batches-py in")
    parser.add_argument("--from-tarball", type=Path, default=None,
                        help="use this already downloaded cifar-10-python.tar.gz instead of downloading")
    parser.add_argument("--md5", default=MD5, help="expected md5 of the tarball (default: the official one)")
    parser.add_argument("--force", action="store_true", help="re-extract even if the data is already there")
    args = parser.parse_args(argv)

    root = args.root.expanduser()
    root.mkdir(parents=True, exist_ok=True)
    target = root / FOLDER
    if not args.force and all((target / f).is_file() for f in FILES):
        print(f"{target} is already prepared (use --force to redo it)")
    else:
        if args.from_tarball is not None:
            tarball = args.from_tarball.expanduser()
            if not tarball.is_file():
                raise SystemExit(f"error: --from-tarball {tarball} does not exist")
        else:
            tarball = root / Path(URL).name
            if not tarball.is_file():
                download(URL, tarball)
        digest = md5sum(tarball)
        if digest != args.md5:
            raise SystemExit(f"error: md5 of {tarball} is {digest}, expected {args.md5}: the file is corrupt or "
                             f"incomplete; delete it and run again")
        print(f"md5 ok, extracting {tarball}")
        extract(tarball, root)
        print(f"CIFAR-10 ready in {target}")
    print(f"train with:\n  python train.py model=vit data=cifar10 data.root={root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
