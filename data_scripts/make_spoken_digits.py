"""Synthesise a real spoken-digits (and optionally command-words) data set with the espeak-ng speech
synthesiser: many voices, voice variants, speaking rates and pitches, plus white noise at a chosen SNR.
The output is the class-per-folder layout ``data=audio_folder`` reads (``out/<word>/<clip>.wav``, 16 kHz
mono), a ``metadata.tsv`` describing every clip and, with ``--manifest``, ``train/val/test.tsv``
manifests (``path``, ``label``) whose split keeps whole voices apart (test voices are never heard in
training).

    python data_scripts/make_spoken_digits.py --out data/spoken_digits --per-class 60
    python data_scripts/make_spoken_digits.py --out data/spoken_words --vocabulary both --per-class 100 \\
        --snr-db 5 30 --manifest
    python train.py model=wav2vec2 task=audio_classification data=audio_folder data.root=data/spoken_digits

Every clip is a deterministic function of ``--seed`` and the arguments: the (voice, variant, rate, pitch)
settings of each clip are drawn from a seeded generator, and so are its noise and padding. Files are
written to a temporary name and renamed into place, so an interrupted run never leaves a truncated wav.
espeak-ng is installed with ``apt-get install -y espeak-ng`` when missing and the script runs as root;
otherwise the script stops and prints that command.
"""
from __future__ import annotations

import argparse
import csv
import io
import itertools
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

SAMPLE_RATE = 16000
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
VOCABULARIES = {"digits": DIGITS, "commands": COMMANDS, "both": DIGITS + COMMANDS}
# English voices shipped with espeak-ng (``espeak-ng --voices=en``) and its voice variants (``+m1`` ...)
VOICES = ("en-gb", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029")
VARIANTS = ("", "m1", "m2", "m3", "m4", "f1", "f2", "f3", "f4")
RATES = (120, 150, 180, 210)  # words per minute (espeak-ng -s)
PITCHES = (25, 40, 55, 70)  # 0-99 (espeak-ng -p)
INSTALL = "apt-get install -y espeak-ng"


# ----------------------------------------------------------------------------------------------------
# audio helpers (no espeak-ng needed)
# ----------------------------------------------------------------------------------------------------
def add_noise(wav: torch.Tensor, snr_db: Optional[float], generator: torch.Generator) -> torch.Tensor:
    """Add white Gaussian noise so that ``10 log10(P_signal / P_noise) == snr_db`` exactly (powers are
    mean squares over the whole clip; the drawn noise is rescaled to the target power). ``None`` or a
    silent clip returns the clip unchanged."""
    if snr_db is None:
        return wav.clone()
    signal_power = wav.pow(2).mean()
    if signal_power <= 0:
        return wav.clone()
    noise = torch.randn(wav.shape, generator=generator, dtype=wav.dtype)
    target = signal_power / (10.0 ** (snr_db / 10.0))
    noise = noise * (target / noise.pow(2).mean()).sqrt()
    return wav + noise


def snr_db(clean: torch.Tensor, noisy: torch.Tensor) -> float:
    """The SNR in dB of ``noisy`` against its ``clean`` version."""
    noise = noisy - clean
    return float(10 * torch.log10(clean.pow(2).mean() / noise.pow(2).mean()))


def trim_silence(wav: torch.Tensor, threshold: float = 0.02) -> torch.Tensor:
    """Drop leading and trailing samples quieter than ``threshold`` x the clip's peak."""
    loud = (wav.abs() > threshold * wav.abs().max()).nonzero()
    return wav[int(loud[0]): int(loud[-1]) + 1] if len(loud) else wav


def place_in_clip(wav: torch.Tensor, num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """Put the utterance at a random offset inside ``num_samples`` of silence (the Speech Commands style
    one-second clip); an utterance longer than that is kept whole."""
    if wav.shape[0] >= num_samples:
        return wav
    start = int(torch.randint(0, num_samples - wav.shape[0] + 1, (), generator=generator))
    out = torch.zeros(num_samples, dtype=wav.dtype)
    out[start: start + wav.shape[0]] = wav
    return out


def write_wav(path: Path, wav: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> None:
    """16-bit PCM wav via a temporary file renamed into place."""
    import soundfile as sf

    tmp = path.with_name(f".{path.name}.part")
    sf.write(str(tmp), wav.clamp(-1, 1).numpy(), sample_rate, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)


def write_tsv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------
# espeak-ng
# ----------------------------------------------------------------------------------------------------
def ensure_espeak(install: bool = True) -> str:
    """Path of ``espeak-ng``; installs it with apt-get when missing and running as root."""
    exe = shutil.which("espeak-ng")
    if exe:
        return exe
    if not install or not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise SystemExit(f"error: espeak-ng is not installed. Install it with\n  sudo {INSTALL}\n"
                         f"(or `brew install espeak-ng` on macOS) and run this script again")
    print(f"espeak-ng not found, running: {INSTALL}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(INSTALL.split(), env=env).returncode != 0:  # stale package lists: update once
        subprocess.run(["apt-get", "update"], env=env, check=False)
        if subprocess.run(INSTALL.split(), env=env).returncode != 0:
            raise SystemExit(f"error: `{INSTALL}` failed; install espeak-ng yourself and run again")
    exe = shutil.which("espeak-ng")
    if not exe:
        raise SystemExit(f"error: `{INSTALL}` ran but espeak-ng is still not on PATH")
    return exe


def synthesise(exe: str, text: str, voice: str, variant: str, rate: int, pitch: int) -> torch.Tensor:
    """One utterance from espeak-ng -> mono float32 at 16 kHz (torchaudio resampling of its 22.05 kHz)."""
    import soundfile as sf
    import torchaudio.functional as AF

    name = f"{voice}+{variant}" if variant else voice
    proc = subprocess.run([exe, "-v", name, "-s", str(rate), "-p", str(pitch), "--stdout", text],
                          capture_output=True)
    if proc.returncode != 0 or not proc.stdout:
        raise RuntimeError(f"espeak-ng failed for voice {name!r}, text {text!r}: "
                           f"{proc.stderr.decode(errors='replace').strip()} (list voices: espeak-ng --voices=en)")
    data, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32", always_2d=True)
    wav = torch.from_numpy(data).mean(1)
    return AF.resample(wav, sr, SAMPLE_RATE) if sr != SAMPLE_RATE else wav


# ----------------------------------------------------------------------------------------------------
# data set
# ----------------------------------------------------------------------------------------------------
def plan(words: Sequence[str], per_class: int, voices: Sequence[str], variants: Sequence[str],
         rates: Sequence[int], pitches: Sequence[int], snrs: Sequence[Optional[float]], seed: int) -> list[dict]:
    """The settings of every clip: per word, ``per_class`` distinct (voice, variant, rate, pitch) drawn
    without replacement from the grid (cycling through it again when it is smaller), an SNR from ``snrs``
    (one value: fixed; two values: uniform in that range)."""
    grid = list(itertools.product(voices, variants, rates, pitches))
    rng = random.Random(seed)
    clips = []
    for word in words:
        order: list = []
        while len(order) < per_class:
            block = grid[:]
            rng.shuffle(block)
            order += block
        for i, (voice, variant, rate, pitch) in enumerate(order[:per_class]):
            snr = None if not snrs else (snrs[0] if len(snrs) == 1 else rng.uniform(snrs[0], snrs[1]))
            clips.append(dict(word=word, index=i, voice=voice, variant=variant, rate=rate, pitch=pitch,
                              snr_db=snr))
    return clips


def speaker(clip: dict) -> str:
    return f"{clip['voice']}+{clip['variant']}" if clip["variant"] else clip["voice"]


def split_by_speaker(clips: list[dict], fractions: Sequence[float], seed: int) -> dict[str, list[dict]]:
    """Train/val/test split that keeps all clips of one voice(+variant) in one split."""
    speakers = sorted({speaker(c) for c in clips})
    random.Random(seed + 1).shuffle(speakers)
    n_val = max(1, round(fractions[1] * len(speakers))) if fractions[1] > 0 else 0
    n_test = max(1, round(fractions[2] * len(speakers))) if fractions[2] > 0 else 0
    if len(speakers) - n_val - n_test < 1:
        raise SystemExit(f"error: {len(speakers)} voice(s) cannot be split {list(fractions)} by speaker; "
                         f"add --voices / --variants or drop --manifest")
    which = {s: "val" for s in speakers[:n_val]} | {s: "test" for s in speakers[n_val:n_val + n_test]}
    out: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for c in clips:
        out[which.get(speaker(c), "train")].append(c)
    return out


def _csv_list(text: str, keep_empty: bool = False) -> list[str]:
    return [t.strip() for t in text.split(",") if keep_empty or t.strip()]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--vocabulary", choices=sorted(VOCABULARIES), default="digits",
                        help="digits (zero..nine), commands (yes, no, up, ...) or both")
    parser.add_argument("--words", default=None, help="comma-separated words instead of --vocabulary")
    parser.add_argument("--per-class", type=int, default=50, help="clips per word")
    parser.add_argument("--voices", default=",".join(VOICES), help="comma-separated espeak-ng voices")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated voice variants (m1..m7, f1..f5; empty item = base voice)")
    parser.add_argument("--rates", default=",".join(map(str, RATES)), help="speaking rates, words per minute")
    parser.add_argument("--pitches", default=",".join(map(str, PITCHES)), help="pitches, 0-99")
    parser.add_argument("--snr-db", nargs="*", default=["20"],
                        help="white-noise SNR in dB: one value, two values (uniform range) or 'none'")
    parser.add_argument("--clip-seconds", type=float, default=1.0,
                        help="pad each utterance at a random offset to this length (0: no padding)")
    parser.add_argument("--manifest", action="store_true",
                        help="also write train/val/test.tsv split by voice (data=audio_folder then reads them)")
    parser.add_argument("--fractions", type=float, nargs=3, default=(0.7, 0.15, 0.15),
                        help="train/val/test fractions of the voices for --manifest")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out")
    parser.add_argument("--no-install", action="store_true", help="never run apt-get; fail if espeak-ng is missing")
    args = parser.parse_args(argv)

    words = [w.strip().lower() for w in args.words.split(",")] if args.words else list(VOCABULARIES[args.vocabulary])
    bad = [w for w in words if not w or not w.replace("-", "").replace("'", "").isalpha()]
    if bad or len(set(words)) != len(words):
        raise SystemExit(f"error: --words must be distinct alphabetic words, got {words}")
    if args.per_class < 1:
        raise SystemExit(f"error: --per-class must be >= 1, got {args.per_class}")
    try:
        rates = [int(r) for r in _csv_list(args.rates)]
        pitches = [int(p) for p in _csv_list(args.pitches)]
        snrs = [] if [s.lower() for s in args.snr_db] in ([], ["none"]) else [float(s) for s in args.snr_db]
    except ValueError as e:
        raise SystemExit(f"error: --rates / --pitches / --snr-db take numbers ({e})") from None
    if len(snrs) > 2 or not all(0 <= p <= 99 for p in pitches) or not all(80 <= r <= 450 for r in rates):
        raise SystemExit("error: --snr-db takes one or two values; --pitches must be in 0-99, --rates in 80-450")
    voices = _csv_list(args.voices)
    variants = _csv_list(args.variants, keep_empty=True) or [""]
    if not voices or not rates or not pitches:
        raise SystemExit("error: --voices, --rates and --pitches need at least one value each")

    out = args.out.expanduser()
    if out.exists() and any(out.iterdir()) and not args.force:
        raise SystemExit(f"error: {out} is not empty; pass --force to write into it (same names are replaced)")
    exe = ensure_espeak(install=not args.no_install)

    clips = plan(words, args.per_class, voices, variants, rates, pitches, snrs, args.seed)
    rows = []
    for n, c in enumerate(clips):
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + n)
        wav = trim_silence(synthesise(exe, c["word"], c["voice"], c["variant"], c["rate"], c["pitch"]))
        wav = wav / wav.abs().max().clamp_min(1e-8) * 0.5  # voices differ in loudness; SNR is relative anyway
        if args.clip_seconds > 0:
            wav = place_in_clip(wav, int(args.clip_seconds * SAMPLE_RATE), g)
        wav = add_noise(wav, c["snr_db"], g)
        folder = out / c["word"]
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{c['word']}_{c['index']:04d}_{speaker(c).replace('+', '-')}_s{c['rate']}_p{c['pitch']}.wav"
        write_wav(folder / name, wav)
        c["path"] = f"{c['word']}/{name}"
        snr = "" if c["snr_db"] is None else f"{c['snr_db']:.2f}"
        rows.append([c["path"], c["word"], c["voice"], c["variant"], c["rate"], c["pitch"], snr,
                     f"{wav.shape[0] / SAMPLE_RATE:.3f}"])
        if (n + 1) % 100 == 0 or n + 1 == len(clips):
            print(f"\r  {n + 1} / {len(clips)} clips", end="", flush=True)
    print()
    write_tsv(out / "metadata.tsv", ["path", "label", "voice", "variant", "rate", "pitch", "snr_db", "seconds"], rows)
    if args.manifest:
        for split, items in split_by_speaker(clips, args.fractions, args.seed).items():
            write_tsv(out / f"{split}.tsv", ["path", "label"], [[c["path"], c["word"]] for c in items])
            print(f"  {split}.tsv: {len(items)} clips, {len({speaker(c) for c in items})} voices")
    print(f"wrote {len(clips)} clips of {len(words)} words to {out}\ntrain with:\n  python train.py model=wav2vec2 "
          f"task=audio_classification data=audio_folder data.root={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
