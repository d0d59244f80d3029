"""Audio data: file readers (class-per-folder, manifest TSV/CSV), batching with lengths, character
vocabularies for CTC, and the data modules (built-in ``synth_speech`` and on-disk folders / manifests).

Batches are ``((wav (B, L), lengths (B,)), target)`` where target is a label tensor (B,) or, for CTC,
``(tokens (B, S), token_lengths (B,))``. Clips are padded only to the longest clip of the batch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .bad_samples import DEFAULT_MAX_BAD_FRACTION, BadSampleError, BadSamples, SkippingDataset, check_fraction
from .base import BaseDataModule, sample_seed
from .tables import read_table


AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


class BadAudioError(BadSampleError):
    """An audio file that cannot be decoded, is empty or holds non-finite samples."""


# -- reading ----------------------------------------------------------------------------------------
def read_audio(path: str | Path, sample_rate: int = 16000) -> torch.Tensor:
    """Read a wav/flac file with soundfile -> mono float32 (L,) at ``sample_rate`` (torchaudio resampling).

    Raises :class:`BadAudioError` naming the file for a clip without samples or with NaN / inf samples
    (a float WAV can hold them; they would surface much later as a non-finite loss)."""
    import soundfile as sf

    data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (L, channels)
    if data.size == 0:
        raise BadAudioError(f"{path}: no audio samples")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).any(axis=1).sum())
        raise BadAudioError(f"{path}: {bad} of its {data.shape[0]} samples are NaN or infinite")
    wav = torch.from_numpy(data).mean(1)  # mono
    if sr != sample_rate:
        import torchaudio.functional as AF

        wav = AF.resample(wav, sr, sample_rate)
    return wav


def normalize(wav: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per clip (what wav2vec 2.0's feature extractor expects)."""
    return (wav - wav.mean()) / wav.std().clamp_min(1e-5) if wav.numel() > 1 else wav


def crop_or_pad(wav: torch.Tensor, max_samples: Optional[int], g: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random crop (``g`` given) or head crop of clips longer than ``max_samples``; shorter clips stay
    as they are (the collate pads them and records their lengths)."""
    if max_samples is None or wav.shape[0] <= max_samples:
        return wav
    start = int(torch.randint(0, wav.shape[0] - max_samples + 1, (), generator=g)) if g is not None else 0
    return wav[start:start + max_samples]


def check_files(items: list[tuple[Path, object]], bad: BadSamples) -> list[tuple[Path, object]]:
    """Keep items whose file soundfile can open and that has frames; hand the others to ``bad`` (skipped
    and counted, or raised naming the file). The cheap header check of set-up: a file that is truncated
    or garbled after its header fails at load time instead, and is skipped and counted there."""
    import soundfile as sf

    good = []
    for path, target in items:
        try:
            info = sf.info(str(path))
            if info.frames <= 0:
                raise BadAudioError("no audio frames")
        except Exception as e:  # noqa: BLE001 - every unreadable file is reported the same way
            bad.reject(str(path), e)
            continue
        good.append((path, target))
    return good


def scan_class_folders(root: str | Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """Speech Commands layout: ``root/<class>/<clip>.wav``; folders starting with ``_`` (background noise)
    are ignored. Returns (path, class index) pairs and sorted class names."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"audio folder not found: {root} (data.root)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(("_", ".")))
    if not classes:
        raise ValueError(f"{root} has no class sub-folders; expected root/<class>/<clip>.wav")
    items = [(p, i) for i, c in enumerate(classes) for p in sorted((root / c).rglob("*"))
             if p.suffix.lower() in AUDIO_EXTENSIONS]
    return items, classes


def read_manifest(path: str | Path, column: str, bad: Optional[BadSamples] = None) -> list[tuple[Path, str]]:
    """A TSV/CSV (by extension) with a header holding ``path`` and ``column`` (``label`` or ``transcript``);
    relative paths are relative to the manifest's folder. Bad rows (not UTF-8, ragged, an empty value) go
    to ``bad`` (:mod:`mmzoo.data.tables`; default: a non-strict policy of its own)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    policy = bad if bad is not None else BadSamples(f"manifest {path}", what="row", error=BadAudioError)
    rows = read_table(path, delimiter, {"path": None, column: None}, policy, required=["path", column])
    return [((path.parent / r["path"]) if not Path(r["path"]).is_absolute() else Path(r["path"]), r[column])
            for _, r in rows]


class CharVocab:
    """Characters of CTC transcripts; id 0 is the CTC blank, ``|`` stands for the space between words."""

    def __init__(self, chars: Sequence[str]) -> None:
        self.tokens = ["<blank>"] + list(chars)
        self.index = {c: i for i, c in enumerate(self.tokens)}

    @classmethod
    def from_texts(cls, texts: Sequence[str]) -> "CharVocab":
        return cls(sorted({c for t in texts for c in t.replace(" ", "|")}))

    def encode(self, text: str) -> list[int]:
        try:
            return [self.index[c] for c in text.replace(" ", "|")]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} of transcript {text!r} is not in the vocabulary "
                             f"{self.tokens[1:]}") from None

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.tokens[i] for i in ids if i > 0).replace("|", " ")

    def __len__(self) -> int:
        return len(self.tokens)


class AudioFileDataset(SkippingDataset):
    """(path, target) items -> ``(normalised mono audio, target)``; training clips are randomly cropped
    to ``max_samples`` (seeded by (seed, epoch, index)), evaluation clips head-cropped. A clip that fails
    to decode (truncated, garbled, NaN / inf samples) is skipped and counted (:mod:`mmzoo.data.bad_samples`)."""

    def __init__(self, items: list[tuple[Path, object]], sample_rate: int = 16000,
                 max_samples: Optional[int] = None, random_crop: bool = False, seed: int = 0,
                 bad: Optional[BadSamples] = None) -> None:
        self.items, self.sample_rate, self.max_samples = items, sample_rate, max_samples
        self.random_crop, self.seed, self.epoch = random_crop, seed, 0
        self.attach(bad, "these audio files", False, BadAudioError, "audio file")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def sample_name(self, index: int) -> str:
        return str(self.items[index][0])

    def load(self, index: int):
        path, target = self.items[index]
        wav = read_audio(path, self.sample_rate)
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index)) if self.random_crop else None
        return normalize(crop_or_pad(wav, self.max_samples, g)), target


# -- batching ---------------------------------------------------------------------------------------
def pad_audio(wavs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips -> zero-padded (B, L_max) and lengths (B,)."""
    lengths = torch.tensor([w.shape[0] for w in wavs])
    out = torch.zeros(len(wavs), int(lengths.max()))
    for i, w in enumerate(wavs):
        out[i, : w.shape[0]] = w
    return out, lengths


class AudioCollate:
    """``(wav, label)`` or ``(wav, label, transcript)`` samples -> a batch; ``target`` picks the label or
    the tokenised transcript (for CTC)."""

    def __init__(self, target: str = "label", vocab: Optional[CharVocab] = None) -> None:
        self.target, self.vocab = target, vocab

    def __call__(self, samples):
        wav, lengths = pad_audio([s[0] for s in samples])
        if self.target == "label":
            return (wav, lengths), torch.tensor([int(s[1]) for s in samples])
        ids = [self.vocab.encode(s[-1]) for s in samples]
        tok_len = torch.tensor([len(t) for t in ids])
        tokens = torch.zeros(len(ids), max(1, int(tok_len.max())), dtype=torch.long)
        for i, t in enumerate(ids):
            tokens[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        return (wav, lengths), (tokens, tok_len)


# -- data modules -----------------------------------------------------------------------------------
class AudioDataModule(BaseDataModule):
    """Base of audio data: ``target`` ("label" or "transcript"), class names / CTC vocabulary for models
    (``num_classes``: classes, or vocabulary size with the blank for transcripts)."""

    sample_rate: int = 16000

    def __init__(self, batch_size: int = 32, num_workers: int = 0, seed: int = 0, pin_memory: bool = False,
                 eval_batch_size: Optional[int] = None, target: str = "label") -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory, eval_batch_size)
        if target not in ("label", "transcript"):
            raise ValueError(f"data.target must be 'label' or 'transcript', got {target!r}")
        self.target = target
        self.labels: list[str] = []
        self.vocab: Optional[CharVocab] = None

    @property
    def class_names(self) -> list[str]:
        return list(self.vocab.tokens) if self.target == "transcript" else list(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def collate_fn(self):
        return AudioCollate(self.target, self.vocab)


class SynthSpeechDataModule(AudioDataModule):
    """Built-in procedural speech (:mod:`mmzoo.data.synth_speech`), generated on the fly.

    Args:
        target: "label" (word classification; -1 for random strings, fine for pretraining) or
            "transcript" (CTC over unit letters).
        vocabulary: "lexicon" (10 words) or "random" (strings of 2-5 units).
        num_train: split lengths.
        num_val: split lengths.
        num_test: split lengths.
        labels_per_class: keep only this many training clips per word (few-label fine-tuning).
        clip_seconds: clip duration (>= 0.8).

    ``batch_size``, ``num_workers``, ``seed``, ``pin_memory``, ``eval_batch_size``: see :class:`BaseDataModule`.
    """

    def __init__(self, batch_size: int = 32, num_workers: int = 0, seed: int = 0, pin_memory: bool = False,
                 eval_batch_size: Optional[int] = None, target: str = "label", vocabulary: str = "lexicon",
                 num_train: int = 4000, num_val: int = 500, num_test: int = 500,
                 labels_per_class: Optional[int] = None, clip_seconds: float = 1.0) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory, eval_batch_size, target)
        from .synth_speech import LEXICON, UNITS

        self.vocabulary, self.clip_seconds = vocabulary, clip_seconds
        if labels_per_class is not None:
            num_train = labels_per_class * len(LEXICON)  # labels cycle through the lexicon
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.labels = list(LEXICON)
        self.vocab = CharVocab(UNITS)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        from .synth_speech import SynthSpeechDataset

        make = lambda split, n: SynthSpeechDataset(n, self.seed, split, self.vocabulary, self.clip_seconds)
        self.train_set = make("train", self.num_train)
        self.val_set, self.test_set = make("val", self.num_val), make("test", self.num_test)


class AudioFolderDataModule(AudioDataModule):
    """Audio on disk: ``root/<class>/*.wav`` folders (Speech Commands layout), or manifests
    ``train.tsv`` / ``val.tsv`` / ``test.tsv`` (or .csv) with columns ``path`` + ``label`` or
    ``path`` + ``transcript`` (LibriSpeech style, see data_scripts/).

    Folders without split sub-folders are split by ``fractions`` (seeded). Unreadable files (at set-up:
    no header; at load: truncated or garbled data, NaN / inf samples) and bad manifest rows are skipped
    and counted (``num_skipped``, :mod:`mmzoo.data.bad_samples`); ``strict=true`` raises naming the file
    (or manifest line); more than ``max_bad_fraction`` of a split bad stops the run.

    Args:
        root: data folder (class folders, split folders ``train/ val/ test/`` of class folders, or manifests).
        target: "label" or "transcript" (manifests only).
        max_seconds: crop longer clips (random crop for training).
        fractions: train/val/test fractions of an unsplit class-folder tree.
        strict: raise on the first unreadable file.
        max_bad_fraction: fail when more than this share of a split's files is bad.
    """

    def __init__(self, root: str, batch_size: int = 32, num_workers: int = 0, seed: int = 0,
                 pin_memory: bool = False, eval_batch_size: Optional[int] = None, target: str = "label",
                 max_seconds: Optional[float] = 2.0, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                 strict: bool = False, sample_rate: int = 16000,
                 max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory, eval_batch_size, target)
        self.root = Path(root)
        self.sample_rate = sample_rate
        self.max_samples = int(max_seconds * sample_rate) if max_seconds else None
        self.fractions, self.strict = tuple(fractions), strict
        self.max_bad_fraction = check_fraction(max_bad_fraction)
        self._splits = self._scan()

    def _manifest(self, split: str) -> Optional[Path]:
        for ext in (".tsv", ".csv"):
            if (self.root / f"{split}{ext}").is_file():
                return self.root / f"{split}{ext}"
        return None

    def _scan(self) -> dict[str, list]:
        if not self.root.exists():
            raise FileNotFoundError(f"data.root not found: {self.root}")
        splits: dict[str, list] = {}
        if self._manifest("train") is not None:
            column = "transcript" if self.target == "transcript" else "label"
            for split in ("train", "val", "test"):
                m = self._manifest(split)
                splits[split] = read_manifest(m, column, self._bad(split, m)) if m is not None else []
            if self.target == "label":
                self.labels = sorted({t for s in splits.values() for _, t in s})
                splits = {k: [(p, self.labels.index(t)) for p, t in v] for k, v in splits.items()}
            else:
                self.vocab = CharVocab.from_texts([t for _, t in splits["train"]])
        elif (self.root / "train").is_dir():
            if self.target != "label":
                raise ValueError("class folders carry labels only; use manifests for data.target=transcript")
            splits["train"], self.labels = scan_class_folders(self.root / "train")
            for split in ("val", "test"):
                items, names = scan_class_folders(self.root / split) if (self.root / split).is_dir() else ([], self.labels)
                splits[split] = [(p, self.labels.index(names[i])) for p, i in items]
        else:
            if self.target != "label":
                raise ValueError("class folders carry labels only; use manifests for data.target=transcript")
            items, self.labels = scan_class_folders(self.root)
            g = torch.Generator().manual_seed(self.seed)
            order = torch.randperm(len(items), generator=g).tolist()
            n_val, n_test = round(self.fractions[1] * len(items)), round(self.fractions[2] * len(items))
            n_train = len(items) - n_val - n_test
            parts = (order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:])
            splits = {s: [items[i] for i in idx] for s, idx in zip(("train", "val", "test"), parts)}
        for split in splits:
            bad = self._bad(split, self.root)
            listed = len(splits[split]) + len(bad.scan)  # manifest rows rejected count too
            splits[split] = check_files(splits[split], bad)
            bad.scanned(listed)
        if self.target == "transcript":
            splits = {k: [(p, (-1, t)) for p, t in v] for k, v in splits.items()}
        return splits

    def _bad(self, split: str, source: Path) -> BadSamples:
        return self.bad_samples_of(split, f"the {split} split of {source}", "audio file", BadAudioError)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        make = lambda split, crop: _Flatten(AudioFileDataset(self._splits[split], self.sample_rate, self.max_samples,
                                                             crop, self.seed, self.bad_samples.get(split)))
        self.train_set = make("train", True)
        self.val_set = make("val", False) if self._splits.get("val") else None
        self.test_set = make("test", False) if self._splits.get("test") else None


class _Flatten(Dataset):
    """``(wav, (label, transcript))`` -> ``(wav, label, transcript)`` for the collate (transcript targets)."""

    def __init__(self, dataset: AudioFileDataset) -> None:
        self.dataset = dataset

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        wav, target = self.dataset[index]
        return (wav, *target) if isinstance(target, tuple) else (wav, target)
