"""A plain training loop for benchmark scripts that train small models outside ``train.py`` (ablations
that patch a model's forward, probes, PEFT transfer studies). mmzoo's own recipes train only through
Lightning runs (``train.py``; stages as pipelines: mmzoo/pipeline.py)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import torch
import torch.nn as nn

from mmzoo.convert import MMZOO_KEY, model_metadata
from mmzoo.tasks.base import build_adamw, warmup_cosine
from mmzoo.tasks.checkpoint_io import atomic_torch_save

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
    """AdamW (mmzoo's decay groups) with warmup + cosine for ``steps`` steps of ``step_fn(batch, progress)``
    (progress runs 0 -> 1); gradients clipped to norm 1. Returns the last logged step's scalars."""
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


def fit_dvae(dvae: nn.Module, loader, steps: int, lr: float = 1e-3, temperature: Sequence[float] = (1.0, 0.0625),
             kl_weight: Sequence[float] = (0.0, 0.1), noise_ramp: float = 0.0,
             device: Optional[torch.device] = None) -> dict[str, float]:
    """The Point-BERT tokenizer's objective and schedules (as ``task=dvae``) in the plain loop."""
    from mmzoo.tasks.point_bert import cosine_anneal, dvae_losses, gumbel_noise_scale

    device = device or next(dvae.parameters()).device
    dvae.train()

    def step(batch, progress):
        return dvae_losses(dvae, batch[0].to(device), cosine_anneal(*temperature, progress),
                           cosine_anneal(*kl_weight, progress), gumbel_noise_scale(noise_ramp, progress))

    out = fit_plain(dvae, loader, steps, lr, step, "dVAE tokenizer")
    dvae.eval()
    return out


def save_model_checkpoint(model: nn.Module, path: Path) -> Path:
    """An mmzoo checkpoint of ``model`` alone (readable by ``create_model(pretrained=path)``)."""
    state = {MMZOO_KEY: model_metadata(model),
             "state_dict": {f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()}}
    atomic_torch_save(state, path)
    return Path(path)
