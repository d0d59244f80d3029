"""Video classification data on disk, decoded with PyAV.

Two layouts (``data_scripts/prepare_ucf101.py`` and ``prepare_kinetics.py`` write both):

* class-per-folder trees: ``ROOT/<split>/<class name>/<video>`` (UCF101 / Kinetics style), classes
  sorted by name from the training split;
* CSV lists: one ``path,label`` line per video (a header line is allowed), ``label`` a class name or an
  integer index; relative paths are relative to the CSV file's folder.

Clip sampling follows TimeSformer / SlowFast: a clip is ``num_frames`` frames taken every
``sampling_rate`` frames. Training takes one clip at a random start, resizes the short side to a random
size in ``train_scale`` and crops ``crop_size`` at a random place (random horizontal flip); evaluation
takes ``eval_clips`` clips at uniform starts and ``eval_crops`` (1: centre, 3: both ends and centre of
the long side) crops of the short side resized to ``crop_size``, returned as one ``(V, C, T, S, S)``
tensor whose predictions the task averages.

Unreadable videos and videos shorter than one clip are skipped and counted when the split is scanned
(``skipped``), videos that fail to decode later (a truncated file whose header is intact) when they are
loaded (:mod:`mmzoo.data.bad_samples`); ``strict=True`` raises instead, naming the file, and more than
``max_bad_fraction`` of a split bad stops the run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .bad_samples import DEFAULT_MAX_BAD_FRACTION, BadSampleError, BadSamples, SkippingDataset, check_fraction
from .base import BaseDataModule, sample_seed
from .tables import read_table

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")
MEAN, STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)  # Kinetics statistics of the reference code


class VideoReadError(BadSampleError, RuntimeError):
    """A video could not be decoded or is too short."""


def video_num_frames(path: Union[str, Path]) -> int:
    """Frame count from the container, decoding the stream when the container does not say."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path}: no video stream")
            stream = container.streams.video[0]
            if stream.frames > 0:
                return int(stream.frames)
            return sum(1 for _ in container.decode(stream))
    except VideoReadError:
        raise
    except Exception as e:  # noqa: BLE001 - PyAV raises many error types for broken files
        raise VideoReadError(f"could not read video {path}: {e}") from e


def read_video(path: Union[str, Path], indices: Optional[Sequence[int]] = None, seek: bool = True) -> torch.Tensor:
    """Decode a video to uint8 frames (T, 3, H, W); only ``indices`` (sorted or not) when given.

    With ``seek`` the decoder first jumps to the keyframe at or before the first wanted frame (PyAV
    ``container.seek(..., backward=True)``) and numbers the frames it then decodes by their timestamps, so a
    clip late in a long video costs one GOP of decoding rather than everything before it. The frames are the
    ones decoding from frame 0 gives (a decoder restarts exactly at a keyframe); a stream without a constant
    frame rate or timestamps, a seek that lands after the wanted frame, or frame numbers that do not follow
    one another fall back to decoding from the start.
    """
    import av

    wanted = None if indices is None else set(int(i) for i in indices)
    frames: dict[int, torch.Tensor] = {}
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            done = False
            if seek and wanted and min(wanted) > 0:
                done = _read_after_seek(container, stream, wanted, frames)
                if not done:
                    frames.clear()
                    container.seek(0, stream=stream, backward=True, any_frame=False)
            if not done:
                for i, frame in enumerate(container.decode(stream)):
                    if wanted is None or i in wanted:
                        frames[i] = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
                    if wanted is not None and i >= max(wanted):
                        break
    except Exception as e:  # noqa: BLE001
        raise VideoReadError(f"could not decode video {path}: {e}") from e
    if indices is None:
        if not frames:
            raise VideoReadError(f"video {path} has no frames")
        return torch.stack([frames[i] for i in sorted(frames)])
    missing = sorted(set(int(i) for i in indices) - set(frames))
    if missing:
        raise VideoReadError(f"video {path} has {len(frames) and max(frames) + 1} decodable frames, "
                             f"frame {missing[0]} was requested")
    return torch.stack([frames[int(i)] for i in indices])


def _read_after_seek(container, stream, wanted: set[int], frames: dict[int, torch.Tensor]) -> bool:
    """Decode ``wanted`` frames after seeking to the keyframe before the first; False when the frame numbers
    cannot be trusted (the caller then decodes from the start)."""
    rate, base = stream.average_rate, stream.time_base
    if not rate or not base or (stream.guessed_rate and stream.guessed_rate != rate):
        return False
    t0 = stream.start_time or 0
    first, last = min(wanted), max(wanted)
    # the timestamp of frame `first` (frame i is shown at t0 + i / rate), rounded down
    container.seek(t0 + int(first / (rate * base)), stream=stream, backward=True, any_frame=False)
    previous = None
    for frame in container.decode(stream):
        if frame.pts is None:
            return False
        i = round(float((frame.pts - t0) * base * rate))
        if (previous is None and i > first) or (previous is not None and i != previous + 1):
            return False  # landed after the wanted frame, or not one frame per tick: numbering unknown
        previous = i
        if i in wanted:
            frames[i] = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
        if i >= last:
            return True
    return previous is not None and previous >= last


def clip_span(num_frames: int, sampling_rate: int) -> int:
    """Frames a clip covers in the video."""
    return (num_frames - 1) * sampling_rate + 1


def clip_indices(start: int, num_frames: int, sampling_rate: int) -> list[int]:
    return [start + i * sampling_rate for i in range(num_frames)]


def uniform_starts(video_len: int, span: int, num_clips: int) -> list[int]:
    """``num_clips`` clip starts spread uniformly over the video (centred when there is one)."""
    room = video_len - span
    if num_clips == 1:
        return [room // 2]
    return [round(i * room / (num_clips - 1)) for i in range(num_clips)]


def resize_short_side(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(T, C, H, W) float -> short side ``size`` (bilinear, antialiased)."""
    H, W = frames.shape[-2:]
    scale = size / min(H, W)
    new = (max(size, round(H * scale)), max(size, round(W * scale)))
    return F.interpolate(frames, size=new, mode="bilinear", align_corners=False, antialias=True)


def three_crops(frames: torch.Tensor, size: int, num_crops: int) -> list[torch.Tensor]:
    """Square crops along the long side: 1 = centre, 3 = start, centre, end (SlowFast's 3-crop test)."""
    H, W = frames.shape[-2:]
    if num_crops not in (1, 3):
        raise ValueError(f"data.eval_crops must be 1 or 3, got {num_crops}")
    offsets = [(H - size) // 2, 0, H - size] if H > W else [(W - size) // 2, 0, W - size]
    offsets = offsets[:1] if num_crops == 1 else [offsets[1], offsets[0], offsets[2]]
    cy, cx = (H - size) // 2, (W - size) // 2
    return [frames[..., o:o + size, cx:cx + size] if H > W else frames[..., cy:cy + size, o:o + size]
            for o in offsets]


def train_augment(frames: torch.Tensor, rand: Callable[[int], int], train_scale: tuple[int, int], crop_size: int) -> torch.Tensor:
    """The training clip augmentation: resize the short side to a random size in ``train_scale``, a random
    ``crop_size`` square crop, a random horizontal flip (draws from ``rand(high)``, an int in [0, high)).

    Args:
        frames: (C, T, H, W) float clip.
        rand: the sample's seeded draw function.
        train_scale: (low, high) short-side sizes.
        crop_size: side of the crop.
    """
    lo, hi = train_scale
    frames = resize_short_side(frames, rand(hi - lo + 1) + lo)
    H, W = frames.shape[-2:]
    y, x = rand(H - crop_size + 1), rand(W - crop_size + 1)
    frames = frames[..., y:y + crop_size, x:x + crop_size]
    return frames.flip(-1) if rand(2) else frames


def normalize(frames: torch.Tensor) -> torch.Tensor:
    """float frames in [0, 255], (T, C, H, W) -> normalised (C, T, H, W)."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD).view(1, 3, 1, 1) * 255
    return ((frames - mean) / std).transpose(0, 1).contiguous()


class VideoClipDataset(SkippingDataset):
    """``(clip, label)`` pairs from a list of ``(path, label)`` videos.

    Args:
        samples: (path, label) pairs.
        num_frames: frames per clip.
        sampling_rate: stride between the frames of a clip.
        train: one random clip/crop (``(C, T, S, S)``) instead of the multi-view evaluation
            (``(V, C, T, S, S)`` with ``V = eval_clips * eval_crops``).
        crop_size: side S of the crops.
        train_scale: short-side range of the random resize before the training crop.
        eval_clips: evaluation clips per video.
        eval_crops: evaluation crops per clip.
        strict: raise on an unreadable / too-short video instead of skipping it (without ``bad``).
        bad: the split's :class:`~mmzoo.data.bad_samples.BadSamples` (strictness, cap, counts).
    """

    def __init__(self, samples: Sequence[tuple[str, int]], num_frames: int = 8, sampling_rate: int = 8,
                 train: bool = True, crop_size: int = 224, train_scale: tuple[int, int] = (256, 320),
                 eval_clips: int = 1, eval_crops: int = 1, strict: bool = False,
                 bad: Optional[BadSamples] = None) -> None:
        self.num_frames, self.sampling_rate, self.train = num_frames, sampling_rate, train
        self.crop_size, self.train_scale = crop_size, tuple(train_scale)
        self.eval_clips, self.eval_crops, self.strict = eval_clips, eval_crops, strict
        self.seed, self.epoch = 0, 0
        span = clip_span(num_frames, sampling_rate)
        self.samples: list[tuple[str, int, int]] = []  # (path, label, frame count)
        bad = bad if bad is not None else BadSamples("the listed videos", strict, DEFAULT_MAX_BAD_FRACTION, VideoReadError,
                                                     "video")
        seen = len(bad.scan)
        for path, label in samples:
            try:
                n = video_num_frames(path)
                if n < span:
                    raise VideoReadError(f"video {path} has {n} frames, a clip of {num_frames} frames every "
                                         f"{sampling_rate} needs {span} (lower data.sampling_rate or data.num_frames)")
            except VideoReadError as e:
                bad.reject(str(path), e)
                continue
            self.samples.append((str(path), int(label), n))
        self.skipped: dict[str, str] = dict(bad.scan[seen:])  # path -> reason, of this listing
        bad.scanned(len(samples) + seen)  # rows of a video list rejected before count too
        self.attach(bad)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def sample_name(self, index: int) -> str:
        return self.samples[index][0]

    def load(self, index: int):
        path, label, n = self.samples[index]
        span = clip_span(self.num_frames, self.sampling_rate)
        if self.train:
            # random draws depend only on (seed, epoch, index), not on workers or resumption
            g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index))
            rand = lambda high: int(torch.randint(high, (), generator=g))
            start = rand(n - span + 1)
            frames = read_video(path, clip_indices(start, self.num_frames, self.sampling_rate)).float()
            return normalize(train_augment(frames, rand, self.train_scale, self.crop_size)), label
        views = []
        for start in uniform_starts(n, span, self.eval_clips):
            frames = read_video(path, clip_indices(start, self.num_frames, self.sampling_rate)).float()
            frames = resize_short_side(frames, self.crop_size)
            views += [normalize(c) for c in three_crops(frames, self.crop_size, self.eval_crops)]
        return torch.stack(views), label  # (V, C, T, S, S)


def list_video_folder(root: Union[str, Path], class_names: Optional[Sequence[str]] = None):
    """(path, label) pairs and class names of a ``root/<class>/<video>`` tree."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder {root} does not exist (expected ROOT/<split>/<class>/<video>)")
    names = list(class_names) if class_names else sorted(d.name for d in root.iterdir() if d.is_dir())
    if not names:
        raise ValueError(f"no class folders in {root}")
    index = {c: i for i, c in enumerate(names)}
    samples = []
    for d in sorted(root.iterdir()):
        if d.is_dir():
            if d.name not in index:
                raise ValueError(f"{d} is a class missing from the training split's classes {names[:10]}...")
            samples += [(str(p), index[d.name]) for p in sorted(d.iterdir())
                        if p.suffix.lower() in VIDEO_EXTENSIONS]
    return samples, names


def read_video_list(path: Union[str, Path], class_names: Optional[Sequence[str]] = None,
                    bad: Optional[BadSamples] = None):
    """(path, label) pairs of a ``path,label`` CSV (header row optional); class names from the labels when
    they are names. Bad rows (not UTF-8, fewer than two fields, an empty value) go to ``bad``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video list {path} does not exist (a CSV of path,label lines)")
    # a header row is optional: a first row whose path column reads "path", "video" or "filename"
    with open(path, "rb") as f:
        header = f.readline().split(b",")[0].strip().lower() in (b"path", b"video", b"filename")
    bad = bad if bad is not None else BadSamples(f"video list {path}", what="row", error=VideoReadError)
    rows = []
    for _, row in read_table(path, ",", {"path": None, "label": None}, bad, required=["path", "label"],
                             names=["path", "label"], skip_first=header):
        p = Path(row["path"].strip())
        rows.append((str(p if p.is_absolute() else path.parent / p), row["label"].strip()))
    labels = [lab for _, lab in rows]
    if all(lab.lstrip("-").isdigit() for lab in labels):
        return [(p, int(lab)) for p, lab in rows], list(class_names) if class_names else None
    names = list(class_names) if class_names else sorted(set(labels))
    index = {c: i for i, c in enumerate(names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ValueError(f"{path}: labels {unknown[:5]} are not among the training classes")
    return [(p, index[lab]) for p, lab in rows], names


class VideoDataModule(BaseDataModule):
    """Video classification from a class-per-folder tree (``root``) or CSV lists (``*_list``).

    Args:
        root: ``ROOT/{train,val,test}/<class>/<video>``; ignored for splits given as lists.
        train_list: ``path,label`` CSV file of the training videos.
        val_list: the same for validation.
        test_list: the same for testing.
        num_frames: frames per clip (TimeSformer on Kinetics: 8).
        sampling_rate: stride between frames (TimeSformer on Kinetics: 32).
        crop_size: side of the crops.
        train_scale: short-side range of the random resize before the training crop.
        eval_clips: test clips per video (the paper: 1 clip x 3 crops for TimeSformer, 10 x 3 for
            others); validation uses ``val_clips`` x 1 centre crop to stay cheap.
        eval_crops: test crops per clip.
        val_clips: clips per validation video.
        strict: raise on unreadable / too-short videos instead of skipping and counting them.
        max_bad_fraction: fail when more than this share of a split's videos (or list rows) is bad.

    ``batch_size``, ``num_workers``, ``seed``, ``pin_memory``, ``eval_batch_size``: see :class:`BaseDataModule`.
    """

    def __init__(self, root: Optional[str] = None, train_list: Optional[str] = None, val_list: Optional[str] = None,
                 test_list: Optional[str] = None, num_frames: int = 8, sampling_rate: int = 4,
                 crop_size: int = 224, train_scale: tuple[int, int] = (256, 320), eval_clips: int = 1,
                 eval_crops: int = 3, val_clips: int = 1, strict: bool = False, batch_size: int = 8,
                 num_workers: int = 0, seed: int = 0, pin_memory: bool = False,
                 eval_batch_size: Optional[int] = None, max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory, eval_batch_size)
        self.max_bad_fraction = check_fraction(max_bad_fraction)
        if root is None and train_list is None:
            raise ValueError("set data.root (a ROOT/<split>/<class>/<video> tree) or data.train_list (a CSV)")
        self.root, self.lists = root, {"train": train_list, "val": val_list, "test": test_list}
        self.num_frames, self.sampling_rate = num_frames, sampling_rate
        self.crop_size, self.train_scale = crop_size, tuple(train_scale)
        self.eval_clips, self.eval_crops, self.val_clips = eval_clips, eval_crops, val_clips
        self.strict = strict
        self.image_size, self.in_chans = crop_size, 3
        self.skipped: dict[str, dict[str, str]] = {}
        samples, self.class_names = self._split("train", None)
        if self.class_names is None:
            self.class_names = [str(i) for i in range(max(lab for _, lab in samples) + 1)]
        self._samples = {"train": samples}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _bad(self, split: str) -> BadSamples:
        source = f"data.{split}_list {self.lists[split]}" if self.lists[split] is not None else \
            f"{Path(self.root) / split}"
        return self.bad_samples_of(split, source, "video", VideoReadError)

    def _split(self, split: str, class_names):
        if self.lists[split] is not None:
            return read_video_list(self.lists[split], class_names, self._bad(split))
        if self.root is None or not (Path(self.root) / split).is_dir():
            return None, class_names
        return list_video_folder(Path(self.root) / split, class_names)

    def _dataset(self, split: str, train: bool, clips: int, crops: int) -> Optional[Dataset]:
        samples = self._samples.get(split)
        if samples is None:
            samples, _ = self._split(split, self.class_names)
        if samples is None:
            return None
        ds = VideoClipDataset(samples, self.num_frames, self.sampling_rate, train, self.crop_size, self.train_scale,
                              clips, crops, self.strict, self._bad(split))
        self.skipped[split] = ds.skipped
        return ds

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        train = self._dataset("train", True, 1, 1)
        if train is not None:
            train.seed = self.seed
        self.train_set = train
        self.val_set = self._dataset("val", False, self.val_clips, 1)
        self.test_set = self._dataset("test", False, self.eval_clips, self.eval_crops)


