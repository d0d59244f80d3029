"""Audio tasks: wav2vec 2.0 self-supervised pretraining, audio classification, CTC speech recognition.

Batches come from :mod:`mmzoo.data.audio`: ``((wav (B, L), lengths (B,)), target)``.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics.text import CharErrorRate, WordErrorRate

from ..losses.wav2vec2 import Wav2Vec2Loss
from .base import BaseTask
from .classification import ClassificationTask


class Wav2Vec2PretrainTask(BaseTask):
    """Contrastive pretraining (wav2vec 2.0). Logs the contrastive and diversity losses, the codebook
    perplexity (of the batch-averaged softmax and of the hard picks), the Gumbel temperature and the
    accuracy of picking the positive among the K distractors.

    Validation masks with a generator seeded by the batch index, so validation figures are comparable
    across epochs. For the dashboards it keeps ``val_audio`` (a few clips) and ``code_counts`` (G, V):
    how often each codebook entry was picked during the last validation epoch.

    Args:
        model: a :class:`~mmzoo.models.wav2vec2.Wav2Vec2` with ``pretrain_head=True``.
        diversity_weight: weight of the diversity loss (0.1).
        feature_pen_weight: weight of the feature penalty (10).
        **kwargs: optimisation options of :class:`BaseTask`.
    """

    def __init__(self, model: nn.Module, diversity_weight: float = 0.1, feature_pen_weight: float = 10.0,
                 **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        if not getattr(model.cfg, "pretrain_head", False):
            raise ValueError("wav2vec 2.0 pretraining needs model.pretrain_head=true")
        self.loss = Wav2Vec2Loss(diversity_weight, feature_pen_weight)
        self.class_names: Optional[list[str]] = None
        self.val_audio: Optional[torch.Tensor] = None
        self.code_counts: Optional[torch.Tensor] = None
        self._val_counts: Optional[torch.Tensor] = None

    def _step(self, batch, prefix: str, generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        (wav, lengths), _ = batch
        out = self.model.forward_pretrain(wav, lengths, generator=generator)
        losses = self.loss(out)
        log = {f"{prefix}/loss": losses["loss"], f"{prefix}/contrastive_loss": losses["contrastive"],
               f"{prefix}/diversity_loss": losses["diversity"], f"{prefix}/features_pen": losses["features_pen"],
               f"{prefix}/accuracy": losses["accuracy"], f"{prefix}/prob_perplexity": out.prob_perplexity,
               f"{prefix}/code_perplexity": out.code_perplexity}
        if prefix == "train":
            log["train/temperature"] = torch.tensor(out.temperature)
        on_step = prefix == "train"
        self.log_dict(log, on_step=on_step, on_epoch=not on_step, prog_bar=False, sync_dist=not on_step)
        losses["codes"] = out.codes
        return losses

    def training_step(self, batch, batch_idx: int):
        self.model.set_num_updates(self.global_step)
        return self.check_loss(self._step(batch, "train")["loss"])

    def on_validation_epoch_start(self) -> None:
        q = self.model.quantizer
        self._val_counts = torch.zeros(q.num_groups, q.num_vars, dtype=torch.long)

    def validation_step(self, batch, batch_idx: int) -> None:
        g = torch.Generator().manual_seed(1000 + batch_idx)
        losses = self._step(batch, "val", generator=g)
        codes = losses["codes"].cpu()  # (N, G)
        for grp in range(codes.shape[1]):
            self._val_counts[grp] += torch.bincount(codes[:, grp], minlength=self._val_counts.shape[1])
        if batch_idx == 0:
            self.val_audio = batch[0][0][:4].detach().cpu()

    def on_validation_epoch_end(self) -> None:
        self.code_counts = self.sum_over_ranks(self._val_counts)  # the whole validation split's picks
        used = (self.code_counts > 0).float().mean()
        self.log("val/codebook_used", used)  # fraction of codebook entries picked at least once

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test", generator=torch.Generator().manual_seed(2000 + batch_idx))


class AudioClassificationTask(ClassificationTask):
    """Classification of clips: a wav2vec 2.0 encoder with a pooled head (``model.num_classes``).

    Load a pretrained encoder with ``model.pretrained=PATH`` (its quantizer is dropped when
    ``model.pretrain_head=false``); ``model.freeze_feature_encoder=true`` freezes the conv encoder.
    """

    def forward(self, x) -> torch.Tensor:
        wav, lengths = x
        return self.model(wav, lengths)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")


class CTCTask(BaseTask):
    """Character CTC speech recognition with greedy decoding; CER / WER with torchmetrics.

    Args:
        model: per-frame logits (B, T, V) with V = vocabulary size including the blank (id 0).
        class_names: the vocabulary (``<blank>`` first; ``|`` is the word separator).
        **kwargs: optimisation options of :class:`BaseTask`.
    """

    def __init__(self, model: nn.Module, class_names: list[str], **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.class_names = list(class_names)
        if getattr(model.cfg, "head_type", "frame") != "frame" or model.cfg.num_classes != len(self.class_names):
            raise ValueError(f"CTC needs model.head_type=frame and model.num_classes={len(self.class_names)} "
                             f"(vocabulary with blank), got {model.cfg.head_type!r} and {model.cfg.num_classes}")
        self.metrics = nn.ModuleDict({f"{s}_{m}": (CharErrorRate() if m == "cer" else WordErrorRate())
                                      for s in ("val", "test") for m in ("cer", "wer")})
        self.val_samples = None

    def decode(self, ids: list[int]) -> str:
        return "".join(self.class_names[i] for i in ids if i > 0).replace("|", " ")

    def greedy_decode(self, logits: torch.Tensor, frames: torch.Tensor) -> list[str]:
        """Best path: argmax per frame, merge repeats, drop blanks."""
        best = logits.argmax(-1).cpu()  # (B, T)
        out = []
        for b in range(best.shape[0]):
            seq = torch.unique_consecutive(best[b, : int(frames[b])]).tolist()
            out.append(self.decode(seq))
        return out

    def _loss(self, batch):
        (wav, lengths), (tokens, tok_len) = batch
        logits = self.model(wav, lengths)  # (B, T, V)
        frames = self.model.frame_lengths(lengths).clamp(max=logits.shape[1])
        log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (T, B, V)
        loss = F.ctc_loss(log_probs, tokens, frames, tok_len, blank=0, zero_infinity=True)
        return loss, logits, frames

    def training_step(self, batch, batch_idx: int):
        loss, _, _ = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return self.check_loss(loss)

    def _eval(self, batch, prefix: str) -> tuple[list[str], list[str]]:
        loss, logits, frames = self._loss(batch)
        hyps = self.greedy_decode(logits, frames)
        tokens, tok_len = batch[1]
        refs = [self.decode(tokens[b, : int(tok_len[b])].tolist()) for b in range(tokens.shape[0])]
        # an empty hypothesis is scored against the reference (all deletions)
        self.metrics[f"{prefix}_cer"](hyps, refs)
        self.metrics[f"{prefix}_wer"](hyps, refs)
        self.log(f"{prefix}/loss", loss, on_epoch=True, sync_dist=True)
        self.log(f"{prefix}/cer", self.metrics[f"{prefix}_cer"], on_epoch=True, prog_bar=prefix == "val")
        self.log(f"{prefix}/wer", self.metrics[f"{prefix}_wer"], on_epoch=True)
        return hyps, refs

    def validation_step(self, batch, batch_idx: int) -> None:
        hyps, refs = self._eval(batch, "val")
        if batch_idx == 0:  # a table for the dashboards (mmzoo.monitoring.LogTextSamples)
            from torchmetrics.functional.text import char_error_rate

            self.text_samples = [{"hypothesis": h, "reference": r, "cer": float(char_error_rate([h], [r]))}
                                 for h, r in list(zip(hyps, refs))[:8]]

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval(batch, "test")
