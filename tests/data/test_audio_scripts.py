"""The real-audio data scripts: espeak-ng spoken digits, Speech Commands v0.02 and LibriSpeech preparation
(on tiny archives built here), read back through ``AudioFolderDataModule``."""
from __future__ import annotations

import hashlib
import importlib
import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mmzoo.data import AudioFolderDataModule
from mmzoo.data.audio import read_audio

SCRIPTS = Path(__file__).resolve().parents[2] / "data_scripts"
HAS_ESPEAK = shutil.which("espeak-ng") is not None


@pytest.fixture
def scripts(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))  # the scripts import their sibling audio_prep.py
    return lambda name: importlib.import_module(name)


def _tone(seconds: float, freq: float, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def _audio_bytes(wav: np.ndarray, sr: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wav, sr, format=fmt, subtype="PCM_16")
    return buf.getvalue()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- spoken digits (espeak-ng) ----------------------------------------------------------------------------
def test_add_noise_hits_the_snr_exactly_and_is_seeded(scripts):
    msd = scripts("make_spoken_digits")
    clean = torch.from_numpy(_tone(0.5, 440.0))
    for snr in (0.0, 10.0, 25.0):
        noisy = msd.add_noise(clean, snr, torch.Generator().manual_seed(1))
        assert msd.snr_db(clean, noisy) == pytest.approx(snr, abs=1e-3)
        assert torch.equal(noisy, msd.add_noise(clean, snr, torch.Generator().manual_seed(1)))
        assert not torch.equal(noisy, msd.add_noise(clean, snr, torch.Generator().manual_seed(2)))
    assert torch.equal(msd.add_noise(clean, None, torch.Generator()), clean)
    silent = torch.zeros(100)
    assert torch.equal(msd.add_noise(silent, 10.0, torch.Generator()), silent)  # no division by zero


def test_plan_draws_distinct_settings_and_speaker_split_is_disjoint(scripts):
    msd = scripts("make_spoken_digits")
    args = (["one", "two"], 6, ["en-us", "en-gb", "en-029"], ["", "f2"], [150, 180], [40, 60], [5.0, 30.0], 3)
    clips = msd.plan(*args)
    assert clips == msd.plan(*args) and clips != msd.plan(*args[:-1], 4)
    for word in ("one", "two"):
        settings = [(c["voice"], c["variant"], c["rate"], c["pitch"]) for c in clips if c["word"] == word]
        assert len(settings) == 6 and len(set(settings)) == 6  # without replacement
    assert all(5.0 <= c["snr_db"] <= 30.0 for c in clips)
    splits = msd.split_by_speaker(clips, (0.5, 0.25, 0.25), 0)
    voices = {s: {msd.speaker(c) for c in v} for s, v in splits.items()}
    assert sum(len(v) for v in splits.values()) == len(clips)
    assert not (voices["train"] & voices["val"]) and not (voices["train"] & voices["test"])
    assert not (voices["val"] & voices["test"]) and voices["val"] and voices["test"]


def test_missing_espeak_names_the_install_command(scripts, monkeypatch):
    msd = scripts("make_spoken_digits")
    monkeypatch.setattr(msd.shutil, "which", lambda name: None)
    monkeypatch.setattr(msd.os, "geteuid", lambda: 1000, raising=False)  # not root: never runs apt-get
    monkeypatch.setattr(msd.subprocess, "run", lambda *a, **k: pytest.fail("must not install without root"))
    with pytest.raises(SystemExit, match="apt-get install -y espeak-ng"):
        msd.ensure_espeak()
    with pytest.raises(SystemExit, match="apt-get install -y espeak-ng"):
        msd.ensure_espeak(install=False)


@pytest.mark.skipif(not HAS_ESPEAK, reason="espeak-ng is not installed (apt-get install -y espeak-ng)")
def test_spoken_digits_load_through_audio_folder(scripts, tmp_path, capsys):
    msd = scripts("make_spoken_digits")
    out = tmp_path / "digits"
    common = ["--voices", "en-us,en-gb", "--variants", ",f2", "--rates", "150,180", "--pitches", "50",
              "--snr-db", "20", "--no-install"]
    assert msd.main(["--out", str(out), "--per-class", "2", "--manifest", *common]) == 0
    assert "wrote 20 clips of 10 words" in capsys.readouterr().out
    wavs = sorted(out.rglob("*.wav"))
    assert len(wavs) == 20 and {w.parent.name for w in wavs} == set(msd.DIGITS)
    info = sf.info(str(wavs[0]))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16") and info.frames >= 16000

    # manifests (split by voice) and the class folders both read with the ten digit classes
    dm = AudioFolderDataModule(root=str(out), batch_size=4, num_workers=0, max_seconds=None)
    dm.setup()
    assert dm.class_names == sorted(msd.DIGITS) and dm.num_skipped == 0
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 20
    (wav, lengths), labels = next(iter(dm.train_dataloader()))
    assert wav.shape[0] == 4 and torch.isfinite(wav).all() and labels.max() < 10
    for split in ("train", "val", "test"):
        (out / f"{split}.tsv").unlink()
    dm = AudioFolderDataModule(root=str(out), batch_size=4, num_workers=0)
    assert dm.class_names == sorted(msd.DIGITS) and sum(len(v) for v in dm._splits.values()) == 20
    wav = read_audio(out / "seven" / next(p.name for p in (out / "seven").iterdir()))
    # speech, not silence: the loudest 50 ms window is well above the 20 dB noise floor
    frames = wav[: wav.shape[0] // 800 * 800].reshape(-1, 800).pow(2).mean(1)
    assert frames.max() > 30 * frames.min()

    # deterministic: the same seed gives byte-identical files, another seed other settings
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for folder, seed in ((a, "0"), (b, "0"), (c, "1")):
        msd.main(["--out", str(folder), "--words", "one,two", "--per-class", "2", "--seed", seed, *common])
    assert (a / "metadata.tsv").read_text() == (b / "metadata.tsv").read_text() != (c / "metadata.tsv").read_text()
    assert all(f.read_bytes() == (b / f.relative_to(a)).read_bytes() for f in a.rglob("*.wav"))
    with pytest.raises(SystemExit, match="not empty"):
        msd.main(["--out", str(a), "--words", "one", "--per-class", "1", *common])


# -- Speech Commands ------------------------------------------------------------------------------------
def _fake_speech_commands(path: Path) -> dict:
    """A v0.02-style archive (no top folder, ``./`` member names): 3 words x 4 clips, background noise,
    the two list files. Returns the expected split of every clip."""
    expected = {}
    with tarfile.open(path, "w:gz") as tar:
        for w, word in enumerate(("no", "up", "yes")):
            for i in range(4):
                rel = f"{word}/spk{i}_nohash_0.wav"
                _add(tar, f"./{rel}", _audio_bytes(_tone(0.25, 200.0 + 100 * w + 10 * i), 16000, "WAV"))
                expected[rel] = "val" if i == 1 else "test" if i == 2 else "train"
        _add(tar, "./_background_noise_/white_noise.wav", _audio_bytes(_tone(1.0, 50.0), 16000, "WAV"))
        _add(tar, "./validation_list.txt", "".join(f"{r}\n" for r, s in expected.items() if s == "val").encode())
        _add(tar, "./testing_list.txt", "".join(f"{r}\n" for r, s in expected.items() if s == "test").encode())
        _add(tar, "./LICENSE", b"CC BY 4.0\n")
    return expected


def test_speech_commands_official_splits_as_manifests(scripts, tmp_path, capsys):
    psc = scripts("prepare_speech_commands")
    archive = tmp_path / "speech_commands_v0.02.tar.gz"
    expected = _fake_speech_commands(archive)
    root = tmp_path / "sc"
    with pytest.raises(SystemExit, match="sha256 of .* expected"):
        psc.main(["--root", str(root), "--from-archive", str(archive)])  # the official digest: not this file
    assert not (root / psc.FOLDER).exists()
    assert psc.main(["--root", str(root), "--from-archive", str(archive), "--sha256", _sha256(archive)]) == 0
    assert "train: 6 clips" in capsys.readouterr().out
    dm = AudioFolderDataModule(root=str(root), batch_size=2, num_workers=0, max_seconds=None)
    assert dm.class_names == ["no", "up", "yes"] and dm.num_skipped == 0
    for split, items in dm._splits.items():
        got = {p.relative_to(root / psc.FOLDER).as_posix(): dm.class_names[t] for p, t in items}
        assert got == {r: r.split("/")[0] for r, s in expected.items() if s == split}
    dm.setup()
    (wav, lengths), labels = next(iter(dm.val_dataloader()))
    assert wav.shape == (2, 4000) and labels.tolist() == [0, 1]  # val: no/spk1, up/spk1
    with pytest.raises(SystemExit, match="not in"):
        psc.main(["--root", str(root), "--keywords", "yes,cat"])


def test_speech_commands_keywords_unknown_and_folder_layout(scripts, tmp_path):
    psc = scripts("prepare_speech_commands")
    archive = tmp_path / "speech_commands_v0.02.tar.gz"
    expected = _fake_speech_commands(archive)
    root = tmp_path / "sc"
    psc.main(["--root", str(root), "--from-archive", str(archive), "--sha256", "none", "--keywords", "yes",
              "--layout", "folders"])
    assert sorted(p.name for p in (root / psc.FOLDER).iterdir() if p.is_dir()) == ["yes"]  # extracted only "yes"
    dm = AudioFolderDataModule(root=str(root), batch_size=2, num_workers=0)
    assert dm.class_names == ["yes"] and [len(dm._splits[s]) for s in ("train", "val", "test")] == [2, 1, 1]

    # --unknown needs every word: re-extracts, the other words become "unknown"
    psc.main(["--root", str(root), "--from-archive", str(archive), "--sha256", "none", "--keywords", "yes",
              "--unknown", "--layout", "folders"])
    dm = AudioFolderDataModule(root=str(root), batch_size=2, num_workers=0)
    assert dm.class_names == ["unknown", "yes"]
    counts = {s: sorted(dm.class_names[t] for _, t in v) for s, v in dm._splits.items()}
    assert counts == {"train": ["unknown"] * 4 + ["yes"] * 2, "val": ["unknown"] * 2 + ["yes"],
                      "test": ["unknown"] * 2 + ["yes"]}
    assert (root / "train" / "unknown" / "no_spk0_nohash_0.wav").is_file()
    assert not any("_background_noise_" in str(p) for v in dm._splits.values() for p, _ in v)
    with pytest.raises(SystemExit, match="needs --keywords"):
        psc.main(["--root", str(root), "--unknown"])


# -- LibriSpeech ----------------------------------------------------------------------------------------
TEXTS = {"dev-clean": {"84-121123-0000": "GO DO YOU HEAR", "84-121123-0001": "BUT IN LESS THAN FIVE MINUTES",
                       "174-50561-0000": "FORGOTTEN TOO THE NAME OF GILLIAN"},
         "test-clean": {"1089-134686-0000": "HE HOPED THERE WOULD BE STEW FOR DINNER"}}


def _fake_librispeech(folder: Path, subset: str) -> Path:
    """``<subset>.tar.gz`` holding LibriSpeech/<subset>/<spk>/<chapter>/ flac + trans.txt files."""
    archive = folder / f"{subset}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        _add(tar, "LibriSpeech/README.TXT", b"LibriSpeech ASR corpus\n")
        chapters: dict[str, list[str]] = {}
        for k, utt in enumerate(TEXTS[subset]):
            chapters.setdefault(utt.rsplit("-", 1)[0], []).append(utt)
            spk, chap, _ = utt.split("-")
            wav = _tone(0.5 + 0.25 * k, 300.0 + 50 * k)
            _add(tar, f"LibriSpeech/{subset}/{spk}/{chap}/{utt}.flac", _audio_bytes(wav, 16000, "FLAC"))
        for key, utts in chapters.items():
            spk, chap = key.split("-")
            lines = "".join(f"{u} {TEXTS[subset][u]}\n" for u in utts)
            _add(tar, f"LibriSpeech/{subset}/{spk}/{chap}/{key}.trans.txt", lines.encode())
    return archive


def test_librispeech_manifests_read_by_ctc_data(scripts, tmp_path, monkeypatch, capsys):
    pls = scripts("prepare_librispeech")
    dev, test = _fake_librispeech(tmp_path, "dev-clean"), _fake_librispeech(tmp_path, "test-clean")
    root = tmp_path / "ls"
    cmd = ["--root", str(root), "--train", "dev-clean", "--val", "", "--test", "test-clean",
           "--from-archive", str(dev), str(test)]
    with pytest.raises(SystemExit, match="md5 of .*dev-clean.tar.gz"):
        pls.main(cmd)  # the official md5 sums do not match the fake archives
    monkeypatch.setitem(pls.MD5, "dev-clean", hashlib.md5(dev.read_bytes()).hexdigest())
    monkeypatch.setitem(pls.MD5, "test-clean", hashlib.md5(test.read_bytes()).hexdigest())
    assert pls.main(cmd) == 0
    assert "train.tsv: 3 utterances" in capsys.readouterr().out
    assert (root / "LibriSpeech" / "README.TXT").is_file() and not (root / "val.tsv").exists()

    dm = AudioFolderDataModule(root=str(root), target="transcript", batch_size=3, num_workers=0, max_seconds=None)
    got = {p.stem: t for p, (_, t) in dm._splits["train"]}
    assert got == TEXTS["dev-clean"] and [p.suffix for p, _ in dm._splits["train"]] == [".flac"] * 3
    assert {p.stem for p, _ in dm._splits["test"]} == set(TEXTS["test-clean"])
    dm.setup()
    (wav, lengths), (tokens, tok_len) = next(iter(dm.train_dataloader()))
    decoded = {dm.vocab.decode(tokens[i, : tok_len[i]].tolist()) for i in range(3)}
    assert decoded == set(TEXTS["dev-clean"].values()) and sorted(lengths.tolist()) == [8000, 12000, 16000]


def test_librispeech_wav_copies_resampled_and_lowercased(scripts, tmp_path):
    pls = scripts("prepare_librispeech")
    dev = _fake_librispeech(tmp_path, "dev-clean")
    root = tmp_path / "ls"
    pls.main(["--root", str(root), "--train", "dev-clean", "--val", "", "--test", "", "--from-archive", str(dev),
              "--no-md5", "--to-wav", "--sample-rate", "8000", "--lowercase", "--max-utterances", "2"])
    rows = (root / "train.tsv").read_text().splitlines()
    assert rows[0] == "path\ttranscript\tseconds" and len(rows) == 3
    path, text, seconds = rows[1].split("\t")
    assert path.startswith("wav/dev-clean/") and path.endswith(".wav") and text == text.lower()
    info = sf.info(str(root / path))
    assert info.samplerate == 8000 and info.frames == round(float(seconds) * 8000)
    wav, sr = sf.read(str(root / path), dtype="float32")
    flac = root / "LibriSpeech" / Path(path).relative_to("wav").with_suffix(".flac")
    ref = read_audio(flac, 8000).numpy()
    assert np.abs(wav - ref).max() < 1e-3  # same as mmzoo's own resampling (16-bit rounding aside)
    with pytest.raises(SystemExit, match="unknown LibriSpeech subset"):
        pls.main(["--root", str(root), "--train", "dev-cleen"])
    with pytest.raises(SystemExit, match="needs --to-wav"):
        pls.main(["--root", str(root), "--sample-rate", "8000"])
