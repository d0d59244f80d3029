"""What a run tells its loggers about itself: a readable name, tags and group, the resolved config with
the model's full architecture and parameter counts, and the W&B run id a resumed run continues.

Used by :func:`mmzoo.training.train`; the ``run_name`` / ``tags`` / ``group`` keys of ``configs/train.yaml``
feed every logger that has such fields (``configs/logger/wandb.yaml``).
"""
from __future__ import annotations

import dataclasses
import re
import secrets
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from .checkpoint import RUN_KEY  # checkpoint entry: {"name", "wandb_id"} and the run settings


def _choice(cfg: DictConfig, group: str) -> str | None:
    """A short name of the option composed for a config group, from its target class
    (``mmzoo.data.DigitsDataModule`` -> ``digits``). Read from the config itself, not from Hydra's global
    state, which a second run in the same process (a pipeline stage, a notebook) would find stale."""
    target = str((cfg.get(group) or {}).get("_target_", ""))
    name = target.rsplit(".", 1)[-1].removesuffix("DataModule")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower() or None


def default_run_name(cfg: DictConfig) -> str:
    """``MODEL-DATA-ID``: the model preset, the data option and a short random id (``vit_tiny-digits-3f9a1c``)."""
    model = str(cfg.model.get("name", "model"))
    data = _choice(cfg, "data") or "data"
    return f"{model}-{data}-{secrets.token_hex(3)}"


def read_run_entry(ckpt_path: str | Path) -> dict[str, Any]:
    """The ``mmzoo_run`` entry of a checkpoint (empty when it has none); read memory-mapped, tensors untouched."""
    try:
        obj = torch.load(str(ckpt_path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # the resume itself reports an unreadable checkpoint, naming it
        return {}
    entry = obj.get(RUN_KEY) if isinstance(obj, dict) else None
    return dict(entry) if isinstance(entry, dict) else {}


def prepare(cfg: DictConfig) -> None:
    """Fill ``cfg.run_name`` (a resumed run keeps its name) and point the W&B logger at the run it continues.

    Args:
        cfg: the composed run config; edited in place.
    """
    previous = read_run_entry(cfg.ckpt_path) if cfg.get("ckpt_path") else {}
    with open_dict(cfg):
        if not cfg.get("run_name"):
            cfg.run_name = previous.get("name") or default_run_name(cfg)
        wandb_cfg = (cfg.get("logger") or {}).get("wandb")
        if wandb_cfg is not None and previous.get("wandb_id") and not wandb_cfg.get("id"):
            wandb_cfg.id = previous["wandb_id"]  # continue the same W&B run, not a new one
            wandb_cfg.resume = "allow"


def logged_config(cfg: DictConfig, model: torch.nn.Module, resolved_model: dict[str, Any] | None,
                  resolved_task: dict[str, Any] | None) -> dict[str, Any]:
    """The config loggers record: every value resolved (no ``auto``), the model's whole architecture
    (its config dataclass, preset fields included) and its parameter counts.

    Args:
        cfg: the composed run config.
        model: the built model.
        resolved_model: the model config with ``auto`` values filled from the data module.
        resolved_task: the task config likewise.
    """
    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    if resolved_model is not None:
        out["model"] = {**resolved_model, "name": cfg.model.get("name")}
    if resolved_task is not None:
        out["task"] = resolved_task
    if dataclasses.is_dataclass(getattr(model, "cfg", None)):
        out["architecture"] = dataclasses.asdict(model.cfg)
    params = list(model.parameters())
    out["parameters"] = {"total": sum(p.numel() for p in params),
                         "trainable": sum(p.numel() for p in params if p.requires_grad)}
    return out


class RunInfo(L.Callback):
    """Stores the run's name and W&B id in every checkpoint (``mmzoo_run``), so a resume continues both."""

    def __init__(self, name: str) -> None:
        self.name = name

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        entry: dict[str, Any] = {"name": self.name}
        for lg in trainer.loggers:
            if type(lg).__name__ == "WandbLogger":
                entry["wandb_id"] = str(lg.version) if lg.version is not None else None
        checkpoint.setdefault(RUN_KEY, {}).update(entry)  # beside the settings mmzoo.checkpoint.run_record stores


def finish_loggers(trainer: L.Trainer) -> None:
    """Close the run's W&B run, so that the next run in the same process (a pipeline's next stage, a
    sweep's next trial, a notebook) starts its own instead of writing into this one."""
    for lg in trainer.loggers:
        if type(lg).__name__ == "WandbLogger" and trainer.is_global_zero and getattr(lg, "_experiment", None):
            lg.experiment.finish()
