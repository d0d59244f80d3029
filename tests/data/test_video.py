"""Video files: PyAV decoding, clip sampling, train / multi-view eval, folder and CSV layouts, and
unreadable / too-short videos skipped and counted (or named in strict mode)."""
from __future__ import annotations

from pathlib import Path

import av
import pytest
import torch

from mmzoo.data.bad_samples import BadSamples
from mmzoo.data.video import (VideoClipDataset, _read_after_seek, VideoDataModule, VideoReadError, clip_indices, read_video,
                              three_crops, uniform_starts, video_num_frames)


def write_video(path: Path, num_frames: int, h: int = 24, w: int = 32, value_step: int = 20) -> Path:
    """A video whose frame i is a flat grey of value 10 + value_step * i (easy to recognise after coding)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(num_frames):
            img = torch.full((h, w, 3), min(10 + value_step * i, 250), dtype=torch.uint8).numpy()
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


def test_read_video_and_selected_frames(tmp_path):
    p = write_video(tmp_path / "a.mp4", 10, value_step=20)
    assert video_num_frames(p) == 10
    frames = read_video(p)
    assert frames.shape == (10, 3, 24, 32) and frames.dtype == torch.uint8
    picked = read_video(p, [1, 3, 5])
    means = picked.float().mean(dim=(1, 2, 3))
    torch.testing.assert_close(means, torch.tensor([30.0, 70.0, 110.0]), atol=6, rtol=0)


def test_sampling_helpers():
    assert clip_indices(2, 4, 3) == [2, 5, 8, 11]
    assert uniform_starts(20, 11, 1) == [4] and uniform_starts(20, 11, 3) == [0, 4, 9]
    frames = torch.arange(2 * 3 * 4 * 8, dtype=torch.float32).view(2, 3, 4, 8)
    crops = three_crops(frames, 4, 3)
    assert [c.shape[-1] for c in crops] == [4, 4, 4]
    assert torch.equal(crops[0], frames[..., 0:4]) and torch.equal(crops[2], frames[..., 4:8])


def test_skip_and_count_bad_videos_or_raise_in_strict_mode(tmp_path):
    good = write_video(tmp_path / "good.mp4", 12)
    short = write_video(tmp_path / "short.mp4", 3)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x01 not a video" * 10)
    samples = [(str(good), 0), (str(short), 1), (str(corrupt), 1)]
    lenient = BadSamples("test videos", max_fraction=1.0, error=VideoReadError, what="video")
    ds = VideoClipDataset(samples, num_frames=4, sampling_rate=2, crop_size=16, train_scale=(16, 20), bad=lenient)
    assert len(ds) == 1 and set(ds.skipped) == {str(short), str(corrupt)}
    assert "has 3 frames" in ds.skipped[str(short)]
    with pytest.raises(VideoReadError, match="short.mp4"):
        VideoClipDataset(samples, num_frames=4, sampling_rate=2, strict=True)
    with pytest.raises(VideoReadError, match="corrupt.mp4"):
        VideoClipDataset([samples[2]], num_frames=4, sampling_rate=2, strict=True)


def test_train_clip_and_multi_view_eval(tmp_path):
    p = write_video(tmp_path / "v.mp4", 16, h=24, w=32, value_step=12)
    train = VideoClipDataset([(str(p), 3)], num_frames=4, sampling_rate=2, crop_size=16, train_scale=(16, 24))
    x, y = train[0]
    assert x.shape == (3, 4, 16, 16) and y == 3
    train.seed = 1
    assert torch.equal(train[0][0], train[0][0])  # a function of (seed, epoch, index)
    # frames are taken every 2: consecutive clip frames differ by 2 * 12 grey levels
    levels = x.mean(dim=(0, 2, 3)) * 0.225 * 255 + 0.45 * 255
    torch.testing.assert_close(levels[1:] - levels[:-1], torch.full((3,), 24.0), atol=6, rtol=0)
    ev = VideoClipDataset([(str(p), 3)], num_frames=4, sampling_rate=2, train=False, crop_size=16,
                          eval_clips=2, eval_crops=3)
    views, _ = ev[0]
    assert views.shape == (6, 3, 4, 16, 16)


def test_folder_and_csv_datamodules(tmp_path):
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        for cls in ("jump", "run"):
            for i in range(n):
                write_video(tmp_path / "tree" / split / cls / f"{i}.mp4", 10)
    (tmp_path / "tree" / "train" / "run" / "broken.mp4").write_bytes(b"junk")
    dm = VideoDataModule(root=str(tmp_path / "tree"), num_frames=4, sampling_rate=2, crop_size=16,
                         train_scale=(16, 20), batch_size=2, eval_crops=3, max_bad_fraction=0.25)
    dm.setup("fit")
    assert dm.class_names == ["jump", "run"] and len(dm.train_set) == 4 and len(dm.skipped["train"]) == 1
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 4, 16, 16)
    xt, _ = next(iter(dm.test_dataloader()))
    assert xt.shape == (2, 3, 3, 4, 16, 16)  # 1 clip x 3 crops per video
    lines = ["path,label"] + [f"tree/train/{c}/{i}.mp4,{c}" for c in ("jump", "run") for i in range(2)]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    dm = VideoDataModule(train_list=str(tmp_path / "train.csv"), num_frames=4, sampling_rate=2, crop_size=16,
                         train_scale=(16, 20), batch_size=2)
    dm.setup("fit")
    assert dm.class_names == ["jump", "run"] and len(dm.train_set) == 4 and dm.val_set is None
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        VideoDataModule(train_list=str(tmp_path / "missing.csv"))


def _long_video(path: Path, num_frames: int, gop: int, codec: str = "mpeg4") -> Path:
    """A video of moving noise-free gradients with a keyframe every ``gop`` frames."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = 48, 32, "yuv420p"
        s.codec_context.gop_size = gop
        y, x = torch.meshgrid(torch.arange(32), torch.arange(48), indexing="ij")
        for i in range(num_frames):
            img = torch.stack([(x * 5 + i * 3) % 256, (y * 7 + i) % 256, (x + y + 2 * i) % 256], -1).to(torch.uint8)
            for pkt in s.encode(av.VideoFrame.from_ndarray(img.numpy(), format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


@pytest.mark.parametrize("codec", ["mpeg4", "libx264"])
def test_seeking_decodes_the_frames_decoding_from_the_start_gives(tmp_path, codec):
    if codec not in av.codecs_available:
        pytest.skip(f"{codec} encoder not in this PyAV build")
    p = _long_video(tmp_path / f"long-{codec}.mp4", 90, gop=10, codec=codec)
    full = read_video(p, seek=False)
    assert full.shape[0] == 90
    for idx in ([0, 2, 4], [9, 10, 11], [37, 41, 45, 49], [80, 85, 89], [55], [70, 60, 65]):
        got = read_video(p, idx, seek=True)
        assert torch.equal(got, full[idx]), idx  # bit-identical: decoding restarts exactly at a keyframe
        assert torch.equal(got, read_video(p, idx, seek=False)), idx
    with av.open(str(p)) as c:  # the seeking path was taken (not the fall-back from frame 0)
        found: dict = {}
        assert _read_after_seek(c, c.streams.video[0], {41, 45}, found) and sorted(found) == [41, 45]
