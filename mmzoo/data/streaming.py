"""Streaming WebDataset shards: open_clip-compatible tar shards read as a stream, for every modality.

Sources (``data.urls``) are what open_clip's ``--train-data`` takes: local paths, brace lists
(``shards/{000000..000099}.tar``), several lists joined by ``::``, ``pipe:`` commands
(``pipe:cat shards/000000.tar``, ``pipe:curl -s https://...``) and URLs, uncompressed ``.tar`` or
compressed ``.tar.gz`` (opened and iterated by the ``webdataset`` package: ``gopen``, its tar iterator and
``group_by_keys``). A sample is the members sharing a key (``000123.jpg`` + ``000123.txt``).

**Splitting.** Epoch ``e``'s shard order is a permutation seeded by ``(seed, e)`` (``shard_shuffle``);
rank ``r`` of ``W`` takes shards ``r, r+W, ...`` of it and loader worker ``w`` of ``N`` takes every
``N``-th of those from ``w`` (what ``wds.split_by_node`` then ``wds.split_by_worker`` do). With
``resampled=True`` every worker instead draws shards with replacement from the whole list from its own
seeded generator (open_clip's ``--dataset-resampled``). Samples pass through a shuffle buffer of
``shuffle_buffer`` raw samples (seeded per epoch, rank and worker) and are decoded after it.

**Epoch length.** Every rank yields the same number of batches per epoch, so no rank waits at a collective
for one that ran out of data. ``epoch_samples`` (global, open_clip's ``--train-num-samples``) fixes it to
``epoch_samples // (world_size * batch_size)`` batches per rank, shared out evenly over the workers; a
worker whose shards run out starts them again. Without it, one epoch is one pass over the shards: the
per-shard sample counts of ``_info.json`` / ``sizes.json`` (written by ``data_scripts/write_shards.py``)
give each worker's batches, and each rank keeps the batches of the rank that has fewest, so a pass drops the
samples of uneven shards that do not fill a batch on every rank, and never repeats a sample. With shards of
equal size whose count is a multiple of ``world_size * max(num_workers, 1)`` every sample is seen exactly
once per epoch.

**Bad samples.** A sample that does not decode, lacks a member its modality needs, or is cut short by a
truncated shard is skipped and counted (:mod:`mmzoo.data.bad_samples`: ``num_skipped``,
``skipped_files``), and the next sample takes its place; ``strict=True`` raises naming the shard and the
key. More than ``max_bad_fraction`` of the samples read bad (checked once 200 have been read) stops the run.

**Resume** (``resume``): every batch carries its worker's position in its stream; the data module keeps the
position of the last batch each rank trained on and saves all ranks' positions in the checkpoint.

* ``"exact"`` (default): each worker replays its deterministic stream up to the saved position, reading
  but not decoding the consumed samples, and continues with the next one: no sample repeated, none lost,
  the same batches as the uninterrupted run. The replay reads the epoch's consumed part of each worker's
  shards again (I/O only).
* ``"shards"``: each worker skips the shards it had started without opening them and continues with the
  next shard, with a fresh shuffle buffer: no sample repeated, but the unread rest of the started shards
  and the samples waiting in the buffer are lost for this epoch. Cheap for remote shards.

Both need the same ``world_size``, ``num_workers``, batch size, shards and seed as the interrupted run;
otherwise the epoch starts again (with a warning). ``resampled`` streams resume exactly too (the shard
draws are seeded).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shlex
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .bad_samples import DEFAULT_MAX_BAD_FRACTION, SHOWN, BadSampleError, check_fraction, reason_of
from .base import BaseDataModule, sample_seed
from .captions import CLIP_MEAN, CLIP_STD, CaptionsCollate, collate_labelled
from .tokenizer import DEFAULT_CONTEXT_LENGTH, TextDataMixin
from .transforms import build_eval_transform, build_train_transform

# the stream's __len__ is the batches per rank the plan allows (see EpochPlan), not a guess that workers
# could each serve in full, which is what this Lightning warning is about
warnings.filterwarnings("ignore", message=".*`IterableDataset` has `__len__` defined.*")

Urls = Union[str, Sequence[str]]
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
LABEL_EXTENSIONS = ("cls", "label", "class")
AUDIO_EXTENSIONS = ("flac", "wav", "mp3", "ogg")
VIDEO_EXTENSIONS = ("mp4", "avi", "webm", "mkv", "mov")
POINT_EXTENSIONS = ("npy", "ply", "off", "txt", "xyz", "obj", "stl", "glb")
RESUME_MODES = ("exact", "shards")
INFO_FILES = ("_info.json", "sizes.json")  # mmzoo's writer, then open_clip's
STREAM_KEY = "__stream__"  # the batch's position record, removed before the task sees the batch
BATCH_KEY = "__batch__"
CAP_MIN_SAMPLES = 200  # max_bad_fraction is checked once this many samples were read
# a position: samples taken out of the shuffle buffer (decoded or not), samples decoded, shards started,
# bad samples
POSITION_FIELDS = 4


class StreamReadError(BadSampleError):
    """A bad sample of a stream (``strict``), or too many of them; the message names the shard and key."""


# ----------------------------------------------------------------------------------------------------
# shard lists and sizes
# ----------------------------------------------------------------------------------------------------


def expand_urls(spec: Urls, key: str = "urls") -> list[str]:
    """Shard URLs of ``spec``: a string with brace lists / ranges and ``::``-joined lists (expanded by
    ``webdataset``), or a list of such strings."""
    from webdataset.shardlists import expand_urls as wds_expand

    patterns = [spec] if isinstance(spec, (str, Path)) else list(spec or [])
    urls = [u for p in patterns for u in wds_expand(str(p))]
    if not urls:
        raise ValueError(f"data.{key} names no shard")
    missing = [u for u in urls if not u.startswith("pipe:") and local_path(u) is not None
               and not os.path.isfile(local_path(u))]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of the {len(urls)} shards of data.{key} do not exist: "
                                f"{', '.join(missing[:SHOWN])}{' ...' if len(missing) > SHOWN else ''}")
    return urls


def local_path(url: str) -> Optional[str]:
    """The local file behind a shard URL (a path, ``file:`` or the file argument of ``pipe:cat``), else None."""
    if url.startswith("file:"):
        return url[5:]
    if url.startswith("pipe:"):
        try:
            words = shlex.split(url[5:])
        except ValueError:
            return None
        files = [w for w in words[1:] if os.path.isfile(w)]
        return files[-1] if words and words[0] == "cat" and files else None
    if "://" in url:
        return None
    return url


def shard_name(url: str) -> str:
    """How sizes files name a shard: its base name."""
    path = local_path(url)
    return os.path.basename(path if path is not None else url.split("?")[0].rstrip("/").split()[-1])


def read_sizes(urls: Sequence[str], sizes_file: Optional[str] = None) -> Optional[list[int]]:
    """Samples per shard of ``urls`` from ``sizes_file`` or, when None, the ``_info.json`` (mmzoo) or
    ``sizes.json`` (open_clip: ``{shard name: count}``) next to the first local shard; None without one."""
    if sizes_file is None:
        first = local_path(urls[0])
        if first is None:
            return None
        for name in INFO_FILES:
            candidate = os.path.join(os.path.dirname(first), name)
            if os.path.isfile(candidate):
                sizes_file = candidate
                break
        else:
            return None
    try:
        data = json.loads(Path(sizes_file).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the shard sizes file {sizes_file}: {e}") from None
    if isinstance(data, dict) and isinstance(data.get("shards"), list):  # _info.json
        table = {str(s["name"]): int(s["samples"]) for s in data["shards"]}
    elif isinstance(data, dict):
        table = {str(k): int(v) for k, v in data.items()}
    else:
        raise ValueError(f"{sizes_file} is not a sizes file: expected {{shard name: samples}} or _info.json")
    missing = [shard_name(u) for u in urls if shard_name(u) not in table]
    if missing:
        raise ValueError(f"the sizes file {sizes_file} has no count for {len(missing)} shard(s): "
                         f"{', '.join(missing[:SHOWN])}")
    return [table[shard_name(u)] for u in urls]


def read_info(urls: Sequence[str]) -> dict[str, Any]:
    """The ``_info.json`` next to the first local shard (classes, vocabulary ...), or {}."""
    first = local_path(urls[0])
    if first is None:
        return {}
    path = os.path.join(os.path.dirname(first), "_info.json")
    if not os.path.isfile(path):
        return {}
    try:
        return json.loads(Path(path).read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


# ----------------------------------------------------------------------------------------------------
# the plan of an epoch: shards and batches per (rank, worker); pure functions
# ----------------------------------------------------------------------------------------------------


def epoch_shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    if not shuffle:
        return list(range(num_shards))
    g = torch.Generator().manual_seed(sample_seed(seed, epoch, 0x5EED))
    return torch.randperm(num_shards, generator=g).tolist()


def slot_shards(order: Sequence[int], rank: int, world: int, worker: int, num_workers: int) -> list[int]:
    """``split_by_node`` then ``split_by_worker``: rank ``r`` takes ``order[r::world]``, worker ``w`` every
    ``num_workers``-th of those from ``w``."""
    return list(order[rank::world][worker::num_workers])


def _trim(quotas: list[int], total: int) -> list[int]:
    """Lower the largest quotas (ties: the later worker) one by one until they sum to ``total``."""
    q = list(quotas)
    while sum(q) > total:
        j = max(range(len(q)), key=lambda i: (q[i], i))
        q[j] -= 1
    return q


@dataclass
class EpochPlan:
    """What one rank reads in one epoch: per worker its shards (None: drawn with replacement) and its
    target of decoded samples, and the rank's batch count (equal on every rank)."""

    shards: list[Optional[list[int]]]
    targets: list[int]
    batches: int


def plan_epoch(num_shards: int, sizes: Optional[Sequence[int]], epoch: int, seed: int, rank: int, world: int,
               num_workers: int, batch_size: int, shard_shuffle: bool = True, resampled: bool = False,
               epoch_samples: Optional[int] = None, drop_last: bool = True) -> EpochPlan:
    """The :class:`EpochPlan` of ``rank`` (see the module docstring for the rules).

    Args:
        num_shards: shards in the URL list.
        sizes: samples per shard (None: unknown; ``epoch_samples`` is then needed).
        epoch: the epoch (seeds the shard order).
        seed: base seed.
        rank: this rank.
        world: number of ranks.
        num_workers: loader workers per rank (0 counts as 1).
        batch_size: samples per batch.
        shard_shuffle: permute the shards each epoch before splitting them.
        resampled: draw shards with replacement (needs ``epoch_samples``).
        epoch_samples: samples per epoch over all ranks (None: one pass over the shards).
        drop_last: training: whole batches only; evaluation (False) keeps each worker's last partial batch.
    """
    nw = max(1, num_workers)
    if resampled and epoch_samples is None:
        raise ValueError("data.resampled=true draws shards forever: set data.epoch_samples (samples per epoch)")
    if epoch_samples is not None:
        batches = int(epoch_samples) // (world * batch_size)
        if batches < 1:
            raise ValueError(f"data.epoch_samples={epoch_samples} is less than one batch per rank "
                             f"({world} rank(s) x data.batch_size={batch_size})")
        quotas = [batches // nw + (w < batches % nw) for w in range(nw)]
        if resampled:
            return EpochPlan([None] * nw, [q * batch_size for q in quotas], batches)
    if num_shards < world * nw:
        raise ValueError(f"{num_shards} shard(s) cannot be split over {world} rank(s) x {nw} loader worker(s): "
                         f"every worker needs a shard; write more, smaller shards (data_scripts/write_shards.py "
                         f"--shard-size) or lower data.num_workers")
    order = epoch_shard_order(num_shards, seed, epoch, shard_shuffle)
    shards = [slot_shards(order, rank, world, w, nw) for w in range(nw)]
    if epoch_samples is not None:
        return EpochPlan(shards, [q * batch_size for q in quotas], batches)
    if sizes is None:
        raise ValueError("one pass over the shards needs their sample counts: write them with "
                         "data_scripts/write_shards.py (_info.json), give data.sizes_file (open_clip's sizes.json), "
                         "or set data.epoch_samples")

    def capacity(r: int) -> list[int]:
        n = [sum(sizes[i] for i in slot_shards(order, r, world, w, nw)) for w in range(nw)]
        return [c // batch_size if drop_last else -(-c // batch_size) for c in n], n

    caps = [capacity(r) for r in range(world)]
    batches = min(sum(c) for c, _ in caps)
    mine, counts = caps[rank]
    quotas = _trim(mine, batches)
    targets = [counts[w] if (not drop_last and quotas[w] == mine[w]) else quotas[w] * batch_size
               for w in range(nw)]
    return EpochPlan(shards, targets, batches)


def max_batches(sizes: Optional[Sequence[int]], world: int, batch_size: int, num_workers: int,
                epoch_samples: Optional[int], drop_last: bool) -> int:
    """An upper bound of :attr:`EpochPlan.batches` over epochs (the loader's ``len``)."""
    if epoch_samples is not None:
        return int(epoch_samples) // (world * batch_size)
    total = sum(sizes or ())
    return total // (world * batch_size) if drop_last else -(-total // (world * batch_size)) + max(1, num_workers)


# ----------------------------------------------------------------------------------------------------
# the stream
# ----------------------------------------------------------------------------------------------------


class _Failures:
    """webdataset's handler: shard-level read errors (a truncated or corrupt tar) become bad samples."""

    def __init__(self, strict: bool) -> None:
        self.strict, self.errors = strict, []
        self.url = ""

    def __call__(self, exn: Exception) -> bool:
        text = reason_of(exn)
        if self.strict:
            raise StreamReadError(f"cannot read shard {self.url} ({text}); repair or remove it, or set "
                                  f"data.strict=false to skip and count bad samples") from exn
        self.errors.append((self.url, f"the shard is truncated or corrupt ({text}); its samples before the damage "
                                      f"are kept"))
        return True


@dataclass
class Position:
    """A worker's place in its stream of one epoch."""

    pulled: int = 0  # raw samples taken out of the shuffle buffer (decoded or found bad)
    good: int = 0  # samples decoded and yielded
    shards: int = 0  # shards started (in the worker's shard sequence, over passes)
    bad: int = 0

    def as_list(self) -> list[int]:
        return [self.pulled, self.good, self.shards, self.bad]


class ShardStream(IterableDataset):
    """One split of shards as an ``IterableDataset`` yielding ``(decoded sample, position)`` pairs.

    Args:
        urls: the shard URLs (already expanded).
        decode: ``(raw sample, epoch)`` -> the modality's sample; a raw sample is a dict of ``__key__``,
            ``__url__`` and one ``bytes`` per member extension. Raises on a bad sample.
        batch_size: samples per batch (epoch lengths are whole batches per rank).
        sizes: samples per shard (None: unknown).
        rank: this process's rank.
        world: number of ranks.
        num_workers: loader workers the stream is read by.
        seed: shard order / shuffle buffer / resampling seed.
        shard_shuffle: permute the shards each epoch.
        shuffle_buffer: raw samples held to shuffle (0 or 1: stream order).
        resampled: draw shards with replacement.
        epoch_samples: samples per epoch over all ranks.
        drop_last: whole batches only (training).
        strict: raise on the first bad sample.
        resume: "exact" or "shards" (module docstring).
        where: how messages name the split ("data.urls").
    """

    def __init__(self, urls: Sequence[str], decode: Callable[[dict, int], Any], batch_size: int,
                 sizes: Optional[Sequence[int]] = None, rank: int = 0, world: int = 1, num_workers: int = 0,
                 seed: int = 0, shard_shuffle: bool = True, shuffle_buffer: int = 0, resampled: bool = False,
                 epoch_samples: Optional[int] = None, drop_last: bool = True, strict: bool = False,
                 resume: str = "exact", where: str = "data.urls") -> None:
        if resume not in RESUME_MODES:
            raise ValueError(f"unknown data.resume {resume!r}; valid choices: {list(RESUME_MODES)}")
        if sizes is not None and len(sizes) != len(urls):
            raise ValueError(f"{len(sizes)} shard sizes for {len(urls)} shards of {where}")
        self.urls, self.decode, self.batch_size, self.sizes = list(urls), decode, batch_size, sizes
        self.rank, self.world, self.num_workers, self.seed = rank, world, num_workers, seed
        self.shard_shuffle, self.shuffle_buffer, self.resampled = shard_shuffle, shuffle_buffer, resampled
        self.epoch_samples, self.drop_last, self.strict, self.resume = epoch_samples, drop_last, strict, resume
        self.where = where
        self.epoch = 0
        #: worker -> Position to continue from, for epoch ``resume_epoch`` (set before an iterator is made)
        self.resume_from: dict[int, Position] = {}
        self.resume_epoch: Optional[int] = None
        self.rotation = 0  # of the workers' turns in the resumed epoch (see __iter__)
        self.resume_targets: dict[int, int] = {}  # worker -> samples, of a resumed epoch (resume="shards")
        self.plan(0)  # fail now on a layout that cannot be split

    def plan(self, epoch: int) -> EpochPlan:
        return plan_epoch(len(self.urls), self.sizes, epoch, self.seed, self.rank, self.world, self.num_workers,
                          self.batch_size, self.shard_shuffle, self.resampled, self.epoch_samples, self.drop_last)

    def __len__(self) -> int:
        # the DataLoader's len (batches per rank); an epoch may end sooner (module docstring)
        return max_batches(self.sizes, self.world, self.batch_size, self.num_workers, self.epoch_samples,
                           self.drop_last) * self.batch_size

    def _slot(self) -> int:
        return self.rank * max(1, self.num_workers) + self.worker

    # -- raw samples ----------------------------------------------------------------------------------
    def _read_shard(self, index: int, failures: _Failures) -> Iterator[dict]:
        from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

        failures.url = self.urls[index]
        source = url_opener([{"url": self.urls[index]}], handler=failures)
        yield from group_by_keys(tar_file_expander(source, handler=failures), handler=failures)

    def _raw(self, shards: Optional[list[int]], start: int, failures: _Failures, counter: list[int]) -> Iterator[dict]:
        """Raw samples of one pass over ``shards`` from its shard ``start % len(shards)`` (or, resampled,
        of shards drawn forever from draw ``start``); ``counter[0]`` counts the shards started so far in
        the worker's sequence of shards (over passes)."""
        if shards is None:
            rng = random.Random(sample_seed(self.seed, self.epoch, 1_000_000 + self._slot()))
            k = 0
            while True:
                index = rng.randrange(len(self.urls))
                k += 1
                if k > start:
                    counter[0] = k
                    yield from self._read_shard(index, failures)
        first = start - start % len(shards)
        for j in range(start % len(shards), len(shards)):
            counter[0] = first + j + 1
            yield from self._read_shard(shards[j], failures)

    def _shuffled(self, samples: Iterator[dict], rng: random.Random) -> Iterator[dict]:
        """A deterministic shuffle buffer (webdataset's algorithm with an explicit generator)."""
        size = self.shuffle_buffer
        if size <= 1:
            yield from samples
            return
        buf: list[dict] = []
        for sample in samples:
            buf.append(sample)
            if len(buf) < size:
                continue
            j = rng.randrange(len(buf))
            buf[j], buf[-1] = buf[-1], buf[j]
            yield buf.pop()
        while buf:
            j = rng.randrange(len(buf))
            buf[j], buf[-1] = buf[-1], buf[j]
            yield buf.pop()

    # -- the iterator -------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[Any, list[int]]]:
        """``(sample, [worker, *position])`` pairs of this worker's share of the epoch."""
        info = get_worker_info()
        workers = info.num_workers if info is not None else 1
        if workers != max(1, self.num_workers):
            raise RuntimeError(f"ShardStream was planned for {self.num_workers} loader workers but runs in "
                               f"{workers}")
        # the loader asks its workers for batches in turn from worker 0: a resumed epoch makes worker 0
        # play the part of the worker whose batch came next, so the batches keep their order
        rotation = self.rotation if self.resume_epoch == self.epoch else 0
        self.worker = ((info.id if info is not None else 0) + rotation) % workers
        plan = self.plan(self.epoch)
        shards, target = plan.shards[self.worker], plan.targets[self.worker]
        pos = Position()
        if self.resume_epoch == self.epoch and self.worker in self.resume_from:
            pos = Position(*self.resume_from[self.worker].as_list())
            target = self.resume_targets.get(self.worker, target)
        if pos.good >= target:
            return
        failures = _Failures(self.strict)
        counter = [0]
        rng = random.Random(sample_seed(self.seed, self.epoch, 2_000_000 + self._slot()))
        start, skip = 0, pos.pulled  # exact: replay the consumed raw samples without decoding them
        if self.resume == "shards" and pos.pulled:  # continue with the next unopened shard, a fresh buffer
            rng = random.Random(sample_seed(self.seed, self.epoch, 3_000_000 + 1000 * pos.shards + self._slot()))
            start, skip = pos.shards, 0
        while True:  # passes over the worker's shards until it has its target (one, unless data is short)
            read = 0
            for raw in self._shuffled(self._raw(shards, start, failures, counter), rng):
                read += 1
                if skip:
                    skip -= 1
                    continue
                pos.pulled += 1
                pos.shards = counter[0]
                name = f"{raw.get('__url__', '?')}:{raw.get('__key__', '?')}"
                try:
                    item = self.decode(raw, self.epoch)
                except Exception as e:  # noqa: BLE001 - decoders of broken files raise every type there is
                    self._bad(pos, name, e)
                    continue
                while failures.errors:  # shard-level damage found while reading
                    url, why = failures.errors.pop(0)
                    self._bad(pos, url, why)
                pos.good += 1
                yield item, [self.worker, *pos.as_list()]
                if pos.good >= target:
                    return
            if read == 0:
                raise StreamReadError(f"no readable sample in the {len(shards)} shard(s) of {self.where} read by "
                                      f"loader worker {self.worker} of rank {self.rank} (first: "
                                      f"{self.urls[shards[0]]})")
            start = counter[0]  # the first shard of the next pass

    def _bad(self, pos: Position, name: str, e: Union[Exception, str]) -> None:
        text = e if isinstance(e, str) else reason_of(e)
        if self.strict:
            raise StreamReadError(f"bad sample {name} of {self.where} ({text}); repair or remove it, or set "
                                  f"data.strict=false to skip and count bad samples") \
                from (e if isinstance(e, Exception) else None)
        pos.bad += 1
        if pos.bad <= SHOWN:
            tail = " (further ones are counted, not reported one by one)" if pos.bad == SHOWN else ""
            warnings.warn(f"skipped bad sample {name} of {self.where}: {text}{tail}", stacklevel=2)


class StreamCollate:
    """``(sample, (worker, *position))`` items -> ``{BATCH_KEY: the modality's batch, STREAM_KEY: the last
    item's (worker, *position)}``."""

    def __init__(self, collate: Callable[[list], Any]) -> None:
        self.collate = collate

    def __call__(self, items: Sequence[tuple[Any, list[int]]]) -> dict[str, Any]:
        return {BATCH_KEY: self.collate([s for s, _ in items]), STREAM_KEY: torch.tensor(items[-1][1], dtype=torch.long)}


def unwrap(batch: Any) -> Any:
    """The modality's batch of a stream loader's batch (what tasks receive)."""
    return batch[BATCH_KEY] if isinstance(batch, dict) and BATCH_KEY in batch else batch


class StreamLoader(DataLoader):
    """A DataLoader over a :class:`ShardStream` whose iterator starts at its first batch, taking the
    stream's epoch from ``epoch_fn`` then (Lightning makes the first epoch's iterator before a resumed
    run's epoch is restored)."""

    def __init__(self, dataset: ShardStream, epoch_fn: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self._epoch_fn = epoch_fn

    def __iter__(self) -> "_LazyIterator":
        return _LazyIterator(self)

    def _start(self):
        self.dataset.epoch = int(self._epoch_fn())
        return super().__iter__()


class _LazyIterator:
    def __init__(self, loader: StreamLoader) -> None:
        self.loader, self.iterator = loader, None

    def __iter__(self) -> "_LazyIterator":
        return self

    def __next__(self) -> Any:
        if self.iterator is None:
            self.iterator = self.loader._start()
        return next(self.iterator)

    def __len__(self) -> int:
        return len(self.loader)


# ----------------------------------------------------------------------------------------------------
# decoding per modality
# ----------------------------------------------------------------------------------------------------


def member(sample: dict, extensions: Sequence[str], what: str) -> tuple[str, bytes]:
    """The first member of ``sample`` with one of ``extensions``; raises naming what is missing."""
    for ext in extensions:
        if ext in sample:
            return ext, sample[ext]
    have = sorted(k for k in sample if not k.startswith("__"))
    raise BadSampleError(f"no {what} member ({', '.join('.' + e for e in extensions)}); it has {have}")


def decode_image(data: bytes, mode: str = "RGB", min_size: Optional[int] = None) -> Image.Image:
    """Decode image bytes; a JPEG at least twice ``min_size`` on its short side is decoded at reduced size
    (PIL draft mode: the DCT scaled by 1/2, 1/4 or 1/8, the short side staying >= ``min_size``)."""
    im = Image.open(io.BytesIO(data))
    if min_size and im.format == "JPEG" and min(im.size) >= 2 * min_size:
        w, h = im.size
        s = min_size / min(w, h)
        im.draft(mode, (max(1, int(w * s + 0.999)), max(1, int(h * s + 0.999))))
    return im.convert(mode)


def decode_label(sample: dict) -> int:
    _, raw = member(sample, LABEL_EXTENSIONS, "class label")
    text = raw.decode("utf-8").strip()
    try:
        return int(text)
    except ValueError:
        raise BadSampleError(f"class label {text[:40]!r} is not an integer") from None


def decode_text(sample: dict, extensions: Sequence[str] = ("txt",), what: str = "caption") -> str:
    _, raw = member(sample, extensions, what)
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise BadSampleError(f"{what} is not UTF-8 ({e})") from None
    if not text:
        raise BadSampleError(f"empty {what}")
    return text


class _TempFile:
    """A member written to a temporary file, for readers that take paths (PyAV, point parsers)."""

    def __init__(self, data: bytes, ext: str) -> None:
        self.data, self.ext = data, ext

    def __enter__(self) -> str:
        fd, self.path = tempfile.mkstemp(suffix="." + self.ext)
        with os.fdopen(fd, "wb") as f:
            f.write(self.data)
        return self.path

    def __exit__(self, *exc) -> None:
        os.unlink(self.path)


def sample_key_seed(seed: int, epoch: int, sample: dict) -> int:
    """A seed from (seed, epoch, shard and key): per-sample randomness independent of workers, the shuffle
    buffer and resumption."""
    key = f"{shard_name(sample.get('__url__', ''))}:{sample.get('__key__', '')}".encode()
    return sample_seed(seed, epoch, int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 2)


def seeded(transform: Optional[Callable], x: Any, seed: int) -> Any:
    """``transform(x)`` with torch's CPU generator seeded by ``seed`` (the global state is restored)."""
    if transform is None:
        return x
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return transform(x)


class ImageTextDecoder:
    """``.jpg``/``.png``/``.webp`` + ``.txt`` -> ``(image tensor, caption)``.

    Args:
        transform: PIL image -> tensor (seeded per sample and epoch).
        image_size: side fed to the model (JPEG draft decoding keeps the short side >= it).
        draft: decode large JPEGs at reduced size.
        seed: augmentation seed.
    """

    def __init__(self, transform: Optional[Callable], image_size: int, draft: bool = True, seed: int = 0) -> None:
        self.transform, self.image_size, self.draft, self.seed = transform, image_size, draft, seed

    def image(self, sample: dict, epoch: int) -> torch.Tensor:
        _, data = member(sample, IMAGE_EXTENSIONS, "image")
        im = decode_image(data, "RGB", self.image_size if self.draft else None)
        return seeded(self.transform, im, sample_key_seed(self.seed, epoch, sample))

    def __call__(self, sample: dict, epoch: int) -> tuple[torch.Tensor, str]:
        caption = decode_text(sample)
        return self.image(sample, epoch), caption


class LabelledImageDecoder(ImageTextDecoder):
    """``.jpg``/``.png``/``.webp`` + ``.cls`` -> ``(image tensor, label)``."""

    def __call__(self, sample: dict, epoch: int) -> tuple[torch.Tensor, int]:
        label = decode_label(sample)
        return self.image(sample, epoch), label


class AudioDecoder:
    """``.flac``/``.wav``/``.mp3``/``.ogg`` + ``.cls`` (label) or ``.txt`` (transcript) -> ``(wave, label)`` or
    ``(wave, -1, transcript)`` (the items of :class:`mmzoo.data.audio.AudioCollate`).

    Args:
        target: "label" or "transcript".
        sample_rate: rate the audio is resampled to.
        max_samples: longer clips are cropped (randomly when ``random_crop``).
        random_crop: crop at a seeded random place (training).
        seed: crop seed.
    """

    def __init__(self, target: str, sample_rate: int = 16000, max_samples: Optional[int] = None,
                 random_crop: bool = False, seed: int = 0) -> None:
        self.target, self.sample_rate, self.max_samples = target, sample_rate, max_samples
        self.random_crop, self.seed = random_crop, seed

    def __call__(self, sample: dict, epoch: int):
        from .audio import crop_or_pad, normalize, read_audio

        ext, data = member(sample, AUDIO_EXTENSIONS, "audio")
        text = decode_text(sample, ("txt",), "transcript") if self.target == "transcript" else None
        label = decode_label(sample) if self.target == "label" else -1
        with _TempFile(data, ext) as path:
            wav = read_audio(path, self.sample_rate)
        g = torch.Generator().manual_seed(sample_key_seed(self.seed, epoch, sample)) if self.random_crop else None
        wav = normalize(crop_or_pad(wav, self.max_samples, g))
        return (wav, label) if text is None else (wav, label, text)


class VideoDecoder:
    """``.mp4``/``.avi``/``.webm``/``.mkv``/``.mov`` + ``.cls`` -> ``(clip, label)``: one clip of
    ``num_frames`` frames every ``sampling_rate``; training: random start, scale, crop and flip
    ``(C, T, S, S)``; evaluation: the centre clip's centre crop as one view ``(1, C, T, S, S)``
    (:class:`mmzoo.data.video.VideoClipDataset`'s formats). Frames are read with keyframe seeking.

    Args:
        num_frames: frames per clip.
        sampling_rate: stride between frames.
        crop_size: crop side.
        train_scale: short-side range of the training resize.
        train: training sampling (else evaluation).
        seed: clip / crop seed.
    """

    def __init__(self, num_frames: int, sampling_rate: int, crop_size: int, train_scale: tuple[int, int],
                 train: bool, seed: int = 0) -> None:
        self.num_frames, self.sampling_rate, self.crop_size = num_frames, sampling_rate, crop_size
        self.train_scale, self.train, self.seed = tuple(train_scale), train, seed

    def __call__(self, sample: dict, epoch: int):
        from .video import (clip_indices, clip_span, normalize, read_video, resize_short_side, three_crops,
                            train_augment, video_num_frames)

        label = decode_label(sample)
        ext, data = member(sample, VIDEO_EXTENSIONS, "video")
        span = clip_span(self.num_frames, self.sampling_rate)
        with _TempFile(data, ext) as path:
            n = video_num_frames(path)
            if n < span:
                raise BadSampleError(f"{n} frames, a clip of {self.num_frames} every {self.sampling_rate} needs "
                                     f"{span}")
            g = torch.Generator().manual_seed(sample_key_seed(self.seed, epoch, sample))
            rand = lambda high: int(torch.randint(high, (), generator=g))  # noqa: E731
            start = rand(n - span + 1) if self.train else (n - span) // 2
            frames = read_video(path, clip_indices(start, self.num_frames, self.sampling_rate)).float()
        if not self.train:
            frames = resize_short_side(frames, self.crop_size)
            return normalize(three_crops(frames, self.crop_size, 1)[0]).unsqueeze(0), label
        return normalize(train_augment(frames, rand, self.train_scale, self.crop_size)), label


class PointCloudDecoder:
    """A point file member (``.npy``, ``.ply``, ``.off``, ``.txt``/``.xyz``; ``.obj``/``.stl``/``.glb`` with
    trimesh) + ``.cls`` -> ``(points (num_points, 3), label)``: a seeded random subset (or seeded repeats
    when the file has fewer points), scaled into the unit sphere, then ``augment``.

    Args:
        num_points: points per cloud.
        augment: training augmentation (a callable on (num_points, 3)) or None.
        mesh_points: surface samples drawn from a mesh.
        min_points: files with fewer points are bad.
        seed: sampling seed.
    """

    def __init__(self, num_points: int, augment: Optional[Callable] = None, mesh_points: int = 8192,
                 min_points: int = 32, seed: int = 0) -> None:
        self.num_points, self.augment, self.mesh_points = num_points, augment, mesh_points
        self.min_points, self.seed = min_points, seed

    def __call__(self, sample: dict, epoch: int):
        from .point_files import load_point_file
        from .points import normalize_unit_sphere

        label = decode_label(sample)
        ext, data = member(sample, POINT_EXTENSIONS, "point cloud")
        s = sample_key_seed(self.seed, 0, sample)  # mesh samples: the same cloud every epoch
        if ext == "npy":
            pts = np.load(io.BytesIO(data), allow_pickle=False)
        else:
            with _TempFile(data, "txt" if ext == "xyz" else ext) as path:
                pts = load_point_file(path, self.mesh_points, s)
        pts = np.asarray(pts, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] < 3:
            raise BadSampleError(f"points of shape {tuple(pts.shape)}, expected (N, 3)")
        pts = pts[:, :3]
        if pts.shape[0] < self.min_points:
            raise BadSampleError(f"{pts.shape[0]} points, fewer than data.min_points={self.min_points}")
        if not np.isfinite(pts).all():
            raise BadSampleError("non-finite coordinates (NaN or inf)")
        p = torch.from_numpy(pts).float()
        g = torch.Generator().manual_seed(s)
        n = p.shape[0]
        p = p[torch.randperm(n, generator=g)[: self.num_points]] if n >= self.num_points else \
            torch.cat([p, p[torch.randint(n, (self.num_points - n,), generator=g)]])
        p = normalize_unit_sphere(p)
        return seeded(self.augment, p, sample_key_seed(self.seed, epoch, sample)), label


# ----------------------------------------------------------------------------------------------------
# data modules
# ----------------------------------------------------------------------------------------------------

SPLITS = ("train", "val", "test")


class StreamingDataModule(BaseDataModule):
    """Shards read as a stream (module docstring); subclasses give the modality: :meth:`decoder` and
    :meth:`collate`.

    Args:
        urls: training shards: a brace pattern / ``::`` list / ``pipe:`` command, or a list of them.
        val_urls: validation shards (None: no validation).
        test_urls: test shards (None: the validation shards).
        sizes_file: samples per training shard (``_info.json`` or open_clip's ``sizes.json``; default: the
            one next to the first local shard).
        val_sizes_file: the same for ``val_urls``.
        test_sizes_file: the same for ``test_urls``.
        epoch_samples: training samples per epoch over all ranks (None: one pass over the shards).
        resampled: draw training shards with replacement (needs ``epoch_samples``).
        shard_shuffle: permute the training shards every epoch before splitting them.
        shuffle_buffer: raw training samples held to shuffle (0: stream order).
        resume: "exact" (replay the consumed part of the epoch) or "shards" (skip the shards started).
        strict: raise on the first bad sample, naming its shard and key.
        max_bad_fraction: fail when more than this share of the samples read is bad.

    ``batch_size``, ``num_workers``, ``seed``, ``pin_memory``, ``eval_batch_size``: see :class:`BaseDataModule`.
    """

    def __init__(self, urls: Urls, val_urls: Optional[Urls] = None, test_urls: Optional[Urls] = None,
                 sizes_file: Optional[str] = None, val_sizes_file: Optional[str] = None,
                 test_sizes_file: Optional[str] = None, epoch_samples: Optional[int] = None, resampled: bool = False,
                 shard_shuffle: bool = True, shuffle_buffer: int = 1000, resume: str = "exact", strict: bool = False,
                 max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION, batch_size: int = 64, num_workers: int = 2,
                 seed: int = 0, pin_memory: bool = False, eval_batch_size: Optional[int] = None) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory, eval_batch_size)
        if resume not in RESUME_MODES:
            raise ValueError(f"unknown data.resume {resume!r}; valid choices: {list(RESUME_MODES)}")
        if shuffle_buffer < 0:
            raise ValueError(f"data.shuffle_buffer must be >= 0, got {shuffle_buffer}")
        if epoch_samples is not None and int(epoch_samples) < 1:
            raise ValueError(f"data.epoch_samples must be >= 1 (or null: one pass), got {epoch_samples}")
        if resampled and epoch_samples is None:
            raise ValueError("data.resampled=true draws shards forever: set data.epoch_samples (samples per epoch)")
        self.urls: dict[str, Optional[list[str]]] = {
            "train": expand_urls(urls, "urls"),
            "val": expand_urls(val_urls, "val_urls") if val_urls else None,
            "test": expand_urls(test_urls, "test_urls") if test_urls else None,
        }
        if self.urls["test"] is None:
            self.urls["test"], test_sizes_file = self.urls["val"], val_sizes_file
        self.sizes = {split: read_sizes(u, f) if u else None
                      for split, u, f in zip(SPLITS, self.urls.values(), (sizes_file, val_sizes_file, test_sizes_file))}
        self.info = read_info(self.urls["train"])
        self.epoch_samples = None if epoch_samples is None else int(epoch_samples)
        self.resampled, self.shard_shuffle, self.shuffle_buffer = resampled, shard_shuffle, shuffle_buffer
        self.resume, self.strict = resume, strict
        self.max_bad_fraction = check_fraction(max_bad_fraction)
        self.streams: dict[str, ShardStream] = {}
        #: per worker of this rank, the position after the last training batch: [pulled, good, shards, bad]
        self.positions: dict[int, list[int]] = {}
        self._positions_epoch: Optional[int] = None
        self._last_worker = -1  # the worker of the last training batch
        self._reported_bad = 0

    # -- to implement -------------------------------------------------------------------------------
    def decoder(self, split: str) -> Callable[[dict, int], Any]:
        """``(raw sample, epoch)`` -> one sample of ``split``."""
        raise NotImplementedError

    def collate(self) -> Optional[Callable]:
        """The modality's collate (None: ``default_collate``)."""
        return None

    # -- streams ------------------------------------------------------------------------------------
    def _where(self, split: str) -> str:
        return "data.urls" if split == "train" else f"data.{split}_urls"

    def _workers_for(self, split: str, world: int) -> int:
        if split == "train":
            return self.num_workers
        # small evaluation sets: no more workers than each rank has shards
        return min(self.num_workers, len(self.urls[split]) // world)

    def stream(self, split: str) -> ShardStream:
        """The :class:`ShardStream` of ``split`` for this rank."""
        urls = self.urls[split]
        if urls is None:
            raise ValueError(f"{type(self).__name__} has no {split} shards: set {self._where(split)}")
        rank, world = self._rank_world()
        train = split == "train"
        return ShardStream(urls, self.decoder(split), self.batch_size if train else self.eval_batch_size,
                           self.sizes[split], rank, world, self._workers_for(split, world), self.seed,
                           shard_shuffle=self.shard_shuffle and train,
                           shuffle_buffer=self.shuffle_buffer if train else 0, resampled=self.resampled and train,
                           epoch_samples=self.epoch_samples if train else None, drop_last=train,
                           strict=self.strict, resume=self.resume, where=self._where(split))

    def collate_fn(self) -> Callable:
        collate = self.collate()
        return StreamCollate(collate if collate is not None else torch.utils.data.default_collate)

    def _epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.current_epoch) if trainer is not None else 0

    def _stream_loader(self, split: str) -> StreamLoader:
        ds = self.stream(split)
        self.streams[split] = ds
        return StreamLoader(ds, self._epoch, batch_size=ds.batch_size, num_workers=ds.num_workers,
                            collate_fn=self.collate_fn(), pin_memory=self.pin_memory, drop_last=False,
                            persistent_workers=False, generator=torch.Generator().manual_seed(self.seed))

    def setup(self, stage: Optional[str] = None) -> None:
        pass  # nothing to index: shards are opened by the loader workers

    def train_dataloader(self) -> StreamLoader:
        loader = self._stream_loader("train")
        if self._resume_state is not None:
            # kept: Lightning may build the loader more than once; positions only apply to their epoch
            self._apply_resume(loader.dataset, self._resume_state)
        return loader

    def val_dataloader(self) -> Union[StreamLoader, list]:
        return self._stream_loader("val") if self.urls["val"] else []

    def test_dataloader(self) -> Union[StreamLoader, list]:
        return self._stream_loader("test") if self.urls["test"] else []

    # -- positions and bad samples, from the batches ------------------------------------------------
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if not (isinstance(batch, dict) and STREAM_KEY in batch):
            return batch
        record = batch[STREAM_KEY].tolist()
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.training:
            epoch = self._epoch()
            if self._positions_epoch != epoch:
                self.positions, self._positions_epoch = {}, epoch
            self.positions[int(record[0])] = [int(v) for v in record[1:]]
            self._last_worker = int(record[0])
            self._check_bad()
        return batch[BATCH_KEY]

    @property
    def num_skipped(self) -> int:
        """Bad training samples skipped by this rank's workers in the current epoch."""
        return sum(p[3] for p in self.positions.values())

    def _check_bad(self) -> None:
        bad = self.num_skipped
        read = sum(p[0] for p in self.positions.values())
        if bad > self._reported_bad and bad > self.max_bad_fraction * max(read, CAP_MIN_SAMPLES):
            self._reported_bad = bad
            raise StreamReadError(f"{bad} of the {read} samples read from {self._where('train')} are bad, more "
                                  f"than data.max_bad_fraction={self.max_bad_fraction:g} of them; check the shards "
                                  f"and their format, or raise data.max_bad_fraction")

    # -- resume -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Every rank's worker positions in the current training epoch (gathered: the checkpoint is
        written by rank 0), with the layout they are valid for."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        rank, world = self._rank_world()
        nw = max(1, self.num_workers)
        mine = torch.full((nw + 1, POSITION_FIELDS), -1, dtype=torch.long)  # last row: the last batch's worker
        if self._positions_epoch == self._epoch():
            for w, p in self.positions.items():
                mine[w] = torch.tensor(p)
            mine[nw, 0] = self._last_worker
        if world > 1:
            # every rank saves checkpoints together (Trainer.save_checkpoint runs on all ranks)
            gathered = trainer.strategy.all_gather(mine.to(trainer.strategy.root_device)).cpu()
            gathered = gathered.reshape(world, nw + 1, POSITION_FIELDS)
        else:
            gathered = mine.unsqueeze(0)
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": self._epoch(), "batches_done": int(done), "world": world, "num_workers": self.num_workers,
                "batch_size": self.batch_size, "num_shards": len(self.urls["train"]), "seed": self.seed,
                "positions": gathered.tolist()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._resume_state = dict(state_dict)

    def _apply_resume(self, stream: ShardStream, state: dict[str, Any]) -> None:
        if "positions" not in state:
            return
        layout = {"world": stream.world, "num_workers": self.num_workers, "batch_size": self.batch_size,
                  "num_shards": len(self.urls["train"]), "seed": self.seed}
        changed = [f"{k} {state.get(k)} -> {v}" for k, v in layout.items() if state.get(k) != v]
        if changed:
            rank_zero_warn(f"the checkpoint's stream positions are for another layout ({', '.join(changed)}): "
                           f"epoch {state['epoch']} starts again from its first sample")
            return
        *rows, (last, *_) = state["positions"][stream.rank]
        stream.resume_from = {w: Position(*row) for w, row in enumerate(rows) if row[0] >= 0}
        stream.resume_epoch = int(state["epoch"])
        stream.rotation = (last + 1) % max(1, self.num_workers) if last >= 0 else 0
        self.positions = {w: list(row) for w, row in enumerate(rows) if row[0] >= 0}
        self._positions_epoch, self._last_worker = int(state["epoch"]), last
        if self.resume == "shards" and stream.sizes is not None and self.epoch_samples is None:
            stream.resume_targets = self._shard_resume_targets(stream, state)

    def _shard_resume_targets(self, stream: ShardStream, state: dict[str, Any]) -> dict[int, int]:
        """Per worker of this rank, the samples of a pass resumed by skipping started shards: what is left
        in the unstarted shards, in whole batches, and on every rank the batches of the rank with fewest
        (the ranks stay in step and nothing repeats)."""
        nw, b, epoch = max(1, self.num_workers), stream.batch_size, int(state["epoch"])
        caps = []
        for r in range(stream.world):
            plan = plan_epoch(len(stream.urls), stream.sizes, epoch, self.seed, r, stream.world, self.num_workers, b,
                              stream.shard_shuffle)
            cap = []
            for w, (pulled, good, started, _) in enumerate(state["positions"][r][:nw]):
                shards = plan.shards[w] or []
                if pulled <= 0:
                    cap.append(plan.targets[w] // b)
                    continue
                left = sum(stream.sizes[i] for i in shards[started:])
                cap.append(min(plan.targets[w] // b, good // b + left // b))
            caps.append(cap)
        mine = _trim(caps[stream.rank], min(sum(c) for c in caps))
        return {w: q * b for w, q in enumerate(mine)}


class DropPositions:
    """A collate for loaders used outside the trainer (zero-shot evaluation): the positions are dropped."""

    def __init__(self, collate: Callable[[list], Any]) -> None:
        self.collate = collate

    def __call__(self, items: Sequence[tuple[Any, list[int]]]) -> Any:
        return self.collate([s for s, _ in items])


def _class_names(given: Optional[Sequence[str]], info: dict[str, Any], num_classes: Optional[int]) -> list[str]:
    if given:
        return [str(c) for c in given]
    if info.get("classes"):
        return [str(c) for c in info["classes"]]
    return [str(i) for i in range(num_classes)] if num_classes else []


class StreamImageTextDataModule(TextDataMixin, StreamingDataModule):
    """Image-text pairs (``.jpg``/``.png``/``.webp`` + ``.txt``, open_clip's shards) as a stream, in the batch
    format of :class:`mmzoo.data.CaptionsDataModule` (``{"image", "text", "caption"}``) for CLIP / CoCa.

    Shards that also hold a ``.cls`` per sample and a class list (``_info.json`` ``classes``, or
    ``class_names``) give zero-shot evaluation on the validation / test shards.

    Args:
        image_size: side S fed to the model.
        tokenizer: "clip" or a path to a ByteBPETokenizer .json.
        context_length: token sequence length.
        mean: normalisation mean per channel (default: CLIP's).
        std: normalisation std per channel (default: CLIP's).
        augment: random resized crop for training (no flip: captions name left and right).
        crop_scale: area range of the training crop.
        draft: decode JPEGs at least twice ``image_size`` at reduced size.
        class_names: class names of the ``.cls`` labels (default: ``_info.json``'s ``classes``).
        zeroshot_templates: prompts for zero-shot evaluation (None: the task's defaults).
        **kwargs: options of :class:`StreamingDataModule` (urls, epoch_samples, batch_size ...).
    """

    in_chans = 3

    def __init__(self, image_size: int = 224, tokenizer: str = "clip", context_length: int = DEFAULT_CONTEXT_LENGTH,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD, augment: bool = True,
                 crop_scale: tuple[float, float] = (0.9, 1.0), draft: bool = True,
                 class_names: Optional[Sequence[str]] = None, zeroshot_templates: Optional[Sequence[str]] = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if image_size < 1:
            raise ValueError(f"data.image_size must be >= 1, got {image_size}")
        if context_length < 2:
            raise ValueError(f"data.context_length must be >= 2 (room for SOT and EOT), got {context_length}")
        self.image_size, self.tokenizer_name, self.context_length = image_size, str(tokenizer), context_length
        self.mean, self.std, self.augment, self.crop_scale = tuple(mean), tuple(std), augment, tuple(crop_scale)
        self.draft = draft
        self._class_names = _class_names(class_names, self.info, None)
        self.zeroshot_templates = list(zeroshot_templates) if zeroshot_templates else None

    @property
    def class_names(self) -> list[str]:
        return self._class_names

    @property
    def num_classes(self) -> int:
        return len(self._class_names)

    def _transform(self, train: bool) -> Callable:
        if train and self.augment:
            return build_train_transform(self.image_size, self.mean, self.std, crop="resized",
                                         scale=self.crop_scale, hflip=False)
        return build_eval_transform(self.image_size, self.mean, self.std)

    def decoder(self, split: str) -> Callable[[dict, int], Any]:
        return ImageTextDecoder(self._transform(split == "train"), self.image_size, self.draft, self.seed)

    def collate(self) -> Callable:
        return CaptionsCollate(self.tokenizer, self.context_length)

    def zeroshot_dataloader(self, split: str = "test") -> DataLoader:
        """Each image of the ``split`` shards once with its ``.cls`` label: ``{"image", "label"}`` batches,
        the whole split on every rank (what :class:`mmzoo.tasks.ContrastiveTask` expects)."""
        if not self.class_names:
            raise ValueError(f"{type(self).__name__} has no class names for zero-shot evaluation: write shards "
                             f"with .cls labels and classes in _info.json, or set data.class_names")
        urls = self.urls[split]
        if urls is None:
            raise ValueError(f"{type(self).__name__} has no {split} shards: set {self._where(split)}")
        workers = min(self.num_workers, len(urls))
        ds = ShardStream(urls, LabelledImageDecoder(self._transform(False), self.image_size, self.draft, self.seed),
                         self.eval_batch_size, self.sizes[split], 0, 1, workers, self.seed, shard_shuffle=False,
                         drop_last=False, strict=self.strict, where=self._where(split))
        return StreamLoader(ds, lambda: 0, batch_size=self.eval_batch_size, num_workers=workers,
                            collate_fn=DropPositions(collate_labelled), pin_memory=self.pin_memory,
                            generator=torch.Generator().manual_seed(self.seed))


class StreamImageDataModule(StreamingDataModule):
    """Labelled images (``.jpg``/``.png``/``.webp`` + ``.cls``) as a stream: ``(images, labels)`` batches
    (the format of :class:`mmzoo.data.ImageFolderDataModule`).

    Args:
        image_size: side fed to the model.
        mean: normalisation mean per channel.
        std: normalisation std per channel.
        augment: random resized crop and horizontal flip for training.
        crop_scale: area range of the training crop.
        draft: decode JPEGs at least twice ``image_size`` at reduced size.
        class_names: class names of the labels (default: ``_info.json``'s ``classes``).
        num_classes: number of classes when there are no names.
        **kwargs: options of :class:`StreamingDataModule` (urls, epoch_samples, batch_size ...).
    """

    in_chans = 3

    def __init__(self, image_size: int = 224, mean: Sequence[float] = (0.485, 0.456, 0.406),
                 std: Sequence[float] = (0.229, 0.224, 0.225), augment: bool = True,
                 crop_scale: tuple[float, float] = (0.08, 1.0), draft: bool = True,
                 class_names: Optional[Sequence[str]] = None, num_classes: Optional[int] = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.image_size, self.mean, self.std, self.augment = image_size, tuple(mean), tuple(std), augment
        self.crop_scale, self.draft = tuple(crop_scale), draft
        self.class_names = _class_names(class_names, self.info, num_classes)
        if not self.class_names:
            raise ValueError("labelled image shards need their classes: _info.json 'classes' (written by "
                             "data_scripts/write_shards.py), data.class_names or data.num_classes")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def decoder(self, split: str) -> Callable[[dict, int], Any]:
        if split == "train" and self.augment:
            tf = build_train_transform(self.image_size, self.mean, self.std, crop="resized", scale=self.crop_scale)
        else:
            tf = build_eval_transform(self.image_size, self.mean, self.std)
        return LabelledImageDecoder(tf, self.image_size, self.draft, self.seed)


class StreamAudioDataModule(StreamingDataModule):
    """Audio (``.flac``/``.wav``/``.mp3``/``.ogg``) with a ``.cls`` label or a ``.txt`` transcript as a stream,
    in the batches of :class:`mmzoo.data.AudioFolderDataModule` (``((wave, lengths), labels)`` or
    ``((wave, lengths), (tokens, token_lengths))``).

    Args:
        target: "label" or "transcript".
        sample_rate: rate the audio is resampled to.
        max_seconds: crop longer clips (randomly for training).
        class_names: label names (default: ``_info.json``'s ``classes``).
        vocab: transcript characters (default: ``_info.json``'s ``vocab``); needed for ``target=transcript``.
        **kwargs: options of :class:`StreamingDataModule` (urls, epoch_samples, batch_size ...).
    """

    def __init__(self, target: str = "label", sample_rate: int = 16000, max_seconds: Optional[float] = 2.0,
                 class_names: Optional[Sequence[str]] = None, vocab: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from .audio import CharVocab

        if target not in ("label", "transcript"):
            raise ValueError(f"data.target must be 'label' or 'transcript', got {target!r}")
        self.target, self.sample_rate = target, sample_rate
        self.max_samples = int(max_seconds * sample_rate) if max_seconds else None
        self.labels = _class_names(class_names, self.info, None)
        chars = vocab if vocab is not None else self.info.get("vocab")
        self.vocab = CharVocab(list(chars)) if chars else None
        if target == "transcript" and self.vocab is None:
            raise ValueError("transcript shards need their characters: _info.json 'vocab' (written by "
                             "data_scripts/write_shards.py) or data.vocab")
        if target == "label" and not self.labels:
            raise ValueError("labelled audio shards need their classes: _info.json 'classes' or data.class_names")

    @property
    def class_names(self) -> list[str]:
        return list(self.vocab.tokens) if self.target == "transcript" else list(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def decoder(self, split: str) -> Callable[[dict, int], Any]:
        return AudioDecoder(self.target, self.sample_rate, self.max_samples, split == "train", self.seed)

    def collate(self) -> Callable:
        from .audio import AudioCollate

        return AudioCollate(self.target, self.vocab)


class StreamVideoDataModule(StreamingDataModule):
    """Video clips (``.mp4``/``.avi``/``.webm``/``.mkv``/``.mov`` + ``.cls``) as a stream, in the batches of
    :class:`mmzoo.data.VideoDataModule` (training ``(C, T, S, S)`` clips; evaluation one centre view
    ``(1, C, T, S, S)``).

    Args:
        num_frames: frames per clip.
        sampling_rate: stride between frames.
        crop_size: side of the crops.
        train_scale: short-side range of the training resize.
        class_names: class names (default: ``_info.json``'s ``classes``).
        **kwargs: options of :class:`StreamingDataModule` (urls, epoch_samples, batch_size ...).
    """

    in_chans = 3

    def __init__(self, num_frames: int = 8, sampling_rate: int = 4, crop_size: int = 224,
                 train_scale: tuple[int, int] = (256, 320), class_names: Optional[Sequence[str]] = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_frames, self.sampling_rate, self.crop_size = num_frames, sampling_rate, crop_size
        self.train_scale, self.image_size = tuple(train_scale), crop_size
        self.class_names = _class_names(class_names, self.info, None)
        if not self.class_names:
            raise ValueError("video shards need their classes: _info.json 'classes' or data.class_names")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def decoder(self, split: str) -> Callable[[dict, int], Any]:
        return VideoDecoder(self.num_frames, self.sampling_rate, self.crop_size, self.train_scale,
                            split == "train", self.seed)


class StreamPointCloudDataModule(StreamingDataModule):
    """Point clouds (``.npy``/``.ply``/``.off``/``.txt``, meshes with trimesh) + ``.cls`` as a stream:
    ``(points (B, num_points, 3), labels)`` batches (:class:`mmzoo.data.PointCloudDataModule`'s format).

    Args:
        num_points: points per cloud.
        augment: random scale / shift (and ``rotate``, ``jitter``) for training.
        rotate: training rotation, "none", "y" or "so3".
        jitter: training point jitter std.
        class_names: class names (default: ``_info.json``'s ``classes``).
        **kwargs: options of :class:`StreamingDataModule` (urls, epoch_samples, batch_size ...).
    """

    def __init__(self, num_points: int = 1024, augment: bool = True, rotate: str = "none", jitter: float = 0.0,
                 class_names: Optional[Sequence[str]] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from .points import PointAugment

        self.num_points = num_points
        self.augment = PointAugment(rotate=rotate, jitter=jitter) if augment else None
        self.class_names = _class_names(class_names, self.info, None)
        if not self.class_names:
            raise ValueError("point-cloud shards need their classes: _info.json 'classes' or data.class_names")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def decoder(self, split: str) -> Callable[[dict, int], Any]:
        return PointCloudDecoder(self.num_points, self.augment if split == "train" else None, seed=self.seed)
