"""Audio data: the built-in synthesized speech, file readers (class folders, manifests, resampling,
unreadable files), batching with lengths, CTC vocabulary."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from mmzoo.data import AudioFolderDataModule, SynthSpeechDataModule
from mmzoo.data.audio import CharVocab, read_audio
from mmzoo.data.synth_speech import LEXICON, SynthSpeechDataset, synth_unit


def test_synth_speech_is_deterministic_and_labelled_by_unit_order():
    ds = SynthSpeechDataset(20, seed=0, split="train")
    wav, label, text = ds[3]
    assert wav.shape == (16000,) and label == 3 and text == LEXICON[3]
    assert torch.equal(wav, ds[3][0])
    assert not torch.equal(wav, SynthSpeechDataset(20, seed=0, split="val")[3][0])
    assert abs(wav.mean()) < 1e-4 and abs(wav.std() - 1) < 1e-3
    # order pairs use the same units: the class is in the temporal order
    assert sorted(LEXICON[0]) == sorted(LEXICON[1]) and LEXICON[0] != LEXICON[1]
    rand = SynthSpeechDataset(10, vocabulary="random")
    assert all(2 <= len(rand[i][2]) <= 5 and rand[i][1] == -1 for i in range(10))


def test_vowel_formants_shape_the_spectrum():
    g = torch.Generator().manual_seed(0)
    spec = {u: torch.fft.rfft(synth_unit(u, 4000, 120.0, 0.0, 1.0, g)).abs() for u in "ai"}
    freqs = torch.fft.rfftfreq(4000, 1 / 16000)
    band = lambda s, lo, hi: s[(freqs >= lo) & (freqs < hi)].pow(2).sum()
    # /i/ has F2 ~2290 Hz, /a/ F1 ~730 Hz
    assert band(spec["i"], 2000, 2600) / band(spec["i"], 600, 900) > band(spec["a"], 2000, 2600) / band(spec["a"], 600, 900)


def test_synth_datamodule_batches_labels_and_transcripts():
    dm = SynthSpeechDataModule(batch_size=4, num_train=8, num_val=4, num_test=4, labels_per_class=2)
    dm.setup()
    assert len(dm.train_set) == 20 and dm.num_classes == 10
    (wav, lengths), y = next(iter(dm.train_dataloader()))
    assert wav.shape == (4, 16000) and lengths.tolist() == [16000] * 4 and y.shape == (4,)
    dm = SynthSpeechDataModule(batch_size=4, num_train=8, num_val=4, num_test=4, target="transcript",
                               vocabulary="random")
    (wav, lengths), (tokens, tok_len) = next(iter(dm.val_dataloader()))
    assert dm.class_names[0] == "<blank>" and dm.num_classes == 9
    texts = [dm.val_set[i][2] for i in range(4)]
    assert [dm.vocab.decode(tokens[i, : tok_len[i]].tolist()) for i in range(4)] == texts


def _write(path, seconds=0.5, sr=16000, channels=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    data = np.sin(2 * np.pi * 440 * t)[:, None].repeat(channels, 1).astype(np.float32) * 0.5
    sf.write(str(path), data, sr)


def test_read_audio_resamples_and_mixes_to_mono(tmp_path):
    _write(tmp_path / "a.flac", seconds=0.5, sr=8000, channels=2)
    wav = read_audio(tmp_path / "a.flac", 16000)
    assert wav.shape == (8000,)
    spectrum = torch.fft.rfft(wav).abs()
    assert abs(spectrum.argmax().item() * 16000 / 8000 - 440) < 4  # the 440 Hz tone survives resampling


def test_class_folders_skip_and_count_unreadable_files_strict_names_them(tmp_path):
    for c in ("yes", "no"):
        for i in range(5):
            _write(tmp_path / c / f"{i}.wav", seconds=0.3 + 0.1 * i)
    (tmp_path / "_background_noise_").mkdir()
    (tmp_path / "no" / "broken.wav").write_bytes(b"not audio")
    dm = AudioFolderDataModule(str(tmp_path), batch_size=2, fractions=(0.6, 0.2, 0.2), max_seconds=0.5,
                               max_bad_fraction=0.5)
    assert dm.labels == ["no", "yes"] and dm.num_skipped == 1
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 10
    (wav, lengths), y = next(iter(dm.val_dataloader()))
    assert wav.shape[1] == int(lengths.max()) <= 8000 and set(y.tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="broken.wav"):
        AudioFolderDataModule(str(tmp_path), strict=True)


def test_manifest_with_transcripts(tmp_path):
    for split in ("train", "val"):
        rows = ["path\ttranscript"]
        for i in range(3):
            _write(tmp_path / "clips" / f"{split}{i}.flac")
            rows.append(f"clips/{split}{i}.flac\thello world {i}")
        (tmp_path / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    dm = AudioFolderDataModule(str(tmp_path), batch_size=3, target="transcript")
    dm.setup()
    (wav, lengths), (tokens, tok_len) = next(iter(dm.val_dataloader()))
    assert wav.shape == (3, 8000)
    assert dm.vocab.decode(tokens[0, : tok_len[0]].tolist()) == "hello world 0"
    (tmp_path / "train.tsv").write_text("file\tlabel\nx.wav\tyes\n")
    with pytest.raises(ValueError, match="no column 'path' and 'transcript'"):
        AudioFolderDataModule(str(tmp_path), target="transcript")


def test_char_vocab_errors_name_the_character():
    vocab = CharVocab.from_texts(["ab c"])
    assert vocab.decode(vocab.encode("ab c")) == "ab c"
    with pytest.raises(ValueError, match="'z'"):
        vocab.encode("az")


@pytest.mark.parametrize("task", ["wav2vec2_pretrain", "audio_classification", "ctc"])
def test_every_audio_task_builds_on_an_audio_folder(train_cfg, tmp_path, task):
    """The audio tasks choose what the built-in synth_speech speaks without passing that option to other
    audio data: model=wav2vec2 with data=audio_folder builds for every task."""
    from mmzoo.training import build

    for i in range(8):
        _write(tmp_path / "clips" / ("yes" if i % 2 else "no") / f"{i}.wav")
    overrides = ["model=wav2vec2", f"task={task}", "data=audio_folder", "data.batch_size=2",
                 f"data.root={tmp_path / 'clips'}"]
    if task == "ctc":  # transcripts come from manifests (LibriSpeech style)
        for split in ("train", "val"):
            rows = ["path\ttranscript"] + [f"clips/{'yes' if i % 2 else 'no'}/{i}.wav\t{'yes' if i % 2 else 'no'}"
                                           for i in range(8)]
            (tmp_path / f"{split}.tsv").write_text("\n".join(rows) + "\n")
        overrides = overrides[:-1] + [f"data.root={tmp_path}", "data.target=transcript"]
    cfg = train_cfg(*overrides)
    assert "vocabulary" not in cfg.data
    dm, _ = build(cfg)
    dm.setup("fit")
    assert len(dm.train_dataloader()) > 0
