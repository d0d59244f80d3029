"""Callbacks mmzoo adds to every run."""
from __future__ import annotations

import logging
import os
import tempfile

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger(__name__)


class LogSamplePredictions(L.Callback):
    """After each validation epoch, log the first validation images with their predicted and true
    labels: a ``wandb.Table`` on W&B, an image grid with a caption on TensorBoard.

    Works with any task that fills ``task.val_samples = (images, targets, predictions)`` and has
    ``task.class_names``.

    Args:
        max_samples: images per table / grid.
    """

    def __init__(self, max_samples: int = 16) -> None:
        self.max_samples = max_samples
        self._warned = False

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        samples = getattr(task, "val_samples", None)
        if samples is None or trainer.sanity_checking:
            return
        images, targets, preds = (t[: self.max_samples] for t in samples)
        if images.dim() != 4:
            # e.g. point clouds (B, N, 3) of a point classifier: not images (LogPointClouds logs clouds)
            if not self._warned:
                log.warning("LogSamplePredictions logs images (B, C, H, W); the task's val_samples have shape %s, "
                            "so no samples are logged (set callbacks.sample_predictions=null)", tuple(images.shape))
                self._warned = True
            return
        names = getattr(task, "class_names", None) or [str(i) for i in range(int(targets.max()) + 1)]
        # VQA: the question each image was asked (task.val_questions, aligned with val_samples)
        questions = list(getattr(task, "val_questions", None) or [])[: len(images)]
        images = to_display(images)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                columns = ["image", "question", "prediction", "target", "correct"] if questions else \
                    ["image", "prediction", "target", "correct"]
                table = wandb.Table(columns=columns)
                for i, (img, p, t) in enumerate(zip(images, preds.tolist(), targets.tolist())):
                    row = [wandb.Image(img.permute(1, 2, 0).numpy()), names[p], names[t], p == t]
                    table.add_data(*(row[:1] + [questions[i]] + row[1:] if questions else row))
                logger.experiment.log({"val/samples": table, "trainer/global_step": trainer.global_step})
            elif isinstance(logger, TensorBoardLogger):
                from torchvision.utils import make_grid

                grid = make_grid(images, nrow=8, padding=1)
                logger.experiment.add_image("val/samples", grid, trainer.global_step)
                text = " | ".join((f"{questions[i]} " if questions else "") + f"{names[p]} ({names[t]})"
                                  for i, (p, t) in enumerate(zip(preds.tolist(), targets.tolist())))
                logger.experiment.add_text("val/sample_predictions (target)", text, trainer.global_step)


def to_display(images: torch.Tensor) -> torch.Tensor:
    """Normalised images -> [0, 1] per image, 3 channels, for display."""
    images = images.float()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    flat = images.flatten(1)
    lo, hi = flat.min(1).values[:, None, None, None], flat.max(1).values[:, None, None, None]
    return (images - lo) / (hi - lo).clamp_min(1e-6)


class LogPointClouds(L.Callback):
    """After each validation epoch, log point clouds and token statistics of Point-BERT's stages to W&B:
    input and reconstructed clouds as 3-D objects (``wandb.Object3D``), the histogram of token usage
    over the validation split; masked-token accuracy and Chamfer distances are logged by the tasks.

    Works with any task that fills ``task.val_point_samples = {"input": (K, N, 3), "reconstruction":
    (K, M, 3)}`` and keeps ``task.token_counts`` (num_tokens,).

    Args:
        max_samples: clouds logged per epoch.
    """

    def __init__(self, max_samples: int = 2) -> None:
        self.max_samples = max_samples

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        samples = getattr(task, "val_point_samples", None)
        counts = getattr(task, "token_counts", None)
        for logger in trainer.loggers:
            if not isinstance(logger, WandbLogger):
                continue
            import numpy as np
            import wandb

            data = {}
            for key, clouds in (samples or {}).items():
                for i, cloud in enumerate(clouds[: self.max_samples]):
                    data[f"val/point_cloud_{key}_{i}"] = wandb.Object3D(cloud.float().numpy().astype(np.float32))
            if counts is not None and counts.sum() > 0:
                edges = np.arange(counts.numel() + 1, dtype=np.float64)
                data["val/token_usage"] = wandb.Histogram(np_histogram=(counts.numpy(), edges))
            if data:
                logger.experiment.log({**data, "trainer/global_step": trainer.global_step})


class LogSampleClips(L.Callback):
    """After each validation epoch, log the first validation clips with their predicted and true labels:
    a ``wandb.Table`` of ``wandb.Video`` s on W&B, a grid (one row of frames per clip) on TensorBoard.

    Works with any task that fills ``task.val_samples = (clips (B, C, T, H, W), targets, predictions)``
    and has ``task.class_names``.

    Args:
        max_samples: clips per table / grid.
        fps: playback rate of the logged videos.
    """

    def __init__(self, max_samples: int = 8, fps: int = 4) -> None:
        self.max_samples = max_samples
        self.fps = fps

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        samples = getattr(task, "val_samples", None)
        if samples is None or trainer.sanity_checking:
            return
        clips, targets, preds = (t[: self.max_samples] for t in samples)
        if clips.dim() != 5:
            raise ValueError(f"LogSampleClips expects clips of shape (B, C, T, H, W), got {tuple(clips.shape)}")
        names = getattr(task, "class_names", None) or [str(i) for i in range(int(targets.max()) + 1)]
        B, C, T, H, W = clips.shape
        frames = clips.transpose(1, 2).float()  # (B, T, C, H, W)
        if C == 1:
            frames = frames.expand(-1, -1, 3, -1, -1)
        # one display range per clip, so the video does not flicker
        lo = frames.flatten(1).min(1).values[:, None, None, None, None]
        hi = frames.flatten(1).max(1).values[:, None, None, None, None]
        video = ((frames - lo) / (hi - lo).clamp_min(1e-6) * 255).round().to(torch.uint8)  # (B, T, 3, H, W)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                table = wandb.Table(columns=["clip", "prediction", "target", "correct"])
                tmp = tempfile.mkdtemp(prefix="mmzoo_clips_")
                for i, (v, p, t) in enumerate(zip(video, preds.tolist(), targets.tolist())):
                    # GIFs written with Pillow: wandb.Video on arrays would need moviepy + imageio
                    gif = _write_gif(v, os.path.join(tmp, f"clip{i}.gif"), self.fps)
                    table.add_data(wandb.Video(gif, format="gif"), names[p], names[t], p == t)
                logger.experiment.log({"val/sample_clips": table, "trainer/global_step": trainer.global_step})
            elif isinstance(logger, TensorBoardLogger):
                from torchvision.utils import make_grid

                grid = make_grid(video.flatten(0, 1), nrow=T, padding=1)
                logger.experiment.add_image("val/sample_clips", grid, trainer.global_step)
                text = " | ".join(f"{names[p]} ({names[t]})" for p, t in zip(preds.tolist(), targets.tolist()))
                logger.experiment.add_text("val/sample_clip_predictions (target)", text, trainer.global_step)


def _write_gif(video: torch.Tensor, path: str, fps: int) -> str:
    """uint8 (T, 3, H, W) -> an animated GIF at ``path``."""
    from PIL import Image

    frames = [Image.fromarray(f.permute(1, 2, 0).numpy()) for f in video]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return path
