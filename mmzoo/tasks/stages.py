"""Plain training loops for the stages a task runs in its ``setup`` before Lightning's own fit: Point-BERT's
tokenizer and masked point modeling (:mod:`mmzoo.tasks.point_bert`), TimeSformer's image ViT
(:mod:`mmzoo.tasks.video`). Each stage writes an mmzoo checkpoint (:func:`save_model_checkpoint`) that
``create_model(pretrained=...)`` reads and that a resumed run reuses instead of training again."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn as nn

from ..convert import MMZOO_KEY, model_metadata
from .base import build_adamw, warmup_cosine
from .checkpoint_io import atomic_torch_save

log = logging.getLogger("mmzoo")


def cycle(loader: Iterable) -> Iterator:
    """Batches of ``loader`` forever (one epoch after another). Each epoch is announced to the loader's
    sampler and data set (``set_epoch``, as Lightning does), so the shuffle order and seeded augmentations
    change from epoch to epoch."""
    epoch = 0
    while True:
        for obj in (getattr(loader, "sampler", None), getattr(loader, "dataset", None)):
            if hasattr(obj, "set_epoch"):  # idempotent: a sampler may forward it to the data set too
                obj.set_epoch(epoch)
        yield from loader
        epoch += 1


def fit_plain(module: nn.Module, loader: Iterable, steps: int, lr: float,
              step_fn: Callable[[Any, float], dict[str, torch.Tensor]], name: str, weight_decay: float = 0.05,
              log_every: int = 50) -> dict[str, float]:
    """AdamW with warmup + cosine for ``steps`` steps of ``step_fn(batch, progress) -> {"loss": ..., ...}``
    (progress runs 0 -> 1) over ``module``'s trainable parameters; gradients clipped to norm 1. The
    optimizer is the Lightning tasks' (:func:`~mmzoo.tasks.base.build_adamw`: no decay for biases, norms,
    embeddings and a model's ``no_weight_decay()``). Returns the last step's scalars."""
    opt = build_adamw(module, lr, weight_decay)
    params = [p for g in opt.param_groups for p in g["params"]]
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, steps, 0.01))
    last: dict[str, float] = {}
    for step, batch in zip(range(steps), cycle(loader)):
        out = step_fn(batch, step / max(steps - 1, 1))
        if not torch.isfinite(out["loss"]):
            raise FloatingPointError(f"{name}: non-finite loss at step {step}; lower the learning rate")
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            last = {k: float(v.detach()) for k, v in out.items() if torch.is_tensor(v) and v.numel() == 1}
            log.info("%s step %d/%d: %s", name, step + 1, steps, ", ".join(f"{k}={v:.4f}" for k, v in last.items()))
    return last


def save_model_checkpoint(model: nn.Module, path: Path) -> Path:
    """An mmzoo checkpoint of ``model`` alone (readable by ``create_model(pretrained=path)``)."""
    state = {MMZOO_KEY: model_metadata(model),
             "state_dict": {f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(state, path)
    return path


def stage_device(task: Any) -> torch.device:
    """Where a stage run in ``setup`` should train: the device training will run on (``setup`` runs before
    the strategy moves the task there)."""
    trainer = task.trainer if task._trainer is not None else None
    return trainer.strategy.root_device if trainer is not None else task.device


def run_dir(task: Any) -> Path:
    """The run directory of a task's trainer (``hydra.run.dir``)."""
    trainer = task.trainer
    return Path(trainer.default_root_dir if trainer is not None else ".")
