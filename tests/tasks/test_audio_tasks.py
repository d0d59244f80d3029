"""wav2vec 2.0 configs train with fast_dev_run (pretraining, classification from an SSL checkpoint by
path, CTC); the audio dashboard callback logs clips, spectrograms and codebook usage to W&B offline."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

import mmzoo
from mmzoo.loggers import wandb_logger
from mmzoo.tasks.audio_callbacks import LogAudioSamples, log_spectrogram
from mmzoo.training import train

SMALL = ["model=wav2vec2", "data.batch_size=4", "data.num_train=8", "data.num_val=4", "data.num_test=4"]


def test_pretrain_then_finetune_classification_and_ctc(train_cfg):
    cfg = train_cfg(*SMALL, "debug=fdr", run="ssl")
    metrics = train(cfg)
    assert metrics["global_step"] == 1
    for key in ("train/contrastive_loss", "train/diversity_loss", "train/prob_perplexity", "train/temperature",
                "train/accuracy", "val/codebook_used"):
        assert torch.isfinite(torch.tensor(metrics[key])), key
    # fdr writes no checkpoint: save one the regular way, then fine-tune from it by path
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    ssl = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert any(k.startswith("model.quantizer.") for k in ssl["state_dict"])
    cls = train(train_cfg(*SMALL, "debug=fdr", "task=audio_classification", f"model.pretrained={ckpt}",
                          "+model.freeze_feature_encoder=true", run="cls"))
    assert 0.0 <= cls["test/acc1"] <= 1.0
    model = mmzoo.create_model("wav2vec2_tiny", pretrained=ckpt, pretrain_head=False, num_classes=10)
    w = ssl["state_dict"]["model.blocks.0.attn.qkv.weight"]
    assert torch.equal(model.blocks[0].attn.qkv.weight, w) and not hasattr(model, "quantizer")
    ctc = train(train_cfg(*SMALL, "debug=fdr", "task=ctc", run="ctc"))
    assert ctc["test/cer"] >= 0.0 and "test/wer" in ctc


def test_audio_callback_logs_clips_spectrograms_and_codebook_histogram(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = wandb_logger(project="mmzoo-test", save_dir=str(tmp_path))
    logged = []
    monkeypatch.setattr(logger.experiment, "log", lambda data, **kw: logged.append(data))
    counts = torch.zeros(2, 8, dtype=torch.long)
    counts[0, 3], counts[1, 5] = 7, 2
    task = SimpleNamespace(val_audio=torch.randn(6, 16000), code_counts=counts)
    trainer = SimpleNamespace(loggers=[logger], sanity_checking=False, global_step=3)
    LogAudioSamples(max_clips=2).on_validation_epoch_end(trainer, task)
    data = logged[0]
    assert len(data["val/audio"]) == 2 and len(data["val/spectrogram"]) == 2
    hist = data["val/codebook_usage_group0"]
    assert hist.histogram[3] == 7 and sum(hist.histogram) == 7 and len(hist.bins) == 9
    logger.experiment.finish()


def test_spectrogram_puts_a_tone_in_the_right_row():
    t = torch.arange(16000) / 16000
    spec = log_spectrogram(torch.sin(2 * torch.pi * 1000 * t))
    assert spec.shape[0] == 201 and 0 <= spec.min() and spec.max() <= 1
    row = spec[:, 50].argmax().item()
    assert abs((200 - row) * 40 - 1000) <= 40  # 40 Hz bins, low frequencies at the bottom
