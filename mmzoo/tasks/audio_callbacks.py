"""Audio dashboards: a few validation clips with their spectrograms, and codebook usage (wav2vec 2.0)."""
from __future__ import annotations

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only


def log_spectrogram(wav: torch.Tensor, n_fft: int = 400, hop: int = 160) -> torch.Tensor:
    """(L,) audio -> (F, T) log-magnitude spectrogram scaled to [0, 1] (25 ms windows, 10 ms hop at 16 kHz),
    low frequencies at the bottom row."""
    spec = torch.stft(wav.float(), n_fft, hop, window=torch.hann_window(n_fft), return_complex=True).abs()
    db = 20 * torch.log10(spec.clamp_min(1e-5))
    db = db.clamp_min(db.max() - 80)  # 80 dB dynamic range
    return ((db - db.min()) / (db.max() - db.min()).clamp_min(1e-6)).flip(0)


class LogAudioSamples(L.Callback):
    """After each validation epoch, log ``task.val_audio`` clips (W&B: ``wandb.Audio`` + spectrogram
    images; TensorBoard: audio + images) and, when the task has ``code_counts`` (G, V), a histogram of
    codebook usage (how often each entry was picked) per group.

    Args:
        max_clips: clips per epoch.
        sample_rate: audio sample rate.
    """

    def __init__(self, max_clips: int = 4, sample_rate: int = 16000) -> None:
        self.max_clips = max_clips
        self.sample_rate = sample_rate

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        clips = getattr(task, "val_audio", None)
        counts = getattr(task, "code_counts", None)
        clips = clips[: self.max_clips].float() if clips is not None else None
        step = trainer.global_step
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                data = {"trainer/global_step": step}
                if clips is not None:
                    peak = clips.abs().amax(1, keepdim=True).clamp_min(1e-6)
                    data["val/audio"] = [wandb.Audio((c / p).numpy(), sample_rate=self.sample_rate)
                                         for c, p in zip(clips, peak)]
                    data["val/spectrogram"] = [wandb.Image((log_spectrogram(c).numpy() * 255).astype(np.uint8))
                                               for c in clips]
                if counts is not None:
                    for g, row in enumerate(counts):
                        edges = np.arange(len(row) + 1, dtype=np.float64)  # one bin per codebook entry
                        data[f"val/codebook_usage_group{g}"] = wandb.Histogram(np_histogram=(row.numpy(), edges))
                logger.experiment.log(data)
            elif isinstance(logger, TensorBoardLogger):
                exp = logger.experiment
                if clips is not None:
                    for i, c in enumerate(clips):
                        exp.add_audio(f"val/audio_{i}", (c / c.abs().max().clamp_min(1e-6))[None], step,
                                      sample_rate=self.sample_rate)
                        exp.add_image(f"val/spectrogram_{i}", log_spectrogram(c)[None], step)
                if counts is not None:
                    for g, row in enumerate(counts):
                        # one sample per pick: TensorBoard histograms take values, not counts
                        values = torch.repeat_interleave(torch.arange(len(row)), row)
                        if values.numel():
                            exp.add_histogram(f"val/codebook_usage_group{g}", values, step)
