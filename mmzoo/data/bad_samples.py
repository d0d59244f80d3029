"""Bad samples: one policy shared by every reader of files (images, captions, audio, video, point clouds).

A data set collected by someone else holds broken files: empty or truncated downloads, an HTML error page
saved as ``.jpg``, a FLAC that loses sync half-way, a shard cut short, a table row with a stray quote. One
such file must not end a run of hours, and it must be named. Every reader follows the same rules:

* **at set-up** it checks what is cheap to check (a header, a size against what the header claims, a
  table row) and hands each bad sample to :meth:`BadSamples.reject`, then calls
  :meth:`BadSamples.scanned` once per split: one warning names the first few;
* **at load** (``__getitem__``, possibly in a loader worker) a sample whose decode fails is recorded by
  :class:`SkippingDataset` in a mask shared with the loader workers, warned about, and the next good
  sample of the split stands in (deterministic, so a resumed run sees the same batches);
* ``strict=True`` raises at the first bad sample, naming the file (and the shard member / table line);
* without it, bad samples are skipped and counted (``num_skipped`` of the data module, a summary at the
  end of each stage) and the run fails once more than ``max_bad_fraction`` of a split is bad: that many
  is a wrong path, format or a broken copy rather than a few broken files.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, Optional, Sequence

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

DEFAULT_MAX_BAD_FRACTION = 0.1
SHOWN = 5  # bad samples named in one message


class BadSampleError(ValueError):
    """A sample that cannot be used (or too many of them); the message names the file, shard member or line."""


def reason_of(e: BaseException) -> str:
    """How a failure is described next to the file's name."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return text if isinstance(e, BadSampleError) else f"{type(e).__name__}: {text}" if text else type(e).__name__


def _join(name: str, reason: str) -> str:
    return reason if name in reason else f"{name}: {reason}"


def check_fraction(value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"data.max_bad_fraction must be in [0, 1] (the share of a split that may be bad), got "
                         f"{value}")
    return float(value)


class BadSamples:
    """The bad samples of one split, found at set-up (:meth:`reject`) or at load (:class:`SkippingDataset`).

    Args:
        where: the split's source as messages name it ("data.train_file /data/train.csv").
        strict: raise at the first bad sample instead of skipping it.
        max_fraction: raise once more than this share of the split's listed samples is bad.
        error: the exception raised (a reader's own :class:`BadSampleError` subclass).
        what: the noun for one sample in messages ("image", "audio file", "row").
    """

    def __init__(self, where: str, strict: bool = False, max_fraction: float = DEFAULT_MAX_BAD_FRACTION,
                 error: type[Exception] = BadSampleError, what: str = "file") -> None:
        self.where, self.strict, self.max_fraction = where, strict, check_fraction(max_fraction)
        self.error, self.what = error, what
        self.listed = 0  # samples the split listed (set by scanned(), else by the first dataset attached)
        self.scan: list[tuple[str, str]] = []  # (name, reason) rejected at set-up
        self.datasets: list["SkippingDataset"] = []  # datasets serving this split (their load failures count)

    # -- set-up -------------------------------------------------------------------------------------
    def reject(self, name: str, reason: Any) -> None:
        """A bad sample found while scanning: raise under ``strict``, else remember it."""
        text = reason_of(reason) if isinstance(reason, BaseException) else str(reason)
        if self.strict:
            err = self.error(f"bad {self.what} {_join(name, text)} (in {self.where}); fix or remove it, or set "
                             f"data.strict=false to skip and count bad {self.what}s")
            raise err from reason if isinstance(reason, BaseException) else err
        self.scan.append((name, text))

    def scanned(self, listed: int) -> None:
        """The scan of ``listed`` samples is over: one warning naming the first rejected ones, and the cap."""
        self.listed = listed
        if self.scan:
            shown = "; ".join(f"{_join(n, r)}" for n, r in self.scan[:SHOWN])
            more = f" and {len(self.scan) - SHOWN} more" if len(self.scan) > SHOWN else ""
            rank_zero_warn(f"{self.where}: skipped {len(self.scan)} unreadable or broken {self.what}(s) of "
                           f"{listed}: {shown}{more} (set data.strict=true to stop on them)")
        self.check_cap()

    # -- counts -------------------------------------------------------------------------------------
    @property
    def num_load_failures(self) -> int:
        return sum(ds.num_load_failures for ds in self.datasets)

    @property
    def count(self) -> int:
        """Bad samples of this split so far: at set-up, and at load in any process of this machine."""
        return len(self.scan) + self.num_load_failures

    def names(self) -> list[str]:
        return [n for n, _ in self.scan] + [n for ds in self.datasets for n in ds.failed_names()]

    def check_cap(self) -> None:
        if self.listed and self.count > self.max_fraction * self.listed:
            first = ", ".join(self.names()[:SHOWN])
            raise self.error(f"{self.count} of the {self.listed} {self.what}s of {self.where} are unreadable or "
                             f"broken, more than data.max_bad_fraction={self.max_fraction:g} of them (first: "
                             f"{first}); check the path and format, repair the data, or raise "
                             f"data.max_bad_fraction")


class SkippingDataset(Dataset):
    """Base of datasets that read a file in ``__getitem__``; see the module docstring.

    Subclasses implement :meth:`load` (sample ``i``, raising on a bad file) and :meth:`sample_name`, and
    call :meth:`attach` at the end of ``__init__``. A failed load is recorded in a boolean mask in shared
    memory, so loader workers and the main process agree on which samples are bad and the count is the
    split's, not one worker's; a sample known to be bad is not decoded again.
    """

    bad: BadSamples

    def attach(self, bad: Optional[BadSamples], default_where: str = "this data set", strict: bool = False,
               error: type[Exception] = BadSampleError, what: str = "file") -> None:
        self.bad = bad if bad is not None else BadSamples(default_where, strict, DEFAULT_MAX_BAD_FRACTION, error,
                                                           what)
        self.bad.datasets.append(self)
        if not self.bad.listed:
            self.bad.listed = len(self) + len(self.bad.scan)
        self._failed = torch.zeros(max(len(self), 1), dtype=torch.bool).share_memory_()
        self.load_failures: list[str] = []  # names that failed in this process, in order

    # -- to implement -------------------------------------------------------------------------------
    def load(self, index: int) -> Any:
        raise NotImplementedError

    def sample_name(self, index: int) -> str:
        raise NotImplementedError

    # -- the policy ---------------------------------------------------------------------------------
    @property
    def num_load_failures(self) -> int:
        return int(self._failed.sum())

    def failed_names(self) -> list[str]:
        return [self.sample_name(i) for i in self._failed.nonzero().flatten().tolist()]

    def __getitem__(self, index: int) -> Any:
        n = len(self)
        for offset in range(n):
            j = (index + offset) % n
            if self._failed[j]:
                continue
            try:
                return self.load(j)
            except Exception as e:  # noqa: BLE001 - decoders of broken files raise every type there is
                self._load_failed(j, e)
        raise self.bad.error(f"none of the {n} {self.bad.what}s of {self.bad.where} can be read")

    def _load_failed(self, index: int, e: Exception) -> None:
        name = self.sample_name(index)
        text = _join(name, reason_of(e))
        if self.bad.strict:
            raise self.bad.error(f"cannot read {self.bad.what} {text} (in {self.bad.where}); fix or remove it, "
                                 f"or set data.strict=false to skip and count bad {self.bad.what}s") from e
        self._failed[index] = True
        self.load_failures.append(name)
        if len(self.load_failures) <= SHOWN:
            tail = " (further failures are counted, not reported one by one)" if len(self.load_failures) == SHOWN \
                else ""
            warnings.warn(f"cannot read {self.bad.what} {text}; using the next readable sample instead{tail}",
                          stacklevel=2)
        self.bad.check_cap()


def summarize(bad_samples: dict[str, BadSamples]) -> Optional[str]:
    """One line on the samples that failed at load (set-up ones were reported when found), or None."""
    parts = [f"{split}: {b.num_load_failures}" for split, b in bad_samples.items() if b.num_load_failures]
    if not parts:
        return None
    names = [n for b in bad_samples.values() for ds in b.datasets for n in ds.failed_names()][:SHOWN]
    return (f"skipped samples that failed to load ({', '.join(parts)}): {', '.join(names)}; they were replaced by "
            f"the next readable sample (data.strict=true stops on them)")


def unique(items: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(items))
