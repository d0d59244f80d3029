"""Evaluate a run's checkpoint without training: ``python eval.py ckpt_path=RUN/checkpoints/last.ckpt``.

The checkpoint rebuilds everything it was trained with: the model from its ``mmzoo`` entry
(:func:`mmzoo.create_model` with ``pretrained=CKPT``), the task from its class (``mmzoo_task``) and
Lightning's ``hyper_parameters``, every task weight from its ``state_dict``, and, unless ``data=`` is given, the
data module from the run's ``data`` config (``mmzoo_run``); an adapted model (``peft=lora`` ...) gets the same
adaptation (``mmzoo_task.peft``). ``trainer.test`` (``split=test``) or
``trainer.validate`` (``split=val``) then runs with no logger and no checkpointing; the metrics go to
``RUN/metrics.json`` (``hydra.run.dir=RUN``, an atomic write) and are printed.

``+data.KEY=VALUE`` with no ``data=`` changes one setting of the run's data config (``+data.batch_size=256``).
With ``data=NAME``, the data module's image settings (size, channels, mean/std) are set from the model's
preprocessing (``pretrained_cfg``) as in :mod:`mmzoo.zeroshot`; a ``data.KEY`` given on the command line is
kept, with a warning when it differs from the model's.
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import hydra
import lightning as L
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from . import checkpoint as ckpt_lib

log = logging.getLogger("mmzoo")

SPLITS = ("test", "val")

# as in mmzoo.training: BaseTask.on_after_batch_transfer only restores a resumed run's logger step
warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer` in `LightningModule`.*")


def read_eval_checkpoint(path: Any) -> dict[str, Any]:
    """Read a checkpoint written by ``train.py`` for evaluation, or raise saying what the file is.

    Weights-only Lightning checkpoints (``save_weights_only``, a run's best-epoch files) are accepted: evaluation
    needs the weights, the model entry and the task's hyperparameters, not the optimizer state.

    Args:
        path: the checkpoint file (``RUN/checkpoints/last.ckpt``).

    Raises:
        FileNotFoundError: nothing at ``path``.
        CheckpointError: a folder, a safetensors or exported weights file, a bare state dict, a Lightning
            checkpoint not written by mmzoo, or a damaged file.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"ckpt_path={p} does not exist; pass a checkpoint written by train.py such as "
                                "RUN/checkpoints/last.ckpt")
    if p.is_dir():
        raise ckpt_lib.CheckpointError(f"ckpt_path={p} is a folder; pass a checkpoint file such as "
                                       "RUN/checkpoints/last.ckpt")
    weights_only = ("it holds model weights only, not the task and data it was trained with; evaluate a run's "
                    "RUN/checkpoints/last.ckpt, or zero-shot / load the weights with mmzoo.create_model")
    if ckpt_lib.is_safetensors(p):
        raise ckpt_lib.CheckpointError(f"ckpt_path={p} is a safetensors file: {weights_only}")
    obj = ckpt_lib.load(p, mmap=True)
    if not isinstance(obj, dict):
        raise ckpt_lib.CheckpointError(f"ckpt_path={p} holds a {type(obj).__name__}, not a training checkpoint")
    if ckpt_lib.LIGHTNING_VERSION_KEY not in obj or not isinstance(obj.get("state_dict"), dict):
        if ckpt_lib.MMZOO_KEY in obj:
            what = "an mmzoo model file (weights and config)"
        else:
            n = sum(isinstance(v, torch.Tensor) for v in obj.values())
            what = f"a bare state dict of {n} tensors" if n else f"a dict with keys {sorted(map(str, obj))[:8]}"
        raise ckpt_lib.CheckpointError(f"ckpt_path={p} is not a training checkpoint written by train.py: it is "
                                       f"{what}; {weights_only}")
    missing = [k for k in (ckpt_lib.MMZOO_KEY, "hyper_parameters") if k not in obj]
    if missing:
        raise ckpt_lib.CheckpointError(f"ckpt_path={p} is a Lightning checkpoint without {missing}: not written "
                                       "by mmzoo's train.py, so its model and task cannot be rebuilt")
    return obj


def task_class(obj: dict[str, Any], given: Optional[str], path: Any) -> type:
    """The task class: ``given`` (``task_class=module.Class``), else the checkpoint's ``mmzoo_task``.

    Args:
        obj: the checkpoint (:func:`read_eval_checkpoint`).
        given: a class path from the command line, or None.
        path: the checkpoint's path, for messages.
    """
    name = given or (obj.get(ckpt_lib.TASK_KEY) or {}).get("class")
    if not name:
        raise ckpt_lib.CheckpointError(
            f"ckpt_path={path} does not name its task class (no '{ckpt_lib.TASK_KEY}' entry: written by an older "
            "mmzoo); pass the task's _target_ from the run's config, e.g. task_class=mmzoo.tasks.ClassificationTask")
    try:
        cls = get_class(name)
    except Exception as e:
        raise ValueError(f"task class {name!r} cannot be imported ({e}); pass task_class=module.Class") from None
    if not (isinstance(cls, type) and issubclass(cls, L.LightningModule)):
        raise ValueError(f"task class {name!r} is not a LightningModule")
    return cls


def build_model(obj: dict[str, Any], path: Any) -> torch.nn.Module:
    """The checkpoint's model: :func:`mmzoo.create_model` with ``pretrained=path``, or, for an adapted model
    (LoRA, adapters, prompts ...: ``mmzoo_task.peft``), the base built from the checkpoint's config with the
    same adaptation applied (its weights come with the task's ``state_dict``).

    Args:
        obj: the checkpoint (:func:`read_eval_checkpoint`).
        path: the checkpoint file.
    """
    from .models import create_model

    peft = (obj.get(ckpt_lib.TASK_KEY) or {}).get("peft")
    if not peft or peft.get("method", "none") == "none":
        return create_model(pretrained=path)
    from .models._registry import build_model as build_from_config, config_from_checkpoint
    from .peft import apply_peft
    from .preprocessing import pretrained_cfg

    ckpt = ckpt_lib.read_checkpoint(path)
    model = build_from_config(config_from_checkpoint(ckpt))
    model.model_name = ckpt.model_name
    model.pretrained_cfg = pretrained_cfg(model, ckpt.pretrained_cfg)
    apply_peft(model, peft)
    log.info("model: %s with %s adaptation, from %s", ckpt.model_name, peft["method"], path)
    return model


def build_task(obj: dict[str, Any], path: Any, cls: type) -> L.LightningModule:
    """The task as it was trained: model from the checkpoint (:func:`build_model`), task from its
    ``hyper_parameters``, and every task weight (heads, losses with parameters) loaded strictly from
    ``state_dict``.

    Args:
        obj: the checkpoint (:func:`read_eval_checkpoint`).
        path: the checkpoint file.
        cls: the task class (:func:`task_class`).
    """
    model = build_model(obj, path)
    hparams = dict(obj["hyper_parameters"])
    try:
        task = cls(model=model, **hparams)
    except TypeError as e:
        raise ValueError(f"{cls.__name__} cannot be built from the hyper_parameters of {path} "
                         f"({sorted(hparams)}): {e}") from None
    task.load_state_dict(obj["state_dict"], strict=True)
    return task


def data_config(cfg: DictConfig, obj: dict[str, Any], path: Any) -> tuple[dict[str, Any], bool]:
    """The data config to evaluate on and whether it was chosen with ``data=`` (else the run's own).

    Args:
        cfg: the composed ``configs/eval.yaml``.
        obj: the checkpoint.
        path: the checkpoint file, for messages.
    """
    given = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") is not None else {}
    if "_target_" in given:
        return given, True
    stored = (obj.get(ckpt_lib.RUN_KEY) or {}).get("data")
    if not isinstance(stored, dict) or "_target_" not in stored:
        raise ValueError(f"ckpt_path={path} does not hold the data config of its run; pass data=NAME "
                         "(configs/data/) to evaluate on")
    return {**stored, **given}, False


def evaluate(cfg: DictConfig, overrides: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Evaluate as configured; returns the metrics also written to ``metrics.json``.

    Args:
        cfg: the composed ``configs/eval.yaml``.
        overrides: the command-line overrides (None: Hydra's record of them); with ``data=NAME``, a
            ``data.KEY`` among them keeps that setting instead of the model's preprocessing.
    """
    from .preprocessing import config_of
    from .zeroshot import apply_model_preprocessing, command_line_data_keys

    if not cfg.ckpt_path:  # None or an empty value (ckpt_path=$UNSET_VARIABLE)
        raise ValueError("pass ckpt_path=RUN/checkpoints/last.ckpt (a checkpoint written by train.py)")
    if cfg.split not in SPLITS:
        raise ValueError(f"split={cfg.split!r} is invalid; valid choices: {list(SPLITS)}")
    path = Path(cfg.ckpt_path)
    obj = read_eval_checkpoint(path)
    cls = task_class(obj, cfg.get("task_class"), path)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    task = build_task(obj, path, cls)
    data, chosen = data_config(cfg, obj, path)
    del obj
    if chosen:
        data_cfg = OmegaConf.create(data)
        apply_model_preprocessing(data_cfg, config_of(task.model), command_line_data_keys(overrides))
        data = OmegaConf.to_container(data_cfg)
    else:
        log.info("data: the run's own (%s, from the checkpoint)", data["_target_"])
    dm = instantiate(data, _convert_="all")

    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # nothing written but metrics.json: no logger, no checkpoint, no callbacks of the training config
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, callbacks=[])
    run = trainer.test if cfg.split == "test" else trainer.validate
    results = run(task, datamodule=dm)
    metrics: dict[str, Any] = {k: float(v) for k, v in (results[0] if results else {}).items()}
    metrics.update({"ckpt_path": str(path), "split": cfg.split, "data": data["_target_"],
                    "task": f"{cls.__module__}.{cls.__qualname__}"})
    if trainer.is_global_zero:
        ckpt_lib.atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        print(json.dumps(metrics, indent=2, sort_keys=True))
        log.info("wrote %s", out_dir / "metrics.json")
    return metrics


# an absolute path: Hydra resolves a relative one from the calling module
_CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


@hydra.main(version_base="1.3", config_path=_CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    """``python -m mmzoo.evaluation ckpt_path=CKPT`` (same as ``python eval.py``)."""
    evaluate(cfg)


if __name__ == "__main__":
    main()
