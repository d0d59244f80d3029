"""Helpers shared by ``prepare_ucf101.py`` and ``prepare_kinetics.py``: place videos into the layouts
``mmzoo.data.VideoDataModule`` reads (``OUT/<split>/<class>/<video>`` and ``OUT/<split>.csv``), optionally
re-encoding them with a shorter side of ``--short-side`` pixels (PyAV)."""
from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path
from typing import Optional, Sequence


def resize_video(src: Path, dst: Path, short_side: int, codec: Optional[str] = None) -> None:
    """Re-encode ``src`` with its short side scaled to ``short_side`` (even sizes), same frame rate."""
    import av

    tmp = dst.with_name(dst.stem + ".tmp" + dst.suffix)
    with av.open(str(src)) as inp, av.open(str(tmp), "w") as out:
        vin = inp.streams.video[0]
        h, w = vin.codec_context.height, vin.codec_context.width
        scale = short_side / min(h, w)
        nh, nw = max(2, round(h * scale / 2) * 2), max(2, round(w * scale / 2) * 2)
        rate = vin.average_rate or 30
        names = [codec] if codec else ["libx264", "mpeg4"]
        for name in names:
            try:
                vout = out.add_stream(name, rate=rate)
                break
            except Exception:  # noqa: BLE001 - codec missing from this PyAV build
                continue
        else:
            raise RuntimeError(f"none of the codecs {names} is available in PyAV")
        vout.width, vout.height, vout.pix_fmt = nw, nh, "yuv420p"
        for frame in inp.decode(vin):
            for pkt in vout.encode(frame.reformat(width=nw, height=nh, format="yuv420p")):
                out.mux(pkt)
        for pkt in vout.encode():
            out.mux(pkt)
    os.replace(tmp, dst)


def place_videos(items: Sequence[tuple[Path, str, str]], out: Path, short_side: Optional[int] = None,
                 copy: bool = False) -> dict[str, int]:
    """``items`` = (source video, class name, split). Writes ``out/<split>/<class>/<name>`` (re-encoded,
    copied or symlinked) and ``out/<split>.csv`` (``path,label``, paths relative to ``out``). Sources
    that are missing or fail to re-encode are left out and counted. Returns counts per split."""
    rows: dict[str, list[tuple[str, str]]] = {}
    failed = 0
    for src, label, split in items:
        if not src.is_file():
            failed += 1
            continue
        dst = out / split / label / (src.stem + (".mp4" if short_side else src.suffix))
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            try:
                if short_side:
                    resize_video(src, dst, short_side)
                elif copy:
                    shutil.copy2(src, dst)
                else:
                    os.symlink(src.resolve(), dst)
            except Exception as e:  # noqa: BLE001 - a broken source video: report and go on
                print(f"skipping {src}: {e}")
                failed += 1
                continue
        rows.setdefault(split, []).append((str(dst.relative_to(out)), label))
    for split, split_rows in rows.items():
        tmp = out / f".{split}.csv.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"])
            w.writerows(split_rows)
        os.replace(tmp, out / f"{split}.csv")
    counts = {split: len(r) for split, r in rows.items()}
    print(f"wrote {counts} to {out}; {failed} videos missing or unreadable")
    return counts
