"""CoCa training: contrastive + captioning, with generated captions at every evaluation."""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn

from lightning.pytorch.loggers import WandbLogger

from ..losses import CoCaLoss
from .callbacks import to_display
from .contrastive import ContrastiveTask

log = logging.getLogger("mmzoo")


class CaptioningTask(ContrastiveTask):
    """Contrastive captioner (CoCa) training.

    Evaluation adds to :class:`ContrastiveTask`'s retrieval and zero-shot metrics: greedy captions (KV
    cache) for the first evaluation batch, a few of them printed and logged (``val_samples`` captions for
    the W&B table), and, when the data module can judge them (``score_captions``), the share of
    generated captions whose attributes are all correct (``{split}/caption_all_correct``).

    Args:
        model: a CoCa-like model (``forward`` -> features + ``logits``; ``generate``).
        caption_weight: weight of the captioning loss (paper: 2.0).
        contrastive_weight: weight of the contrastive loss (paper: 1.0).
        num_printed_captions: generated captions printed per evaluation.
        **kwargs: options of :class:`ContrastiveTask` / :class:`BaseTask`.
    """

    def __init__(self, model: nn.Module, caption_weight: float = 2.0, contrastive_weight: float = 1.0,
                 num_printed_captions: int = 6, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.coca_loss = CoCaLoss(caption_weight, contrastive_weight, local_loss=self.loss_fn.local_loss,
                                  gather_with_grad=self.loss_fn.gather_with_grad)
        self.num_printed_captions = num_printed_captions
        self.sample_captions: list[tuple[str, str]] = []  # (generated, reference) of the last evaluation
        self._first_batch: dict[str, Any] | None = None

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "tokenizer"):
            self.coca_loss.pad_token_id = dm.tokenizer.pad_token_id

    def training_step(self, batch: dict[str, Any], batch_idx: int):
        out = self(batch["image"], batch["text"])
        losses = self.coca_loss(out, batch["text"])
        self.log("train/loss", losses["loss"], prog_bar=True)
        self.log("train/caption_loss", losses["caption_loss"])
        self.log("train/contrastive_loss", losses["contrastive_loss"])
        self.log("train/logit_scale", out.logit_scale.detach())
        return self.check_loss(losses["loss"])

    def _eval_step(self, batch: dict[str, Any], batch_idx: int, prefix: str):
        out = super()._eval_step(batch, batch_idx, prefix)  # one forward serves both losses
        if batch_idx == 0:
            self._first_batch = batch
        losses = self.coca_loss(out, batch["text"])
        self.log(f"{prefix}/caption_loss", losses["caption_loss"], on_epoch=True, sync_dist=True,
                 batch_size=batch["image"].shape[0])
        return out

    @torch.no_grad()
    def _captions(self, prefix: str) -> dict[str, float]:
        dm = getattr(self.trainer, "datamodule", None)
        batch, self._first_batch = self._first_batch, None
        if dm is None or batch is None or not hasattr(dm, "tokenizer"):
            return {}
        tok = dm.tokenizer
        ids = self.model.generate(batch["image"], tok.sot_token_id, tok.eot_token_id, tok.pad_token_id)
        captions = [tok.decode([t for t in row.tolist() if t not in (tok.sot_token_id, tok.eot_token_id,
                                                                      tok.pad_token_id)]).strip() for row in ids]
        refs = batch.get("caption", [""] * len(captions))
        self.sample_captions = list(zip(captions, refs))
        if self.trainer.is_global_zero:
            for gen, ref in self.sample_captions[: self.num_printed_captions]:
                log.info("%s caption: %-60s | reference: %s", prefix, gen, ref)
            self._log_caption_table(batch["image"][:16], prefix)
        metrics = {}
        if hasattr(dm, "score_captions"):
            rank, world = self.trainer.global_rank, self.trainer.world_size
            indices = [rank + world * i for i in range(len(captions))]  # the eval sampler's order
            metrics[f"{prefix}/caption_all_correct"] = dm.score_captions(captions, prefix, indices)
        return metrics

    def _log_caption_table(self, images: torch.Tensor, prefix: str) -> None:
        """W&B: a table of images with their generated and reference captions."""
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                table = wandb.Table(columns=["image", "generated", "reference"])
                for img, (gen, ref) in zip(to_display(images.cpu()), self.sample_captions):
                    table.add_data(wandb.Image(img.permute(1, 2, 0).numpy()), gen, ref)
                logger.experiment.log({f"{prefix}/captions": table, "trainer/global_step": self.global_step})

    def on_validation_epoch_end(self) -> None:
        # each rank scores the captions of its own shard: the mean over ranks is reduced with the other
        # logged metrics, at one point on every rank
        self.log_dict(self._captions("val"), sync_dist=True)
        super().on_validation_epoch_end()

    def on_test_epoch_end(self) -> None:
        self.log_dict(self._captions("test"), sync_dist=True)
        super().on_test_epoch_end()
