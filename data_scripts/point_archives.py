"""What the point-cloud prepare scripts share: md5, download, safe extraction of zip / tar archives into a
temporary folder, and conversion of point files to fixed-size ``.npy`` point sets."""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Iterable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import safe_archive  # noqa: E402


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_md5(path: Path, expected: Optional[str]) -> None:
    """Stop if ``path``'s md5 differs from ``expected``; without an expected value, print the digest."""
    digest = md5sum(path)
    if expected is None:
        print(f"md5 of {path}: {digest} (no reference checksum given; pass --md5 to check it)")
    elif digest != expected.lower():
        raise SystemExit(f"error: md5 of {path} is {digest}, expected {expected}: the file is corrupt or "
                         f"incomplete; delete it and run again")
    else:
        print(f"md5 ok: {path}")


def download(url: str, dest: Path) -> None:
    """Download to ``dest`` via a ``.part`` file renamed at the end."""
    part = dest.with_name(dest.name + ".part")
    print(f"downloading {url} -> {dest}")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(part, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
    except OSError as e:
        part.unlink(missing_ok=True)
        raise SystemExit(f"error: download of {url} failed ({e}). Without network access, download the file "
                         f"elsewhere and pass it with --from-archive PATH") from e
    os.replace(part, dest)


def extract_archive(archive: Path, dest: Path) -> None:
    """Extract a .zip or .tar[.gz|.bz2|.xz] into ``dest``, refusing members that would land outside it
    (``..`` or absolute names, links out of it, devices: see ``safe_archive.py``)."""
    try:
        safe_archive.extract_archive(archive, dest)
    except safe_archive.UnsafeArchiveError as e:
        raise SystemExit(f"error: {e}") from e


def find_dir(top: Path, name: str) -> Optional[Path]:
    """The shallowest folder called ``name`` under ``top`` (``top`` itself included)."""
    if top.name == name:
        return top
    hits = sorted((p for p in top.rglob(name) if p.is_dir()), key=lambda p: len(p.parts))
    return hits[0] if hits else None


def temp_dir(root: Path, prefix: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))


def replace_dir(src: Path, target: Path) -> None:
    """Move ``src`` to ``target``, replacing an older copy only now that the new one is complete."""
    if target.exists():
        shutil.rmtree(target)
    os.replace(src, target)


def convert_to_npy(samples: Iterable[tuple[Path, Path]], num_points: int, mesh_points: int,
                   seed: int) -> tuple[int, list[str]]:
    """Write every ``(source, dest.npy)`` as a (num_points, 3) float32 point set (meshes sampled on their
    surface from ``seed``, then farthest point sampling; smaller clouds padded by repeating points).
    Returns (written, skipped descriptions)."""
    import numpy as np
    import torch

    from mmzoo.data.bad_samples import BadSamples
    from mmzoo.data.point_files import PointFileDataset

    written, skipped = 0, []
    for i, (src, dst) in enumerate(samples):
        lenient = BadSamples("conversion", max_fraction=1.0)  # every bad file is listed at the end instead
        ds = PointFileDataset([(src, 0)], num_points, "fps", seed + i, "train", strict=False, min_points=1,
                              mesh_points=mesh_points, name="conversion", bad=lenient)
        if len(ds) == 0:
            skipped.append(f"{src} ({ds.skipped[0][1]})")
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        np.save(dst, ds.points[0].numpy().astype(np.float32))
        written += 1
    return written, skipped
