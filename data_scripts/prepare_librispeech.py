"""Download (or take local copies of) LibriSpeech subsets, check their md5, extract them and write the
``train.tsv`` / ``val.tsv`` / ``test.tsv`` manifests (columns ``path``, ``transcript``, ``seconds``) that
``task=ctc`` with ``data=audio_folder data.target=transcript`` reads.

    python data_scripts/prepare_librispeech.py --root data/librispeech \\
        --train train-clean-100 --val dev-clean --test test-clean
    python data_scripts/prepare_librispeech.py --root data/librispeech --train dev-clean --val test-clean \\
        --from-archive ~/Downloads/dev-clean.tar.gz ~/Downloads/test-clean.tar.gz --lowercase
    python train.py model=wav2vec2 task=ctc data=audio_folder data.root=data/librispeech data.max_seconds=null

(``task=ctc`` sets ``data.target=transcript``; ``data.max_seconds=null`` keeps whole utterances: a crop
would cut the audio but not its transcript.)

Transcripts come from the ``<speaker>-<chapter>.trans.txt`` files (``<utterance id> <TEXT>`` per line).
By default the manifests point at the extracted 16 kHz flac files; ``--to-wav`` writes 16-bit wav copies
(``--sample-rate`` resamples them with torchaudio) under ``root/wav/``. Several subsets may feed one split
(``--train train-clean-100,train-clean-360``). Archives are verified against the md5 sums openslr.org
publishes, extracted into a temporary folder renamed into place, and every manifest is written to a
temporary name and renamed, so an interrupted run never leaves a half-prepared set that looks ready.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

from audio_prep import download, extract, verify, write_tsv

BASE_URL = "https://www.openslr.org/resources/12"
# https://www.openslr.org/resources/12/md5sum.txt
MD5 = {
    "dev-clean": "42e2234ba48799c1f50f24a7926300a1",
    "dev-other": "c8d0bcc9cca99d4f8b62fcc847357931",
    "test-clean": "32fa31d27d2e1cad72775fee3f4849a9",
    "test-other": "fb5a50374b501bb3bac4815ee91d3135",
    "train-clean-100": "2a93770f6d5c6c964bc36631d331a522",
    "train-clean-360": "c0e676e450a7ff2f54aeade5171606fa",
    "train-other-500": "d1a0fd59409feb2c614ce4d30c387708",
}
SPLITS = ("train", "val", "test")


def read_transcripts(subset_dir: Path, strict: bool = False) -> list[tuple[Path, str]]:
    """(audio file, transcript) for every line of every ``*.trans.txt`` under ``subset_dir``. Lines whose
    flac is missing or that are malformed are skipped and counted (``strict``: raise naming the file)."""
    items, bad = [], []
    for trans in sorted(subset_dir.rglob("*.trans.txt")):
        for n, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            utt, _, text = line.strip().partition(" ")
            audio = trans.parent / f"{utt}.flac"
            if not text.strip() or not audio.is_file():
                msg = f"{trans}:{n}: " + ("no transcript" if not text.strip() else f"{audio.name} not found")
                if strict:
                    raise SystemExit(f"error: {msg}")
                bad.append(msg)
                continue
            items.append((audio, " ".join(text.split())))
    if bad:
        print(f"warning: skipped {len(bad)} transcript lines of {subset_dir} (first: {bad[0]})")
    return items


def to_wav(src: Path, dst: Path, sample_rate: Optional[int]) -> float:
    """flac -> 16-bit wav (resampled with torchaudio when ``sample_rate`` differs), written atomically;
    returns the duration in seconds."""
    import soundfile as sf
    import torch

    data, sr = sf.read(str(src), dtype="float32", always_2d=True)
    wav = torch.from_numpy(data).mean(1)
    if sample_rate and sample_rate != sr:
        import torchaudio.functional as AF

        wav, sr = AF.resample(wav, sr, sample_rate), sample_rate
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.part")
    sf.write(str(tmp), wav.clamp(-1, 1).numpy(), sr, subtype="PCM_16", format="WAV")
    os.replace(tmp, dst)
    return wav.shape[0] / sr


def subset_of(archive: Path) -> str:
    name = archive.name.removesuffix(".tar.gz").removesuffix(".tgz").removesuffix(".tar")
    if name not in MD5:
        raise SystemExit(f"error: cannot tell the subset of {archive}: name it <subset>.tar.gz, subset one of "
                         f"{sorted(MD5)}")
    return name


def prepare_subset(subset: str, root: Path, archive: Optional[Path], check_md5: bool, force: bool) -> Path:
    """Extract ``subset`` to ``root/LibriSpeech/<subset>`` (downloading its archive when none is given)."""
    target = root / "LibriSpeech" / subset
    if not force and (target / ".complete").is_file():
        print(f"{target} is already extracted (use --force to redo it)")
        return target
    if archive is None:
        archive = root / f"{subset}.tar.gz"
        if not archive.is_file():
            download(f"{BASE_URL}/{subset}.tar.gz", archive)
    verify(archive, MD5[subset] if check_md5 else None, "md5")
    print(f"extracting {archive} -> {target}")
    # the archive holds LibriSpeech/<subset>/... plus a few top-level text files (README, SPEAKERS.TXT, ...)
    tmp = extract(archive, root / "LibriSpeech" / f".{subset}-archive")
    inner = tmp / "LibriSpeech" / subset
    if not inner.is_dir():
        raise SystemExit(f"error: {archive} has no LibriSpeech/{subset}/ folder; is it the LibriSpeech {subset} "
                         f"archive?")
    if target.exists():
        shutil.rmtree(target)
    os.replace(inner, target)
    for extra in (tmp / "LibriSpeech").iterdir():  # keep the corpus notes next to the subsets
        if extra.is_file():
            os.replace(extra, root / "LibriSpeech" / extra.name)
    shutil.rmtree(tmp)
    (target / ".complete").write_text("ok\n")
    return target


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, type=Path, help="folder to prepare the data in")
    for split, default in zip(SPLITS, ("train-clean-100", "dev-clean", "test-clean")):
        parser.add_argument(f"--{split}", default=default,
                            help=f"comma-separated subsets for {split}.tsv ('' for none; default {default})")
    parser.add_argument("--from-archive", type=Path, nargs="+", default=[],
                        help="already downloaded <subset>.tar.gz archives to use instead of downloading")
    parser.add_argument("--no-md5", action="store_true", help="skip the md5 check of the archives")
    parser.add_argument("--to-wav", action="store_true",
                        help="write wav copies under root/wav/ instead of using the flac files")
    parser.add_argument("--sample-rate", type=int, default=None, help="resample the wav copies (needs --to-wav)")
    parser.add_argument("--lowercase", action="store_true", help="lowercase the transcripts")
    parser.add_argument("--max-utterances", type=int, default=None, help="keep the first N utterances of each subset")
    parser.add_argument("--strict", action="store_true", help="stop on a malformed transcript line or missing file")
    parser.add_argument("--force", action="store_true", help="re-extract subsets already there")
    args = parser.parse_args(argv)

    if args.sample_rate and not args.to_wav:
        raise SystemExit("error: --sample-rate needs --to-wav (the flac files are used as they are otherwise)")
    root = args.root.expanduser()
    root.mkdir(parents=True, exist_ok=True)
    archives = {}
    for a in args.from_archive:
        a = a.expanduser()
        if not a.is_file():
            raise SystemExit(f"error: --from-archive {a} does not exist")
        archives[subset_of(a)] = a
    plan = {s: [x.strip() for x in getattr(args, s).split(",") if x.strip()] for s in SPLITS}
    unknown = sorted({x for v in plan.values() for x in v} - set(MD5))
    if unknown:
        raise SystemExit(f"error: unknown LibriSpeech subset(s) {unknown}; valid: {sorted(MD5)}")
    if not plan["train"]:
        raise SystemExit("error: --train needs at least one subset")

    for split in SPLITS:
        rows = []
        for subset in plan[split]:
            folder = prepare_subset(subset, root, archives.get(subset), not args.no_md5, args.force)
            items = read_transcripts(folder, args.strict)[: args.max_utterances]
            for audio, text in items:
                if args.to_wav:
                    dst = root / "wav" / audio.relative_to(root / "LibriSpeech").with_suffix(".wav")
                    seconds = to_wav(audio, dst, args.sample_rate)
                else:
                    import soundfile as sf

                    dst, seconds = audio, sf.info(str(audio)).duration
                rows.append((dst.relative_to(root).as_posix(), text.lower() if args.lowercase else text,
                             f"{seconds:.3f}"))
        if rows:
            write_tsv(root / f"{split}.tsv", ["path", "transcript", "seconds"], rows)
            hours = sum(float(r[2]) for r in rows) / 3600
            print(f"  {split}.tsv: {len(rows)} utterances, {hours:.2f} h ({', '.join(plan[split])})")
        elif (root / f"{split}.tsv").exists():
            (root / f"{split}.tsv").unlink()  # a stale manifest of an earlier run would be read as this split
    print(f"train with:\n  python train.py model=wav2vec2 task=ctc data=audio_folder data.root={root} "
          f"data.max_seconds=null")
    return 0


if __name__ == "__main__":
    sys.exit(main())
