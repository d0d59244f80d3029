"""What every mmzoo task shares: optimizer and schedule, checkpoint contents, RNG restore on resume,
and the non-finite-loss guard. Concrete tasks implement ``training_step`` / ``validation_step``."""
from __future__ import annotations

import math
import random
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
import torch.nn as nn

from ..checkpoint import MMZOO_KEY, TASK_KEY, model_metadata
from ..preprocessing import data_config


def param_groups_weight_decay(model: nn.Module, weight_decay: float,
                              extra_no_decay: Optional[set[str]] = None) -> list[dict[str, Any]]:
    """AdamW groups: no decay for 1-D params (norm weights, biases), embeddings, and the names a model
    lists in ``no_weight_decay()`` (position embeddings, class tokens, CLIP's logit scale...)."""
    skip = set(extra_no_decay or ())
    for name, module in model.named_modules():
        if hasattr(module, "no_weight_decay"):
            prefix = f"{name}." if name else ""
            skip |= {prefix + n for n in module.no_weight_decay()}
        if isinstance(module, nn.Embedding):
            skip.add(f"{name}.weight" if name else "weight")
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_adamw(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999),
                eps: float = 1e-8) -> torch.optim.AdamW:
    """mmzoo's AdamW: decay groups of :func:`param_groups_weight_decay` and the fastest implementation
    for where the parameters live (the fused kernel on CUDA and CPU, else the multi-tensor one)."""
    groups = param_groups_weight_decay(model, weight_decay)
    params = [p for g in groups for p in g["params"]]
    fused = all(p.device.type in ("cuda", "cpu") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **({"fused": True} if fused else {"foreach": True}))


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup from ~0 to 1, then cosine decay to ``min_lr_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _rng_state() -> dict[str, Any]:
    """Global RNG states as weights_only-loadable containers."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _zero_current(progress: dict[str, Any]) -> None:
    """Zero every ``current`` counter of a Lightning progress tracker (state dict form), recursively."""
    for key, value in progress.items():
        if key == "current" and isinstance(value, dict):
            for counter in value:
                value[counter] = 0
        elif isinstance(value, dict):
            _zero_current(value)


def finish_epoch_in_loop_state(checkpoint: dict[str, Any]) -> bool:
    """Make a checkpoint written at the end of an epoch (``on_train_epoch_end``: ModelCheckpoint's
    end-of-epoch save) resume like one written at the start of the next epoch. Returns whether it did.

    Such a checkpoint holds the epoch as processed but not completed. Lightning (2.6) resumes it by
    running the epoch-end again when ``trainer.max_steps`` is set: the epoch counter then runs one ahead,
    so every later epoch draws the data order of the next one, and the epoch-end hooks run twice. Marking
    the epoch completed and the batch counters of the finished epoch reset is the state the
    uninterrupted run is in when its next epoch starts; the totals, the step counts, the logger step
    and the optimizer and scheduler states are left as saved.
    """
    fit = (checkpoint.get("loops") or {}).get("fit_loop")
    if not isinstance(fit, dict) or "epoch_progress" not in fit:
        return False
    epochs = fit["epoch_progress"]
    total, current = epochs["total"], epochs["current"]
    batches = fit.get("epoch_loop.batch_progress", {})
    at_epoch_end = (total["ready"] == total["started"] == total["processed"] == total["completed"] + 1
                    and current["processed"] == current["completed"] + 1 and batches.get("is_last_batch"))
    if not at_epoch_end:
        return False
    total["completed"], current["completed"] = total["processed"], current["processed"]
    for key in ("epoch_loop.batch_progress", "epoch_loop.scheduler_progress",
                "epoch_loop.automatic_optimization.optim_progress", "epoch_loop.manual_optimization.optim_step_progress"):
        if isinstance(fit.get(key), dict):
            _zero_current(fit[key])
    batches["is_last_batch"] = False
    return True


class BaseTask(L.LightningModule):
    """Shared optimisation and checkpoint logic.

    Args:
        model: the network (built by ``mmzoo.create_model``).
        lr: peak learning rate.
        weight_decay: AdamW decoupled weight decay (not applied to norms, biases, embeddings...).
        betas: AdamW betas.
        eps: AdamW epsilon.
        warmup_steps: linear warmup steps (if < 1, a fraction of the total steps).
        min_lr_ratio: final LR / peak LR of the cosine decay.
        total_steps: schedule length in optimizer steps (default: the trainer's estimate). Set it to
            keep the schedule fixed when ``trainer.max_steps`` changes.
        nonfinite: what to do on a NaN/inf loss: "error" (stop, naming the step) or "skip" (skip the
            optimizer step and count it).
    """

    def __init__(self, model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.05,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, warmup_steps: float = 0.05,
                 min_lr_ratio: float = 0.01, total_steps: Optional[int] = None, nonfinite: str = "error") -> None:
        super().__init__()
        if nonfinite not in ("error", "skip"):
            raise ValueError(f"task.nonfinite must be 'error' or 'skip', got {nonfinite!r}")
        self.model = model
        self.save_hyperparameters(ignore=["model"])
        self.nonfinite_steps = 0
        self._rng_to_restore: Optional[dict[str, Any]] = None
        self._logger_step_to_restore: Optional[int] = None
        self._first_nonfinite: Optional[torch.Tensor] = None  # () long on the loss's device, -1 = none

    # -- optimisation -------------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        opt = build_adamw(self, hp.lr, hp.weight_decay, tuple(hp.betas), hp.eps)
        total = hp.total_steps or int(self.trainer.estimated_stepping_batches)
        warmup = int(hp.warmup_steps * total) if hp.warmup_steps < 1 else int(hp.warmup_steps)
        warmup = max(1, min(warmup, total))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, warmup, total, hp.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def check_loss(self, loss: torch.Tensor) -> Optional[torch.Tensor]:
        """Return ``loss`` if finite on every rank; otherwise stop or skip (``nonfinite``).

        Called at the end of ``training_step``, where every rank is at the same batch: the only place a
        collective of this check can never interleave with another one (a rank-0-only progress bar
        computes the synced epoch metrics inside ``on_train_epoch_end``, before the task's own hook).

        "error" costs no host synchronisation per step: the first non-finite step is recorded on the
        device, and the ranks agree on it (one ``all_reduce``) every ``trainer.log_every_n_steps``
        batches, on the last batch of an epoch, on the batch before a validation and on the last step
        of the run, so no checkpoint or validation ever sees the weights of a non-finite step. "skip"
        must decide before backward, so it agrees every step.
        """
        finite = torch.isfinite(loss.detach())
        if self.hparams.nonfinite == "error":
            if self._first_nonfinite is None or self._first_nonfinite.device != loss.device:
                self._first_nonfinite = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._first_nonfinite.masked_fill_(~finite & (self._first_nonfinite < 0), self.global_step)
            if self._nonfinite_check_due():
                self.raise_if_nonfinite()
            return loss
        finite = finite.to(torch.int32)
        if self._trainer is not None and self.trainer.world_size > 1:
            finite = self.trainer.strategy.reduce(finite, reduce_op="min")  # every rank decides alike
        if bool(finite):
            return loss
        self.nonfinite_steps += 1
        self.log("train/nonfinite_steps", float(self.nonfinite_steps))  # the same on every rank
        return None  # Lightning skips backward and the optimizer step

    def _nonfinite_check_due(self) -> bool:
        """Whether this training batch is one where the ranks agree on the non-finite flag. A function
        of the batch index, the step and the trainer's settings only, so every rank answers alike."""
        if self._trainer is None:
            return True
        trainer = self.trainer
        batch_idx = trainer.fit_loop.epoch_loop.batch_idx  # of the batch in training_step now
        done = batch_idx + 1
        if done % max(1, trainer.log_every_n_steps) == 0:
            return True
        n = trainer.num_training_batches
        if isinstance(n, int) and done >= n:  # last batch of the epoch: validation and checkpoints follow
            return True
        every = trainer.val_check_batch
        if isinstance(every, int) and every > 0 and done % every == 0:
            return True
        return trainer.max_steps > 0 and self.global_step + 1 >= trainer.max_steps

    def raise_if_nonfinite(self) -> None:
        """Raise if any rank saw a non-finite loss since the start (``nonfinite="error"``). A collective
        under DDP: call it where every rank calls it (see :meth:`check_loss`)."""
        if self._first_nonfinite is None:
            return
        first = self._first_nonfinite
        if self._trainer is not None and self.trainer.world_size > 1:
            # the earliest step any rank saw (ranks that saw none take part with the largest integer)
            none = torch.iinfo(torch.long).max
            earliest = torch.where(first >= 0, first, torch.full_like(first, none))
            first = self.trainer.strategy.reduce(earliest.clone(), reduce_op="min")
            first = torch.where(first == none, torch.full_like(first, -1), first)
        step = int(first)
        if step >= 0:
            raise FloatingPointError(
                f"non-finite loss (nan/inf) at global step {step} (epoch {self.current_epoch}); "
                "lower task.lr, enable trainer.gradient_clip_val, or set task.nonfinite=skip")

    def settle_epoch_metrics(self) -> None:
        """Compute the metrics logged this epoch (their cross-rank reductions) now, on every rank.

        Call it at the top of an epoch-end hook before issuing a collective of your own: a rank-0-only
        callback (the progress bar) may already have computed them, with their collectives, before this
        hook; the other ranks then compute them here, so every rank issues the same collectives in the
        same order. Metrics logged afterwards are reduced later, at one fixed point, by every rank.
        """
        if self._trainer is not None and self.trainer.world_size > 1:
            _ = self.trainer.callback_metrics

    def sum_over_ranks(self, counts: torch.Tensor) -> torch.Tensor:
        """``counts`` summed over every rank (the tensor itself in one process), on ``counts``' device.
        A collective: call it in an epoch-end hook of the task, which every rank runs."""
        if self._trainer is None or self.trainer.world_size == 1:
            return counts
        self.settle_epoch_metrics()
        total = self.trainer.strategy.reduce(counts.to(self.device).clone(), reduce_op="sum")
        return total.to(counts.device)

    # -- checkpoints --------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        # the preprocessing the model is trained with travels with it (mmzoo.preprocessing)
        checkpoint[MMZOO_KEY] = model_metadata(self.model, data_config(dm) if dm is not None else None)
        # with Lightning's hyper_parameters, the task is rebuilt from the file alone (mmzoo.evaluation)
        peft = getattr(self.model, "peft_config", None)
        checkpoint[TASK_KEY] = {"class": f"{type(self).__module__}.{type(self).__qualname__}",
                                "peft": dict(peft) if isinstance(peft, dict) else None}
        checkpoint["rng"] = _rng_state()
        checkpoint["nonfinite_steps"] = self.nonfinite_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_to_restore = checkpoint.get("rng")
        self.nonfinite_steps = checkpoint.get("nonfinite_steps", 0)
        self._logger_step_to_restore = None
        if finish_epoch_in_loop_state(checkpoint):
            # the logger step of the next batch, as saved (Lightning would add one on restart)
            state = checkpoint["loops"]["fit_loop"].get("epoch_loop.state_dict", {})
            self._logger_step_to_restore = state.get("_batches_that_stepped")

    def on_train_start(self) -> None:
        # restore the RNG as it was when the checkpoint was written, so dropout / drop-path masks of a
        # resumed run continue the uninterrupted run's stream
        if self._rng_to_restore is not None:
            _set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # the first training batch after an end-of-epoch checkpoint logs under the step saved, as in the
        # uninterrupted run. Here: after Lightning's restart bookkeeping (which runs after on_train_start
        # and adds one) and before any on_train_batch_start hook logs (LearningRateMonitor)
        if self._logger_step_to_restore is not None and self._trainer is not None and self.trainer.training:
            self.trainer.fit_loop.epoch_loop._batches_that_stepped = self._logger_step_to_restore
            self._logger_step_to_restore = None
        return batch
