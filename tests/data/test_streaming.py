"""Streaming WebDataset shards: node / worker splitting (every sample once), equal batches per rank,
pipe: and .tar.gz sources, bad samples, exact and shard resume, the shard writer, and a CLIP run."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from mmzoo.data.streaming import (BATCH_KEY, STREAM_KEY, StreamAudioDataModule, StreamImageDataModule,
                                  StreamImageTextDataModule, StreamPointCloudDataModule, StreamReadError,
                                  StreamVideoDataModule, decode_image, expand_urls, plan_epoch, read_sizes)

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("write_shards", ROOT / "data_scripts" / "write_shards.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _png(value: int) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", (8, 8), (value % 256, (value // 256) % 256, 7)).save(b, "PNG")
    return b.getvalue()


def write_pairs(out: Path, sizes: list[int], gzip: bool = False, classes: int = 3) -> list[str]:
    """Image-text shards with the given sample counts; caption = "sample <global index>"; returns the names."""
    samples = [{"__key__": f"{k:09d}", "png": _png(k), "txt": f"sample {k}", "cls": str(k % classes)}
               for k in range(sum(sizes))]
    script = _script()
    if len(set(sizes[:-1])) <= 1 and sizes[-1] <= sizes[0]:
        info = script.write_shards(samples, out, sizes[0], gzip, {"classes": [f"c{i}" for i in range(classes)]})
    else:  # uneven shards: write them one by one, then one _info.json
        shards, start = [], 0
        for i, n in enumerate(sizes):
            part = script.write_shards(samples[start:start + n], out / f"part{i}", n, gzip)
            src = out / f"part{i}" / part["shards"][0]["name"]
            name = f"{i:06d}" + (".tar.gz" if gzip else ".tar")
            os.replace(src, out / name)
            shards.append({"name": name, "samples": n})
            start += n
        info = {"shards": shards, "classes": [f"c{i}" for i in range(classes)]}
        (out / "_info.json").write_text(json.dumps(info))
    return [s["name"] for s in info["shards"]]


def _dm(urls, cls=StreamImageTextDataModule, **kw):
    kw = {"image_size": 8, "context_length": 8, "batch_size": 4, "num_workers": 0, "shuffle_buffer": 5, "seed": 3,
          **kw}
    if cls is not StreamImageTextDataModule:
        kw.pop("context_length")
    return cls(urls=urls, **kw)


class FakeTrainer(SimpleNamespace):
    """What the data module reads of a Trainer: rank, world, epoch, batch progress."""

    def __init__(self, rank=0, world=1, epoch=0):
        super().__init__(global_rank=rank, world_size=world, current_epoch=epoch, training=True,
                         fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(
                             batch_progress=SimpleNamespace(current=SimpleNamespace(processed=0)))))


def _epoch(dm, rank=0, world=1, epoch=0, limit=None):
    """Captions per batch of one epoch of ``dm`` as rank ``rank`` of ``world`` (positions recorded)."""
    dm.trainer = FakeTrainer(rank, world, epoch)
    batches = []
    for batch in dm.train_dataloader():
        assert set(batch) == {BATCH_KEY, STREAM_KEY}
        batches.append(list(dm.on_before_batch_transfer(batch, 0)["caption"]))
        dm.trainer.fit_loop.epoch_loop.batch_progress.current.processed += 1
        if limit is not None and len(batches) == limit:
            break
    return batches


def _flat(batches):
    return [c for b in batches for c in b]


# -- the plan ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("world,workers,sizes", [(2, 2, [10] * 8), (2, 2, [10, 7, 10, 3, 10, 10, 9, 10, 4]),
                                                 (3, 1, [5] * 7), (1, 3, [6, 1, 6])])
def test_plan_splits_shards_once_and_equal_batches_per_rank(world, workers, sizes):
    for epoch in range(3):
        plans = [plan_epoch(len(sizes), sizes, epoch, 0, r, world, workers, 4) for r in range(world)]
        shards = [i for p in plans for s in p.shards for i in s]
        assert sorted(shards) == list(range(len(sizes)))  # every shard once, over ranks and workers
        assert len({p.batches for p in plans}) == 1  # no rank waits for another at a collective
        for p in plans:
            assert sum(p.targets) == p.batches * 4
            for s, t in zip(p.shards, p.targets):
                assert t <= sum(sizes[i] for i in s)  # one pass: nothing repeated
    even = [plan_epoch(8, [10] * 8, 0, 0, r, 2, 2, 5) for r in range(2)]
    assert all(t == 20 for p in even for t in p.targets)  # even shards: every sample used
    with pytest.raises(ValueError, match="3 shard.*2 rank.*2 loader worker"):
        plan_epoch(3, [5] * 3, 0, 0, 0, 2, 2, 4)
    with pytest.raises(ValueError, match="epoch_samples"):
        plan_epoch(4, None, 0, 0, 0, 1, 1, 4)


# -- reading -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_ranks_and_workers_see_every_sample_once(tmp_path, workers):
    write_pairs(tmp_path, [10] * 8)
    urls = f"{tmp_path}/{{000000..000007}}.tar"
    per_rank = [_epoch(_dm(urls, num_workers=workers), rank=r, world=2) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 10
    seen = _flat(per_rank[0]) + _flat(per_rank[1])
    assert sorted(seen) == sorted(f"sample {k}" for k in range(80))
    again = [_epoch(_dm(urls, num_workers=workers), rank=r, world=2) for r in range(2)]
    assert again == per_rank  # deterministic
    other_epoch = _epoch(_dm(urls, num_workers=workers), rank=0, world=2, epoch=1)
    assert other_epoch != per_rank[0]  # shards and buffer reshuffled per epoch


def test_uneven_shards_never_repeat_and_ranks_stay_in_step(tmp_path):
    write_pairs(tmp_path, [10, 7, 10, 3, 10, 9])
    urls = f"{tmp_path}/{{000000..000005}}.tar"
    per_rank = [_epoch(_dm(urls, num_workers=1), rank=r, world=2) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1])
    seen = _flat(per_rank[0]) + _flat(per_rank[1])
    assert len(seen) == len(set(seen))


def test_pipe_and_gzip_sources_read_the_same_samples(tmp_path):
    write_pairs(tmp_path / "plain", [6] * 4)
    write_pairs(tmp_path / "gz", [6] * 4, gzip=True)
    reference = sorted(_flat(_epoch(_dm(f"{tmp_path}/plain/{{000000..000003}}.tar"))))
    assert len(reference) == 24
    for urls in (f"{tmp_path}/gz/{{000000..000003}}.tar.gz", f"pipe:cat {tmp_path}/plain/{{000000..000003}}.tar",
                 [f"pipe:cat {tmp_path}/gz/00000{i}.tar.gz" for i in range(4)]):
        dm = _dm(urls)  # sizes: the _info.json next to the (piped) shards
        assert sorted(_flat(_epoch(dm))) == reference, urls
    assert len(expand_urls(f"{tmp_path}/plain/{{000000..000001}}.tar::{tmp_path}/plain/000003.tar")) == 3
    assert read_sizes([f"pipe:cat {tmp_path}/plain/000001.tar"]) == [6]  # found next to the piped file
    with pytest.raises(FileNotFoundError, match="2 of the 2 shards of data.urls .*000008.tar, .*000009.tar"):
        expand_urls(f"{tmp_path}/plain/{{000008..000009}}.tar")


def test_epoch_samples_and_resampling(tmp_path):
    write_pairs(tmp_path, [5] * 4)
    urls = f"{tmp_path}/{{000000..000003}}.tar"
    longer = _epoch(_dm(urls, epoch_samples=64, num_workers=2), rank=1, world=2)
    assert len(longer) == 64 // (2 * 4)  # per rank: epoch_samples / (world x batch)
    seen = _flat(longer)
    assert len(set(seen)) == 10  # this rank's 2 shards, started again when they ran out
    resampled = [_epoch(_dm(urls, epoch_samples=40, resampled=True, num_workers=2), rank=r, world=2) for r in range(2)]
    assert [len(b) for b in resampled] == [5, 5]
    assert resampled[0] != resampled[1]
    with pytest.raises(ValueError, match="epoch_samples"):
        _dm(urls, resampled=True)


def _corrupt_shard(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_bad_samples_are_skipped_counted_or_named(tmp_path):
    def good(shard):
        return [(f"{k:03d}.{ext}", data) for k in range(10)
                for ext, data in (("png", _png(k)), ("txt", b"s%d ok %d" % (shard, k)))]

    members = good(0)[:4] + [("bad1.png", b"<html>not an image</html>"), ("bad1.txt", b"x"),
                             ("bad2.png", _png(1))] + good(0)[4:]  # bad2 has no caption
    _corrupt_shard(tmp_path / "000000.tar", members)
    _corrupt_shard(tmp_path / "000001.tar", good(1))
    (tmp_path / "sizes.json").write_text(json.dumps({"000000.tar": 12, "000001.tar": 10}))
    urls = f"{tmp_path}/{{000000..000001}}.tar"
    dm = _dm(urls, batch_size=2, shuffle_buffer=0, max_bad_fraction=1.0, shard_shuffle=False)
    with pytest.warns(UserWarning, match="bad1"):
        batches = _epoch(dm)
    assert dm.num_skipped == 2
    seen = _flat(batches)
    # the 22 listed samples make 11 batches; the 2 bad ones are made up for by the first samples of the
    # worker's shards read again (the rank keeps its batch count: ranks stay in step)
    assert len(seen) == 22 and len(set(seen)) == 20 and seen[-2:] == ["s0 ok 0", "s0 ok 1"]
    with pytest.raises(StreamReadError, match=r"000000.tar:bad1 .*cannot identify image"):
        _epoch(_dm(urls, batch_size=2, shuffle_buffer=0, strict=True))
    # a truncated shard: the samples before the damage are kept, the damage is counted
    data = (tmp_path / "000001.tar").read_bytes()
    (tmp_path / "000001.tar").write_bytes(data[: len(data) // 2 + 100])
    dm = _dm(urls, batch_size=2, shuffle_buffer=0, max_bad_fraction=1.0)
    with pytest.warns(UserWarning):
        _epoch(dm)
    assert dm.num_skipped >= 3
    with pytest.raises(StreamReadError, match="000001.tar"):
        _epoch(_dm(urls, batch_size=2, shuffle_buffer=0, strict=True))


# -- resume ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_resume_sees_exactly_the_remaining_batches(tmp_path, workers):
    write_pairs(tmp_path, [8] * 4)
    urls = f"{tmp_path}/{{000000..000003}}.tar"
    full = _epoch(_dm(urls, num_workers=workers))
    assert len(full) == 8
    for k in (1, 5):
        first = _dm(urls, num_workers=workers)
        head = _epoch(first, limit=k)
        state = first.state_dict()
        assert state["positions"][0][0][0] > 0
        resumed = _dm(urls, num_workers=workers)
        resumed.load_state_dict(torch.load(_save(tmp_path, state), weights_only=True))
        tail = _epoch(resumed)
        assert head + tail == full, k  # the same batches in the same order: nothing repeated or lost
    # the next epoch is untouched by a resume state of the previous one
    first = _dm(urls, num_workers=workers)
    _epoch(first, limit=3)
    resumed = _dm(urls, num_workers=workers)
    resumed.load_state_dict(first.state_dict())
    assert _epoch(resumed, epoch=1) == _epoch(_dm(urls, num_workers=workers), epoch=1)


def _save(tmp_path: Path, state: dict) -> Path:
    path = tmp_path / "state.pt"
    torch.save(state, path)
    return path


def test_shard_resume_skips_started_shards_without_repeats(tmp_path):
    write_pairs(tmp_path, [6] * 8)
    urls = f"{tmp_path}/{{000000..000007}}.tar"
    first = _dm(urls, num_workers=2, resume="shards", batch_size=3)
    head = _epoch(first, limit=3)
    resumed = _dm(urls, num_workers=2, resume="shards", batch_size=3)
    resumed.load_state_dict(first.state_dict())
    tail = _epoch(resumed)
    seen = _flat(head) + _flat(tail)
    assert len(seen) == len(set(seen))  # nothing twice
    assert len(seen) < 48  # the rest of the started shards is given up
    changed = _dm(urls, num_workers=1, batch_size=3)  # another layout: the epoch starts again, with a warning
    changed.load_state_dict(first.state_dict())
    with pytest.warns(UserWarning, match="another layout"):
        assert len(_flat(_epoch(changed))) == 48


# -- modalities --------------------------------------------------------------------------------------


def test_labelled_images_audio_points_and_video_streams(tmp_path):
    import soundfile as sf

    from tests.data.test_video import write_video

    script = _script()
    for c in ("cat", "dog"):
        for i in range(3):
            p = tmp_path / "img" / c / f"{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (12, 10), (50 * i, 0, 0)).save(p)
            a = tmp_path / "wav" / c / f"{i}.wav"
            a.parent.mkdir(parents=True, exist_ok=True)
            sf.write(a, np.sin(np.arange(800) * (i + 1) / 10).astype(np.float32), 8000)
            q = tmp_path / "pts" / c / f"{i}.npy"
            q.parent.mkdir(parents=True, exist_ok=True)
            np.save(q, np.random.default_rng(i).normal(size=(50, 3)))
            write_video(tmp_path / "vid" / c / f"{i}.mp4", 6, 16, 16)
    for kind, folder in (("images", "img"), ("audio", "wav"), ("points", "pts"), ("video", "vid")):
        script.main([kind, str(tmp_path / folder), "--out", str(tmp_path / f"s-{kind}"), "--shard-size", "3"])
    common = {"batch_size": 2, "num_workers": 0, "seed": 0}
    images = StreamImageDataModule(urls=f"{tmp_path}/s-images/{{000000..000001}}.tar", image_size=8, **common)
    x, y = images.on_before_batch_transfer(next(iter(images.train_dataloader())), 0)
    assert x.shape == (2, 3, 8, 8) and images.class_names == ["cat", "dog"] and y.dtype == torch.long
    audio = StreamAudioDataModule(urls=f"{tmp_path}/s-audio/{{000000..000001}}.tar", sample_rate=8000, **common)
    (wav, lengths), y = audio.on_before_batch_transfer(next(iter(audio.train_dataloader())), 0)
    assert wav.shape == (2, 800) and lengths.tolist() == [800, 800] and audio.num_classes == 2
    points = StreamPointCloudDataModule(urls=f"{tmp_path}/s-points/{{000000..000001}}.tar", num_points=32, **common)
    p, y = points.on_before_batch_transfer(next(iter(points.train_dataloader())), 0)
    assert p.shape == (2, 32, 3) and torch.isfinite(p).all()
    video = StreamVideoDataModule(urls=f"{tmp_path}/s-video/{{000000..000001}}.tar", num_frames=3, sampling_rate=2,
                                  crop_size=8, train_scale=(10, 12), val_urls=f"{tmp_path}/s-video/000000.tar",
                                  **common)
    clips, y = video.on_before_batch_transfer(next(iter(video.train_dataloader())), 0)
    assert clips.shape == (2, 3, 3, 8, 8)
    views, _ = video.on_before_batch_transfer(next(iter(video.val_dataloader())), 0)
    assert views.shape == (2, 1, 3, 3, 8, 8)


def test_writer_round_trip_and_info(tmp_path):
    script = _script()
    rows = ["filepath,title,label"]
    for i in range(5):
        p = tmp_path / "im" / f"{i}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (10, 10), (i * 40, 0, 0)).save(p, quality=95)
        rows.append(f"im/{i}.jpg,caption {i},{'ab'[i % 2]}")
    rows.append("im/missing.jpg,gone,a")
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    info = script.main(["csv", str(tmp_path / "t.csv"), "--out", str(tmp_path / "out"), "--shard-size", "2",
                        "--label-key", "label", "--gzip"])
    assert [s["samples"] for s in info["shards"]] == [2, 2, 1] and info["total_samples"] == 5
    assert info["classes"] == ["a", "b"] and "missing.jpg" in info["skipped"][0]
    assert json.loads((tmp_path / "out" / "sizes.json").read_text()) == {"000000.tar.gz": 2, "000001.tar.gz": 2,
                                                                          "000002.tar.gz": 1}
    members = {}
    for name in sorted(os.listdir(tmp_path / "out")):
        if name.endswith(".tar.gz"):
            with tarfile.open(tmp_path / "out" / name) as tar:
                members.update({m.name: tar.extractfile(m).read() for m in tar})
    assert members["000000003.jpg"] == (tmp_path / "im" / "3.jpg").read_bytes()  # bytes copied as they are
    assert members["000000003.txt"] == b"caption 3" and members["000000003.cls"] == b"1"
    with pytest.raises(SystemExit, match="missing.jpg"):
        script.main(["csv", str(tmp_path / "t.csv"), "--out", str(tmp_path / "o2"), "--strict"])


def test_jpeg_draft_decoding_keeps_the_short_side():
    b = io.BytesIO()
    Image.new("RGB", (640, 480), (200, 30, 30)).save(b, "JPEG")
    im = decode_image(b.getvalue(), "RGB", min_size=64)
    assert im.size == (160, 120)  # the DCT scaled by 1/4: 1/8 would give a short side of 60 < 64
    assert decode_image(b.getvalue(), "RGB", min_size=300).size == (640, 480)  # not much smaller: full size


# -- train.py ----------------------------------------------------------------------------------------


def _clip_overrides(tmp_path: Path, workers: int = 0) -> list[str]:
    write_pairs(tmp_path / "train", [16] * 4)
    write_pairs(tmp_path / "val", [8] * 2)
    return ["model=clip", "model.name=clip_nano", "data=webdataset_stream",
            f'data.urls="{tmp_path}/train/{{000000..000003}}.tar"',
            f'data.val_urls="{tmp_path}/val/{{000000..000001}}.tar"', "data.image_size=16", "data.context_length=16",
            "data.batch_size=8", f"data.num_workers={workers}", "data.shuffle_buffer=10"]


def test_clip_trains_on_a_stream(train_cfg, tmp_path):
    from mmzoo.training import train

    metrics = train(train_cfg(*_clip_overrides(tmp_path), "debug=fdr"))
    assert metrics["global_step"] == 1
    for key in ("test/zeroshot_top1", "test/i2t_R@1", "test/loss"):
        assert 0.0 <= metrics[key] <= 8.0, key


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_clip_stream_resume_is_bitwise_exact(train_cfg, tmp_path, workers):
    """A streamed run stopped mid-epoch and resumed equals the uninterrupted run (8 batches per epoch)."""
    from mmzoo.training import train

    ckpt_every = [f"callbacks.model_checkpoint.{k}" for k in
                  ("every_n_epochs=null", "every_n_train_steps=3", "save_top_k=-1", "monitor=null")]
    common = [*_clip_overrides(tmp_path, workers), "trainer.max_epochs=2", "test=false"]
    full = train_cfg(*common, *ckpt_every, run="full")
    train(full)
    ckpts = Path(full.paths.output_dir) / "checkpoints"
    reference = torch.load(ckpts / "last.ckpt", weights_only=True)["state_dict"]
    for name in ("epoch000-step000003.ckpt", "epoch001-step000012.ckpt"):
        resumed = train_cfg(*common, f"ckpt_path={ckpts / name}", run=f"resumed-{name}")
        assert train(resumed)["global_step"] == 16
        got = torch.load(Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        assert [k for k in reference if not torch.equal(reference[k], got[k])] == [], name


@pytest.mark.slow
def test_ddp_stream_trains_and_resumes_exactly(tmp_path):
    """train.py with 2 gloo DDP processes x 2 loader workers on a stream: resumed mid-epoch 1 from a
    checkpoint, the final weights equal the uninterrupted run's."""
    import subprocess
    import sys

    write_pairs(tmp_path / "train", [16] * 8)
    write_pairs(tmp_path / "val", [8] * 4)
    common = ["model=clip", "model.name=clip_nano", "data=webdataset_stream",
              f'data.urls="{tmp_path}/train/{{000000..000007}}.tar"',
              f'data.val_urls="{tmp_path}/val/{{000000..000003}}.tar"', "data.image_size=16",
              "data.context_length=16", "data.batch_size=8", "data.num_workers=2", "trainer=ddp",
              "trainer.accelerator=cpu", "trainer.max_epochs=2", "test=false", "callbacks.progress_bar=null",
              "trainer.enable_progress_bar=false"]
    ckpt_every = [f"callbacks.model_checkpoint.{k}" for k in
                  ("every_n_epochs=null", "every_n_train_steps=3", "save_top_k=-1", "monitor=null")]
    runs = {"full": ckpt_every, "resumed": [f"ckpt_path={tmp_path}/full/checkpoints/epoch001-step000012.ckpt"]}
    for name, extra in runs.items():
        proc = subprocess.run([sys.executable, "train.py", *common, *extra, f"hydra.run.dir={tmp_path / name}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
    full, resumed = (torch.load(tmp_path / n / "checkpoints" / "last.ckpt", weights_only=True) for n in runs)
    assert full["global_step"] == resumed["global_step"] == 16
    assert [k for k in full["state_dict"] if not torch.equal(full["state_dict"][k], resumed["state_dict"][k])] == []


def test_stream_configs_instantiate(train_cfg, tmp_path):
    from hydra.utils import instantiate

    write_pairs(tmp_path, [4] * 2, classes=3)
    urls = f'data.urls="{tmp_path}/{{000000..000001}}.tar"'
    cases = {"webdataset_stream": (StreamImageTextDataModule, ["model=clip"]),
             "webdataset_stream_images": (StreamImageDataModule, []),
             "webdataset_stream_audio": (StreamAudioDataModule, []),
             "webdataset_stream_video": (StreamVideoDataModule, []),
             "webdataset_stream_points": (StreamPointCloudDataModule, [])}
    for name, (cls, extra) in cases.items():
        cfg = train_cfg(*extra, f"data={name}", urls)
        dm = instantiate(cfg.data, _convert_="all")
        assert type(dm) is cls and dm.seed == cfg.seed, name
        assert list(dm.class_names) == ["c0", "c1", "c2"], name  # from the shards' _info.json
    with pytest.raises(Exception, match="urls"):
        instantiate(train_cfg("data=webdataset_stream").data)
