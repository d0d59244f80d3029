"""Helpers shared by ``prepare_speech_commands.py`` and ``prepare_librispeech.py``: checksums, downloads
through a ``.part`` file, safe archive extraction into a temporary folder renamed into place, and atomic
TSV manifests in the format ``mmzoo.data.AudioFolderDataModule`` reads (header ``path`` + ``label`` or
``path`` + ``transcript``, paths relative to the manifest's folder). Standard library only."""
from __future__ import annotations

import csv
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path
from typing import Callable, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import safe_archive  # noqa: E402


def checksum(path: Path, algorithm: str = "md5", chunk: int = 1 << 20) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, expected: Optional[str], algorithm: str) -> None:
    """Stop with a clear message when ``path``'s digest is not ``expected`` (``None``: no check)."""
    if expected is None:
        return
    digest = checksum(path, algorithm)
    if digest != expected.lower():
        raise SystemExit(f"error: {algorithm} of {path} is {digest}, expected {expected}: the file is corrupt, "
                         f"incomplete or another version; delete it and run again")
    print(f"{algorithm} ok: {path}")


def download(url: str, dest: Path, option: str = "--from-archive") -> None:
    """Download to ``dest`` via a ``.part`` file renamed at the end."""
    dest.parent.mkdir(parents=True, exist_ok=True)
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
                         f"elsewhere and pass it with {option} PATH") from e
    os.replace(part, dest)


def extract(archive: Path, target: Path, keep: Optional[Callable[[str], bool]] = None) -> Path:
    """Extract the members of a .tar(.gz) for which ``keep(name)`` holds into ``target``, atomically: into a
    temporary folder next to ``target`` renamed into place once complete (an older ``target`` is replaced)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-extract-", dir=target.parent))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                # refuses "..", absolute names, links out of tmp and devices on every Python version
                safe_archive.extract_tar(tar, tmp, [m for m in tar if keep is None or keep(m.name)])
        except safe_archive.UnsafeArchiveError as e:
            raise SystemExit(f"error: {e}") from e
        except (tarfile.TarError, EOFError, OSError) as e:
            raise SystemExit(f"error: cannot extract {archive}: {e} (is it a complete .tar.gz?)") from e
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_tsv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A tab-separated manifest written to a temporary name and renamed into place."""
    for row in rows:
        if any("\t" in str(v) or "\n" in str(v) for v in row):
            raise ValueError(f"manifest value with a tab or newline in row {row}")
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard link (no extra disk space) or, across file systems, copy ``src`` to ``dst``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        tmp = dst.with_name(f".{dst.name}.part")
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)
