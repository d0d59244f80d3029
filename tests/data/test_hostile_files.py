"""A corpus of broken and hostile files, generated here, run against every file reader: zero bytes, wrong
magic, truncations at several offsets, header bombs, NaN payloads, pickle payloads, traversal names.

For each reader: a non-strict run finishes, skips every bad sample (at set-up or at load) and counts it
(``num_skipped`` names each one); ``strict=true`` fails naming the file (and line / shard member); more
than ``max_bad_fraction`` of a split bad stops the run; no payload runs (it would create a marker file);
nothing is written anywhere (the working directory and the data folder are unchanged)."""
from __future__ import annotations

import io
import pickle
import struct
import tarfile
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from mmzoo.data import (AudioFolderDataModule, CsvCaptionsDataModule, ImageFolderDataModule, PointFolderDataModule,
                        VideoDataModule, WebDatasetCaptionsDataModule)
from mmzoo.data.audio import BadAudioError
from mmzoo.data.bad_samples import BadSampleError, BadSamples
from mmzoo.data.captions import read_coco_captions
from mmzoo.data.image_folder import UnreadableImageError
from mmzoo.data.point_files import MalformedPointFileError
from mmzoo.data.video import VideoReadError

CUTS = (0.1, 0.5, 0.9)  # truncation points, as shares of the file


class Payload:
    """Unpickling this creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A data folder and a working directory; afterwards nothing may have been added to either."""
    data, cwd = tmp_path / "data", tmp_path / "cwd"
    data.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    snapshot = {}
    yield data, snapshot
    assert list(cwd.iterdir()) == [], "a reader wrote into the working directory"
    if "files" in snapshot:
        assert {str(p) for p in data.rglob("*")} == snapshot["files"], "a reader wrote into the data folder"
    assert not (tmp_path / "pwned").exists()
    assert {p.name for p in tmp_path.iterdir()} <= {"data", "cwd"}, "a reader wrote next to the data folder"


def _freeze(data: Path, snapshot: dict) -> None:
    snapshot["files"] = {str(p) for p in data.rglob("*")}


def _cuts(data: bytes) -> dict[str, bytes]:
    return {"zero": b"", **{f"cut{int(c * 100)}": data[: int(len(data) * c)] for c in CUTS}}


def _load_all(dataset) -> None:
    """Read every sample (the dataset substitutes skipped ones): what an epoch does."""
    for i in range(len(dataset)):
        dataset[i]


def _names(dm) -> set[str]:
    return {Path(n.split(",")[0].split(":")[0]).name for n in dm.skipped_files}


# -- audio -------------------------------------------------------------------------------------------

def _tone(seconds: float = 0.1, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def _audio_bytes(x: np.ndarray, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format=fmt, subtype=subtype)
    return buf.getvalue()


def test_audio_folder_corpus(sandbox):
    data, snapshot = sandbox
    root = data / "audio"
    for c in ("no", "yes"):
        (root / "train" / c).mkdir(parents=True)
        for i in range(6):
            (root / "train" / c / f"{i}.wav").write_bytes(_audio_bytes(_tone() * (i + 1) / 6, "WAV"))
    bad = root / "train" / "yes"
    flac = _audio_bytes(_tone(0.5), "FLAC")
    header_bad = {"zero.wav": b"", "magic.wav": b"<html>404</html>" * 8}
    load_bad = {f"{k}.flac": v for k, v in _cuts(flac).items() if k != "zero"}
    garbled = bytearray(flac)
    garbled[len(flac) // 2: len(flac) // 2 + 64] = bytes(b ^ 0x5A for b in garbled[len(flac) // 2: len(flac) // 2 + 64])
    load_bad["garbled.flac"] = bytes(garbled)
    for value, name in ((np.nan, "nan.wav"), (np.inf, "inf.wav")):
        x = _tone()
        x[100:110] = value
        load_bad[name] = _audio_bytes(x, "WAV", "FLOAT")
    for name, blob in {**header_bad, **load_bad}.items():
        (bad / name).write_bytes(blob)
    _freeze(data, snapshot)
    n_bad = len(header_bad) + len(load_bad)

    with pytest.warns(UserWarning, match="magic.wav"):
        dm = AudioFolderDataModule(str(root), batch_size=2, max_seconds=0.2, max_bad_fraction=0.9)
    dm.setup()
    assert dm.num_skipped == len(header_bad) and _names(dm) == set(header_bad)
    with pytest.warns(UserWarning):
        _load_all(dm.train_set)
    assert dm.num_skipped == n_bad and _names(dm) == set(header_bad) | set(load_bad)
    # through loader workers: the count is shared with the main process
    dm = AudioFolderDataModule(str(root), batch_size=2, max_seconds=0.2, max_bad_fraction=0.9, num_workers=2)
    dm.setup()
    loader = torch.utils.data.DataLoader(dm.train_set, batch_size=4, num_workers=2, collate_fn=dm.collate_fn())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert sum(len(y) for _, y in loader) == len(dm.train_set)  # every batch full: stand-ins fill the gaps
    assert dm.num_skipped == n_bad
    # the default cap: 2 of 20 bad at set-up is within 10%, the first bad one at load is not
    with pytest.raises(BadAudioError, match=r"3 of the 20 audio files .*max_bad_fraction=0\.1"), pytest.warns(UserWarning):
        dm = AudioFolderDataModule(str(root), max_seconds=0.2)
        dm.setup()
        _load_all(dm.train_set)

    with pytest.raises(BadAudioError, match=r"magic\.wav"):
        AudioFolderDataModule(str(root), strict=True)  # set-up stops on the first header it cannot read
    lenient = AudioFolderDataModule(str(root), max_seconds=0.2, max_bad_fraction=0.9)
    lenient.setup()
    lenient.bad_samples["train"].strict = True  # what strict=true does once set-up has passed
    items = [str(p) for p, _ in lenient.train_set.dataset.items]
    for name in load_bad:
        with pytest.raises(BadAudioError, match=rf"cannot read audio file .*{name}"):
            lenient.train_set[items.index(str(bad / name))]


# -- video -------------------------------------------------------------------------------------------

def _video_bytes(path: Path, frames: int = 6) -> bytes:
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:  # header (moov) first
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 16, 16, "yuv420p"
        for i in range(frames):
            img = np.random.RandomState(i).randint(0, 255, (16, 16, 3), dtype=np.uint8)
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path.read_bytes()


def test_video_corpus(sandbox):
    data, snapshot = sandbox
    root = data / "video"
    for c in ("a", "b"):
        (root / "train" / c).mkdir(parents=True)
        for i in range(4):
            _video_bytes(root / "train" / c / f"{i}.mp4")
    good = (root / "train" / "a" / "0.mp4").read_bytes()
    header_bad = {"zero.mp4": b"", "magic.mp4": b"\x00\x01 not a video" * 20}
    load_bad = {f"{k}.mp4": v for k, v in _cuts(good).items() if k in ("cut50", "cut90")}  # moov intact, mdat cut
    for name, blob in {**header_bad, **load_bad}.items():
        (root / "train" / "b" / name).write_bytes(blob)
    _freeze(data, snapshot)
    kw = dict(root=str(root), num_frames=2, sampling_rate=2, crop_size=8, train_scale=(8, 10), batch_size=2)

    with pytest.warns(UserWarning, match="zero.mp4"):
        dm = VideoDataModule(**kw, max_bad_fraction=0.5)
        dm.setup("fit")
    assert _names(dm) == set(header_bad)
    with pytest.warns(UserWarning, match="decodable frames"):
        _load_all(dm.train_set)
    assert dm.num_skipped == len(header_bad) + len(load_bad) and _names(dm) == set(header_bad) | set(load_bad)
    with pytest.raises(VideoReadError, match=r"magic\.mp4"):
        VideoDataModule(**kw, strict=True).setup("fit")
    lenient = VideoDataModule(**kw, max_bad_fraction=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lenient.setup("fit")
    lenient.bad_samples["train"].strict = True
    paths = [p for p, _, _ in lenient.train_set.samples]
    for name in load_bad:
        with pytest.raises(VideoReadError, match=rf"{name}.*decodable frames"):
            lenient.train_set[paths.index(str(root / "train" / "b" / name))]


# -- point files ------------------------------------------------------------------------------------

def _npy_header(shape, descr="<f8") -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple(shape)}, }}"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode()


def _ply(count: str, body: bytes = b"", fmt: str = "binary_little_endian") -> bytes:
    return (f"ply\nformat {fmt} 1.0\nelement vertex {count}\nproperty float x\nproperty float y\n"
            f"property float z\nend_header\n").encode() + body


def test_point_folder_corpus(sandbox):
    data, snapshot = sandbox
    root = data / "points"
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / "train" / c).mkdir(parents=True)
        for i in range(4):
            np.save(root / "train" / c / f"{i}.npy", rng.normal(size=(64, 3)))
    good_npy = (root / "train" / "a" / "0.npy").read_bytes()
    good_ply = _ply("64", rng.normal(size=(64, 3)).astype("<f4").tobytes())
    marker = data.parent / "pwned"
    bad = {
        "bomb.npy": _npy_header((10 ** 10, 3)) + b"\x00" * 64,  # claims 223 GiB
        "object.npy": _npy_header((1,), "|O") + pickle.dumps(np.array([Payload(marker)], dtype=object)),
        "magic.npy": b"PK\x03\x04 not numpy",
        "nan.npy": good_npy[:-8 * 64 * 3] + np.full((64, 3), np.nan).tobytes(),
        "negative.ply": _ply("-5"),
        "hugecount.ply": _ply("1000000000", b"\x00" * 120),
        "words.ply": _ply("lots"),
        "ascii_short.ply": _ply("100", b"0 0 0\n1 1 1\n", fmt="ascii"),
        "negative.off": b"OFF\n-3 -1 0\n",
        **{f"{k}.npy": v for k, v in _cuts(good_npy).items()},
        **{f"{k}.ply": v for k, v in _cuts(good_ply).items()},
    }
    for name, blob in bad.items():
        (root / "train" / "b" / name).write_bytes(blob)
    _freeze(data, snapshot)

    with pytest.warns(UserWarning, match="bomb.npy"):
        dm = PointFolderDataModule(root=root, num_points=32, augment=False, max_bad_fraction=0.9)
        dm.setup("fit")
    assert dm.num_skipped == len(bad) and _names(dm) == set(bad)
    assert len(dm.train_set) + len(dm.val_set) == 8
    reasons = dict((Path(p).name, r) for p, r in dm.bad_samples["train"].scan)
    assert "claims shape (10000000000, 3)" in reasons["bomb.npy"] and "object array" in reasons["object.npy"]
    assert "count '-5'" in reasons["negative.ply"] and "negative counts" in reasons["negative.off"]
    assert "truncated" in reasons["hugecount.ply"] and "non-finite" in reasons["nan.npy"]
    with pytest.raises(MalformedPointFileError, match=r"ascii_short\.ply: PLY body ends"):
        PointFolderDataModule(root=root, num_points=32, strict=True).setup("fit")  # the first one, sorted
    with pytest.raises(MalformedPointFileError, match=r"17 of the 25 point files .*max_bad_fraction=0\.1"), \
            pytest.warns(UserWarning):
        PointFolderDataModule(root=root, num_points=32).setup("fit")


# -- WebDataset shards ------------------------------------------------------------------------------

def _png(colour=(200, 30, 30), size=(12, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _tar(path: Path, members: list[tuple[str, bytes]]) -> bytes:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, blob in members:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path.read_bytes()


def test_webdataset_corpus(sandbox):
    data, snapshot = sandbox
    samples = [(f"{i:04d}.png", _png((20 * i, 100, 50))) for i in range(12)]
    samples = [m for i, (n, b) in enumerate(samples) for m in ((n, b), (f"{i:04d}.txt", f"thing {i}".encode()))]
    full = _tar(data / "good.tar", samples)
    # truncated copies: inside the 2nd member's data, inside a header, just after a header
    for name, cut in (("in_data", 512 + 700), ("in_header", 1024 * 6 + 100), ("after_header", 512 * 7)):
        (data / f"cut_{name}.tar").write_bytes(full[:cut])
    _tar(data / "hostile.tar", [("../../evil.png", _png()), ("../../evil.txt", b"a traversal name"),
                                ("/abs/x.png", _png()), ("/abs/x.txt", b"an absolute name"),
                                ("latin.png", _png()), ("latin.txt", "été".encode("latin-1")),
                                ("blank.png", _png()), ("blank.txt", b"  \n"),
                                ("broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 30), ("broken.txt", b"a caption")])
    _freeze(data, snapshot)
    shards = [str(data / n) for n in ("good.tar", "cut_in_data.tar", "cut_in_header.tar", "cut_after_header.tar",
                                      "hostile.tar")]
    kw = dict(shards=shards, image_size=8, batch_size=4, val_fraction=0.2, tokenizer="clip", context_length=8)

    with pytest.warns(UserWarning, match="unreadable or broken"):
        dm = WebDatasetCaptionsDataModule(**kw, max_bad_fraction=0.5)
        dm.setup()
    names = dm.skipped_files
    assert any(n.endswith("cut_in_data.tar:0000") for n in names), names  # its caption was cut away
    assert any(n.endswith("cut_in_header.tar") for n in names) and any("latin.txt" in n for n in names)
    assert any("blank.txt" in n for n in names) and any("broken.png" in n for n in names)
    served = {str(r.image) for s in ("train", "val") for r in dm.records[s]}
    assert any("../../evil.png" in s for s in served)  # read by offset from its shard: nothing is extracted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _load_all(dm.train_set)
    with pytest.raises(BadSampleError, match=r"cut_in_data\.tar"):
        WebDatasetCaptionsDataModule(**{**kw, "shards": shards[:2]}, strict=True).setup()
    with pytest.raises(BadSampleError, match=r"hostile\.tar:latin\.txt: caption is not UTF-8"):
        WebDatasetCaptionsDataModule(**{**kw, "shards": [shards[0], shards[4]]}, strict=True).setup()


# -- CSV captions -----------------------------------------------------------------------------------

def test_csv_captions_corpus(sandbox):
    data, snapshot = sandbox
    (data / "img").mkdir()
    for i in range(10):
        (data / "img" / f"{i}.png").write_bytes(_png((25 * i, 80, 160)))
    (data / "img" / "zero.png").write_bytes(b"")
    png = _png(size=(64, 64))
    (data / "img" / "cut.png").write_bytes(png[: len(png) // 2])  # header parses; pixels cut
    rows = [b"filepath,title"] + [f"img/{i}.png,a photo number {i}".encode() for i in range(5)] + [
        "img/0.png,une photo d'été".encode("latin-1"),  # line 7: not UTF-8
        b"img/1.png,a caption, with an unquoted comma",  # line 8: ragged
        b"img/2.png",  # line 9: short
        b"img/3.png,   ",  # line 10: empty caption
        b",a caption without an image",  # line 11
        b"img/zero.png,an empty file",  # line 12: unreadable at set-up
        b"../../../../etc/passwd,a traversal path",  # line 13: not an image
        b'img/4.png,"an unterminated quote',  # line 14
    ] + [f"img/{i}.png,photo {i} after the bad quote".encode() for i in range(5, 10)] + [b"img/cut.png,cut pixels"]
    table = data / "train.csv"
    table.write_bytes(b"\n".join(rows) + b"\n")
    _freeze(data, snapshot)
    kw = dict(train_file=table, image_size=8, batch_size=2, val_fraction=0.2, context_length=8)

    with pytest.warns(UserWarning, match="line 7"):
        dm = CsvCaptionsDataModule(**kw, max_bad_fraction=0.5)
        dm.setup()
    lines = {n.rsplit("line ", 1)[1] for n in dm.skipped_files if "line " in n}
    assert lines == {"7", "8", "9", "10", "11", "14"}, dm.skipped_files
    assert {Path(n).name for n in dm.skipped_files if "line " not in n} == {"zero.png", "passwd"}
    captions = {r.caption for s in ("train", "val") for r in dm.records[s]}
    assert {f"photo {i} after the bad quote" for i in range(5, 10)} <= captions  # reading resumed after line 14
    reasons = dict(dm.bad_samples["train"].scan)
    assert "not UTF-8 text (byte 0xe9" in reasons[f"{table}, line 7"]
    assert "3 fields where the header has 2" in reasons[f"{table}, line 8"]
    assert "never closed" in reasons[f"{table}, line 14"] and "empty 'title'" in reasons[f"{table}, line 10"]
    before = dm.num_skipped
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for split in ("train", "val"):
            _load_all(getattr(dm, f"{split}_set"))
    assert dm.num_skipped == before + 1 and "cut.png" in dm.skipped_files[-1]
    with pytest.raises(BadSampleError, match=rf"{table}, line 7: not UTF-8"):
        CsvCaptionsDataModule(**kw, strict=True).setup()
    with pytest.raises(BadSampleError, match=r"8 of the 19 samples .*max_bad_fraction=0\.1"), pytest.warns(UserWarning):
        CsvCaptionsDataModule(**kw).setup()


def test_coco_captions_bad_entries_are_named(sandbox):
    data, snapshot = sandbox
    ann = data / "captions.json"
    ann.write_text('{"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2}], "annotations": ['
                   '{"image_id": 1, "caption": "ok"}, {"image_id": 9, "caption": "x"}, {"image_id": 1, "caption": " "},'
                   ' {"image_id": 1}]}', encoding="utf-8")
    bad = BadSamples("coco", max_fraction=1.0)
    records = read_coco_captions(ann, data, bad=bad)
    with pytest.warns(UserWarning, match=r"images\[1\]"):
        bad.scanned(6)
    assert [r.caption for r in records] == ["ok"]
    assert [n.rsplit(": ", 1)[1] for n, _ in bad.scan] == ["images[1]", "annotations[1] (id None)",
                                                           "annotations[2] (id None)", "annotations[3] (id None)"]
    ann.write_bytes(b'{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(ValueError, match=r"captions.json, line 2 column 12: not valid JSON"):
        read_coco_captions(ann, data)


# -- image folders ----------------------------------------------------------------------------------

def test_image_folder_corpus(sandbox):
    data, snapshot = sandbox
    root = data / "images"
    for c in ("a", "b"):
        (root / "train" / c).mkdir(parents=True)
        for i in range(5):
            (root / "train" / c / f"{i}.png").write_bytes(_png((40 * i, 90, 30 * (c == "a"))))
    big = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(big, format="PNG")
    for name, blob in {"magic.png": b"<html>not an image</html>", **{f"{k}.png": v for k, v in
                                                                       _cuts(big.getvalue()).items()}}.items():
        (root / "train" / "b" / name).write_bytes(blob)
    _freeze(data, snapshot)
    with pytest.warns(UserWarning, match="magic.png"):
        dm = ImageFolderDataModule(root=root, image_size=8, max_bad_fraction=0.5)
        dm.setup("fit")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _load_all(dm.train_set)
        _load_all(dm.val_set)
    assert dm.num_skipped == 5 and _names(dm) == {"magic.png", "zero.png", "cut10.png", "cut50.png", "cut90.png"}
    with pytest.raises(UnreadableImageError, match=r"magic\.png"):  # the first whose header does not parse
        ImageFolderDataModule(root=root, image_size=8, strict=True).setup("fit")


def test_a_training_run_finishes_over_bad_samples_and_reports_them(train_cfg, tmp_path):
    """train.py on an image folder whose val / test images are cut short (found only when decoded): the
    run finishes, and the end-of-stage summary names them."""
    from mmzoo.training import train

    root = tmp_path / "images"
    big = io.BytesIO()
    Image.effect_noise((32, 32), 40).convert("RGB").save(big, format="PNG")
    for split, n in (("train", 4), ("val", 3), ("test", 3)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                (root / split / c / f"{i}.png").write_bytes(_png((60 * i, 90, 200 * (c == "a")), (32, 32)))
        (root / split / "a" / "cut.png").write_bytes(big.getvalue()[: len(big.getvalue()) // 2])
    cfg = train_cfg("model=vit", "data=image_folder", f"data.root={root}", "data.batch_size=8", "data.num_workers=0",
                    "data.max_bad_fraction=0.2", "debug=fdr")
    with pytest.warns(UserWarning, match=r"skipped samples that failed to load \(.*\): .*cut\.png"):
        metrics = train(cfg)
    assert metrics["global_step"] == 1 and 0.0 <= metrics["test/acc1"] <= 1.0
