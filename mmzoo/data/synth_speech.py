"""Built-in procedural speech: utterances made of synthesized sound units, generated on the fly.

Eight units, each with a letter: five formant-synthesized vowels (``a e i o u``: a glottal harmonic
series shaped by three formant resonances, Peterson & Barney's average formants), a nasal murmur (``m``),
a fricative (``s``: high band-passed noise) and a plosive burst (``k``). Every utterance draws a speaker
(pitch 85-250 Hz with a glide, a vocal-tract length factor on the formants), a speaking rate, per-unit
durations, a position in the clip, and background noise at 5-30 dB SNR.

Two vocabularies:

* ``lexicon``: 10 words; pairs use the same units in another order (``aso``/``osa``, ``ika``/``kia``...),
  so a word's identity lives in the temporal order of its units, not in any single frame;
* ``random``: strings of 2-5 random units (transcripts for CTC, varied audio for pretraining).

Sample ``i`` of a split is a pure function of ``(seed, split, i)``: no files, no download.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch.utils.data import Dataset

from .base import sample_seed

SAMPLE_RATE = 16000
UNITS = "aeioumsk"
# (F1, F2, F3) in Hz, adult male averages (Peterson & Barney 1952)
FORMANTS = {"a": (730, 1090, 2440), "e": (530, 1840, 2480), "i": (270, 2290, 3010), "o": (570, 840, 2410),
            "u": (300, 870, 2240), "m": (250, 1100, 2300)}
DURATION = {"a": 0.12, "e": 0.11, "i": 0.10, "o": 0.12, "u": 0.11, "m": 0.08, "s": 0.10, "k": 0.05}  # seconds
LEXICON = ("aso", "osa", "ika", "kia", "mu", "um", "esi", "ise", "oke", "eko")
SPLITS = {"train": 1, "val": 2, "test": 3}


def _envelope(n: int, ramp: int) -> torch.Tensor:
    env = torch.ones(n)
    r = min(ramp, n // 2)
    if r > 0:
        fade = 0.5 - 0.5 * torch.cos(torch.linspace(0, math.pi, r))
        env[:r], env[n - r:] = fade, fade.flip(0)
    return env


def _band_noise(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    spec = torch.fft.rfft(torch.randn(n, generator=g))
    freqs = torch.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spec = spec * ((freqs >= lo) & (freqs <= hi)).float()
    x = torch.fft.irfft(spec, n)
    return x / x.std().clamp_min(1e-6)


def synth_unit(unit: str, n: int, f0: float, glide: float, tract: float, g: torch.Generator) -> torch.Tensor:
    """``n`` samples of one unit for a speaker with pitch ``f0`` (Hz), relative pitch ``glide`` over
    the unit and formant scale ``tract``."""
    t = torch.arange(n) / SAMPLE_RATE
    if unit in FORMANTS:
        f0_t = f0 * (1 + glide * t / max(t[-1].item(), 1e-3))  # (n,)
        phase = 2 * math.pi * torch.cumsum(f0_t, 0) / SAMPLE_RATE
        num_h = int(7000 // (f0 * (1 + max(glide, 0))))
        h = torch.arange(1, num_h + 1, dtype=torch.float32)
        amp = torch.zeros(num_h)
        for F, bw, gain in zip(FORMANTS[unit], (90, 110, 160), (1.0, 0.6, 0.3)):
            amp += gain / (1 + ((h * f0 - F * tract) / bw) ** 2)
        if unit == "m":
            amp = amp * torch.exp(-h * f0 / 600)  # nasal murmur: energy mostly below ~500 Hz
        x = (amp[None] * torch.sin(phase[:, None] * h[None])).sum(1)
        x = x + 0.02 * torch.randn(n, generator=g) * x.std()  # breathiness
    elif unit == "s":
        x = _band_noise(n, 3800 * tract, 7500, g) * 0.5
    elif unit == "k":
        burst = min(n, int(0.025 * SAMPLE_RATE))
        x = torch.zeros(n)
        x[:burst] = _band_noise(burst, 1500 * tract, 3500 * tract, g) * torch.linspace(1, 0.1, burst)
    else:
        raise ValueError(f"unknown unit {unit!r}; valid units: {UNITS}")
    x = x / x.abs().max().clamp_min(1e-6)
    return x * _envelope(n, int(0.01 * SAMPLE_RATE))


def synth_utterance(text: str, num_samples: int, g: torch.Generator) -> torch.Tensor:
    """A clip of ``num_samples`` containing ``text`` (a string of units) spoken by a random speaker."""
    u = lambda lo, hi: lo + (hi - lo) * torch.rand((), generator=g).item()
    f0, tract, rate = u(85, 250), u(0.85, 1.2), u(0.75, 1.3)
    parts = []
    for ch in text:
        n = int(DURATION[ch] / rate * u(0.8, 1.2) * SAMPLE_RATE)
        parts.append(synth_unit(ch, n, f0 * u(0.95, 1.05), u(-0.15, 0.15), tract, g) * u(0.6, 1.0))
        parts.append(torch.zeros(int(u(0.0, 0.03) * SAMPLE_RATE)))  # short pauses between units
    speech = torch.cat(parts)[:num_samples]
    clip = torch.zeros(num_samples)
    start = int(torch.randint(0, num_samples - len(speech) + 1, (), generator=g))
    clip[start:start + len(speech)] = speech
    snr_db = u(5, 30)
    noise_rms = speech.pow(2).mean().sqrt() / 10 ** (snr_db / 20)
    return clip + noise_rms * torch.randn(num_samples, generator=g)


class SynthSpeechDataset(Dataset):
    """One split: ``(audio (L,), label, transcript)``; ``label`` is the lexicon index (-1 for random text).

    Args:
        num_samples: split length.
        seed: generation seed.
        split: "train", "val" or "test".
        vocabulary: "lexicon" (10 words, labels cycle through them) or "random" (2-5 random units).
        clip_seconds: clip duration.
    """

    def __init__(self, num_samples: int, seed: int = 0, split: str = "train", vocabulary: str = "lexicon",
                 clip_seconds: float = 1.0) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid choices: {list(SPLITS)}")
        if vocabulary not in ("lexicon", "random"):
            raise ValueError(f"vocabulary must be 'lexicon' or 'random', got {vocabulary!r}")
        self.num_samples, self.seed, self.split, self.vocabulary = num_samples, seed, split, vocabulary
        self.num_audio = int(clip_seconds * SAMPLE_RATE)
        if self.num_audio < int(0.8 * SAMPLE_RATE):
            raise ValueError(f"data.clip_seconds must be >= 0.8 so the longest utterance fits, got {clip_seconds}")

    def __len__(self) -> int:
        return self.num_samples

    def text(self, index: int, g: Optional[torch.Generator] = None) -> tuple[str, int]:
        if self.vocabulary == "lexicon":
            label = index % len(LEXICON)
            return LEXICON[label], label
        n = int(torch.randint(2, 6, (), generator=g))
        return "".join(UNITS[i] for i in torch.randint(0, len(UNITS), (n,), generator=g).tolist()), -1

    def __getitem__(self, index: int):
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        g = torch.Generator().manual_seed(sample_seed(self.seed, SPLITS[self.split], index))
        text, label = self.text(index, g)
        wav = synth_utterance(text, self.num_audio, g)
        wav = (wav - wav.mean()) / wav.std().clamp_min(1e-5)
        return wav, label, text
