"""Language-model pretraining: causal LM (GPT), masked LM (BERT), span corruption (T5).

Every evaluation reports, on held-out text, the loss, the perplexity of the scored tokens and the
perplexity of the training-set unigram distribution (add-one smoothed) on the same tokens: the baseline
a model must beat. Scored tokens: every next token (causal), the masked positions (masked LM), the
corrupted span tokens without sentinels and EOT (span corruption).
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics import MeanMetric

from .base import BaseTask

log = logging.getLogger("mmzoo")

OBJECTIVES = ("causal", "masked", "span")
_AUTO_OBJECTIVE = {"decoder": "causal", "encoder": "masked", "encoder_decoder": "span"}
IGNORE = -100


def mask_tokens(tokens: torch.Tensor, mask_token_id: int, num_regular_tokens: int, mask_prob: float = 0.15,
                generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking (Devlin et al. 2019, sec. 3.1): select ``mask_prob`` of the positions (at least one
    per row); of those 80% become ``mask_token_id``, 10% a random ordinary token, 10% stay unchanged.

    Returns (inputs (B, L), labels (B, L)): labels hold the original token at selected positions and
    -100 elsewhere.
    """
    B, L = tokens.shape
    r = torch.rand(B, L, generator=generator)
    selected = r < mask_prob
    # every row predicts at least one token: its lowest draw is selected too
    selected |= r == r.min(dim=1, keepdim=True).values
    action = torch.rand(B, L, generator=generator)
    random_ids = torch.randint(0, num_regular_tokens, (B, L), generator=generator)
    selected, action, random_ids = (t.to(tokens.device) for t in (selected, action, random_ids))
    inputs = torch.where(selected & (action < 0.8), torch.full_like(tokens, mask_token_id), tokens)
    inputs = torch.where(selected & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    labels = torch.where(selected, tokens, torch.full_like(tokens, IGNORE))
    return inputs, labels


def _random_segmentation(n: int, k: int, generator: Optional[torch.Generator]) -> list[int]:
    """``n`` items cut at random into ``k`` non-empty segments: their lengths."""
    cuts = (torch.randperm(n - 1, generator=generator)[: k - 1] + 1).sort().values.tolist()
    bounds = [0, *cuts, n]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def span_lengths(length: int, noise_density: float = 0.15, mean_span_length: float = 3.0) -> tuple[int, int]:
    """(noise tokens, noise spans) of T5's span corruption for a sequence of ``length`` tokens."""
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(1, min(round(num_noise / mean_span_length), num_noise, length - num_noise))
    return num_noise, num_spans


def span_corrupt(tokens: torch.Tensor, sentinel_ids: Sequence[int], eot_token_id: int,
                 noise_density: float = 0.15, mean_span_length: float = 3.0,
                 generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """T5's span corruption (Raffel et al. 2020, sec. 3.1.4): ``noise_density`` of each row, in spans of
    mean length ``mean_span_length``, is replaced in the input by one sentinel per span; the target
    lists each sentinel followed by the tokens it hides, then EOT.

    Example: ``a b c d e f`` -> input ``a <X> d <Y> f``, target ``<X> b c <Y> e <EOT>``.
    Returns (inputs (B, L - noise + spans), targets (B, noise + spans + 1)).
    """
    B, L = tokens.shape
    num_noise, num_spans = span_lengths(L, noise_density, mean_span_length)
    if num_spans > len(sentinel_ids):
        raise ValueError(f"span corruption of {L} tokens needs {num_spans} sentinels, the vocabulary has "
                         f"{len(sentinel_ids)}; raise data.num_sentinels")
    rows = tokens.tolist()
    inputs, targets = [], []
    for row in rows:
        noise = _random_segmentation(num_noise, num_spans, generator)
        keep = _random_segmentation(L - num_noise, num_spans, generator)
        inp, tgt, pos = [], [], 0
        for i in range(num_spans):  # kept run, then noise span (T5 starts with kept tokens)
            inp.extend(row[pos:pos + keep[i]])
            pos += keep[i]
            inp.append(sentinel_ids[i])
            tgt.append(sentinel_ids[i])
            tgt.extend(row[pos:pos + noise[i]])
            pos += noise[i]
        tgt.append(eot_token_id)
        inputs.append(inp)
        targets.append(tgt)
    return (torch.tensor(inputs, dtype=tokens.dtype, device=tokens.device),
            torch.tensor(targets, dtype=tokens.dtype, device=tokens.device))


class LanguageModelingTask(BaseTask):
    """Pretrain a :class:`~mmzoo.models.TransformerLM` on blocks of tokens (``batch["tokens"]`` (B, L)).

    The data module (e.g. :class:`~mmzoo.data.TextCorpusDataModule`) provides the tokenizer, the mask
    and sentinel ids and the training unigram counts.

    Args:
        model: the language model.
        objective: "causal", "masked", "span", or None (from the model's kind).
        mask_prob: masked LM: share of selected positions.
        noise_density: span corruption: share of tokens corrupted.
        mean_span_length: span corruption: mean length of a corrupted span.
        num_generated_tokens: causal LM: tokens of the greedy sample printed at every evaluation.
        **kwargs: options of :class:`BaseTask`.
    """

    def __init__(self, model: nn.Module, objective: Optional[str] = None, mask_prob: float = 0.15,
                 noise_density: float = 0.15, mean_span_length: float = 3.0, num_generated_tokens: int = 32,
                 **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        if objective is None:
            objective = _AUTO_OBJECTIVE[model.cfg.kind]
        if objective not in OBJECTIVES:
            raise ValueError(f"task.objective must be null or one of {OBJECTIVES}, got {objective!r}")
        needed = {"causal": "decoder", "masked": "encoder", "span": "encoder_decoder"}[objective]
        if model.cfg.kind != needed:
            raise ValueError(f"task.objective={objective!r} needs a model of kind {needed!r}, "
                             f"{type(model).__name__} has kind {model.cfg.kind!r}")
        self.objective = objective
        self.mask_prob = mask_prob
        self.noise_density, self.mean_span_length = noise_density, mean_span_length
        self.num_generated_tokens = num_generated_tokens
        self.eval_metrics = nn.ModuleDict({
            f"{split}_{name}": MeanMetric() for split in ("val", "test") for name in ("nll", "unigram_nll")})
        self.special: dict[str, Any] = {}
        self.unigram_logp: Optional[torch.Tensor] = None
        self._sample_prompt: Optional[torch.Tensor] = None

    # -- data-dependent setup -----------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None:
            self.configure_from_data(dm)

    def configure_from_data(self, dm: Any) -> None:
        """Read special-token ids and the training unigram distribution from the data module."""
        tok = dm.tokenizer
        self.tokenizer = tok
        self.special = dict(eot=tok.eot_token_id, sot=tok.sot_token_id,
                            mask=getattr(dm, "mask_token_id", None),
                            sentinels=list(getattr(dm, "sentinel_token_ids", [])),
                            num_regular=getattr(dm, "num_regular_tokens", tok.vocab_size))
        if self.objective == "masked" and self.special["mask"] is None:
            raise ValueError(f"masked LM needs a data module with a mask token; {type(dm).__name__} has none")
        if self.objective == "span" and not self.special["sentinels"]:
            raise ValueError(f"span corruption needs sentinel tokens; {type(dm).__name__} has none")
        if hasattr(dm, "unigram_counts"):
            counts = dm.unigram_counts().double()
            self.unigram_logp = ((counts + 1) / (counts.sum() + counts.numel())).log().float()  # add-one

    # -- objectives ---------------------------------------------------------------------------------
    def compute(self, tokens: torch.Tensor, generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        """Loss of a batch of blocks, and per-token NLL of the scored targets with their ids."""
        sp = self.special
        if self.objective == "causal":
            out = self.model(tokens)
            logits, targets = out.logits[:, :-1], tokens[:, 1:]
            scored = torch.ones_like(targets, dtype=torch.bool)
        elif self.objective == "masked":
            inputs, targets = mask_tokens(tokens, sp["mask"], sp["num_regular"], self.mask_prob, generator)
            out = self.model(inputs)
            logits, scored = out.logits, targets != IGNORE
        else:
            inputs, targets = span_corrupt(tokens, sp["sentinels"], sp["eot"], self.noise_density,
                                           self.mean_span_length, generator)
            decoder_in = torch.cat([torch.full_like(targets[:, :1], sp["sot"]), targets[:, :-1]], dim=1)
            out = self.model(inputs, decoder_in)
            logits = out.logits
            scored = targets < sp["num_regular"]  # the hidden text, not sentinels / EOT
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                             ignore_index=IGNORE, reduction="none").view_as(targets)
        valid = targets != IGNORE
        lm_loss = ce[valid].mean()
        return {"loss": lm_loss + out.aux_loss, "lm_loss": lm_loss, "aux_loss": out.aux_loss,
                "scored_nll": ce[scored], "scored_targets": targets[scored]}

    def training_step(self, batch: dict[str, Any], batch_idx: int):
        r = self.compute(batch["tokens"])
        self.log("train/loss", r["loss"], prog_bar=True)
        self.log("train/ppl", r["lm_loss"].detach().exp())
        if self.model.moe_layers:
            self.log("train/aux_loss", r["aux_loss"])
        return self.check_loss(r["loss"])

    def _eval_step(self, batch: dict[str, Any], batch_idx: int, prefix: str) -> None:
        tokens = batch["tokens"]
        # masks / spans fixed per evaluation batch, so evaluations are comparable across epochs
        gen = torch.Generator().manual_seed(10_000 + batch_idx)
        r = self.compute(tokens, gen)
        self.log(f"{prefix}/loss", r["lm_loss"], on_epoch=True, sync_dist=True, batch_size=tokens.shape[0])
        self.eval_metrics[f"{prefix}_nll"].update(r["scored_nll"])
        if self.unigram_logp is not None:
            uni = self.unigram_logp.to(tokens.device)
            self.eval_metrics[f"{prefix}_unigram_nll"].update(-uni[r["scored_targets"]])
        if batch_idx == 0:
            self._sample_prompt = tokens[:1, : min(16, tokens.shape[1])]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    def _epoch_end(self, prefix: str) -> None:
        nll = self.eval_metrics[f"{prefix}_nll"]
        if nll.update_count:
            self.log(f"{prefix}/ppl", nll.compute().exp())
        uni = self.eval_metrics[f"{prefix}_unigram_nll"]
        if uni.update_count:
            self.log(f"{prefix}/unigram_ppl", uni.compute().exp())
        nll.reset()
        uni.reset()
        self._print_sample(prefix)

    def _print_sample(self, prefix: str) -> None:
        prompt, self._sample_prompt = self._sample_prompt, None
        tok = getattr(self, "tokenizer", None)
        if (self.objective != "causal" or prompt is None or tok is None or self.num_generated_tokens <= 0
                or not self.trainer.is_global_zero):
            return
        n = self.num_generated_tokens
        if getattr(self.model, "pos_embed", None) is not None:  # a position table: stay inside it
            n = min(n, self.model.cfg.context_length - prompt.shape[1])
        out = self.model.generate(prompt, n, eot_token_id=tok.eot_token_id)
        text_in, text_out = tok.decode(prompt[0]), tok.decode(out[0, prompt.shape[1]:])
        log.info("%s sample: %r -> %r", prefix, text_in, text_out)
        # a table row for the dashboards (mmzoo.monitoring.LogTextSamples)
        self.text_samples = [{"step": self.global_step, "prompt": text_in, "generation": text_out}]

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    # -- checkpoints --------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        tok = getattr(self, "tokenizer", None)
        if tok is not None and hasattr(tok, "save"):
            # the tokenizer travels with the weights (a JSON string): `mmzoo.generate` needs only the file
            with tempfile.TemporaryDirectory() as d:
                tok.save(Path(d) / "tokenizer.json")
                checkpoint["tokenizer"] = (Path(d) / "tokenizer.json").read_text(encoding="utf-8")
