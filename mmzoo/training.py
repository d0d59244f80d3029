"""The training run behind ``train.py``: build data, model, task, trainer from a Hydra config, fit,
test, and write ``metrics.json``.

Run contract (relied on by scripts and later tools): the run directory is ``cfg.paths.output_dir``
(``hydra.run.dir=DIR``); checkpoints go to ``DIR/checkpoints/`` with ``last.ckpt`` always present after
a completed fit; final metrics are written to ``DIR/metrics.json`` and printed.
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from omegaconf import DictConfig, OmegaConf

from . import checkpoint as ckpt_lib
from . import watchdog
from .loggers import ContinueCSVHistory, read_csv_history
from .models import create_model
from . import console, run_info
from .models.speed import apply_speed_options
from .peft import apply_peft, save_adaptation
from .tasks.checkpoint_io import AtomicCheckpointIO, RunRecord

log = logging.getLogger("mmzoo")

# mmzoo data modules resume mid-epoch through their own state_dict (see mmzoo.data.base); Lightning only
# checks the DataLoader object and would warn on every mid-epoch resume
warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
# BaseTask.on_after_batch_transfer only restores the logger step of a resumed run (mmzoo data modules
# define no transfer hooks of their own); Lightning warns whenever both a task and a data module exist
warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer` in `LightningModule`.*")

AUTO = "auto"  # config value filled from the data module (num_classes, img_size, in_chans, class_names)
TEST_CKPT_CHOICES = ("best", "last")


def data_hints(dm: Any) -> dict[str, Any]:
    """What a data module tells models and tasks about its data (config key -> value)."""
    hints = {}
    for key, attr in (("num_classes", "num_classes"), ("img_size", "image_size"), ("in_chans", "in_chans"),
                      ("class_names", "class_names"), ("context_length", "context_length")):
        if hasattr(dm, attr):
            value = getattr(dm, attr)
            hints[key] = list(value) if isinstance(value, (tuple, list)) else value
    tokenizer = getattr(dm, "tokenizer", None)
    if tokenizer is not None:
        hints["vocab_size"] = tokenizer.vocab_size
    return hints


def resolve_auto(node: Any, hints: dict[str, Any], where: str) -> Any:
    """Replace every ``auto`` value of a (nested) config dict by the data module's value of that key."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if value == AUTO:
                if key not in hints:
                    raise ValueError(f"{where}.{key} is 'auto' but the data module provides only "
                                     f"{sorted(hints)}; set {where}.{key} explicitly")
                value = hints[key]
            else:
                value = resolve_auto(value, hints, f"{where}.{key}")
            out[key] = value
        return out
    return node


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate each entry of a ``name: {_target_: ...}`` mapping (callbacks, loggers)."""
    if not group:
        return []
    return [instantiate(c) for c in group.values() if c is not None and "_target_" in c]


def _atomic_write_json(obj: dict[str, Any], path: Path) -> None:
    ckpt_lib.atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _prepare_resume(cfg: DictConfig, trainer: L.Trainer, resume: dict[str, Any] | None, record: dict[str, Any]) -> None:
    """Before fitting (rank 0): warn when a resumed run's settings differ from the checkpoint's, and remove what
    an interrupted run left in the checkpoint folders (temporary files, untracked top-k checkpoints)."""
    if not trainer.is_global_zero:
        return
    ckpt_path = cfg.get("ckpt_path")
    stored = (resume or {}).get(ckpt_lib.RUN_KEY)
    if isinstance(stored, dict):
        diffs = ckpt_lib.run_config_differences(stored, record)
        if diffs:
            log.warning("resuming from %s with other settings than it was written with (%s); the run will not "
                        "continue the interrupted one exactly", ckpt_path, "; ".join(diffs))
    folders = {Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)}
    for folder in sorted(folders | {Path(cfg.paths.output_dir) / "checkpoints"}):
        ckpt_lib.remove_stale_files(folder, trainer.checkpoint_callbacks, resume, ckpt_path)


def describe_parameters(model: torch.nn.Module) -> str:
    total = sum(p.numel() for p in model.parameters())
    trainable_params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in trainable_params)
    # AdamW keeps two moments per trainable parameter, in the parameter's dtype
    opt_bytes = 2 * sum(p.numel() * p.element_size() for p in trainable_params)
    return (f"parameters: {trainable:,} trainable / {total:,} total ({100.0 * trainable / max(total, 1):.2f}%); "
            f"optimizer state {opt_bytes / 2**20:.2f} MiB (AdamW, 2 moments per trainable parameter)")


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule]:
    """Data module and task (holding the model) from a composed config."""
    dm = instantiate(cfg.data, _convert_="all")
    hints = data_hints(dm)
    model_kwargs = resolve_auto(OmegaConf.to_container(cfg.model, resolve=True), hints, "model")
    name = model_kwargs.pop("name")
    pretrained = model_kwargs.pop("pretrained", None)
    # speed options of every model (mmzoo/models/speed.py), not fields of its config dataclass
    speed = {key: model_kwargs.pop(key) for key in ("compile", "grad_checkpointing") if key in model_kwargs}
    finetune_from = (cfg.get("finetune") or {}).get("from")
    if finetune_from is not None:
        if not Path(finetune_from).exists():
            raise FileNotFoundError(f"finetune.from={finetune_from} does not exist; pass a checkpoint file")
        pretrained = finetune_from
    model = create_model(name, pretrained=pretrained, **model_kwargs)
    if cfg.get("peft") is not None:
        apply_peft(model, OmegaConf.to_container(cfg.peft, resolve=True))
        # what an adaptation checkpoint needs to rebuild the frozen base (see mmzoo.peft.save_adaptation)
        model.peft_base = {"model_name": name, "pretrained": None if pretrained is None else str(pretrained),
                           "overrides": model_kwargs, "seed": cfg.get("seed")}
    model = apply_speed_options(model, **speed)
    task_cfg = resolve_auto(OmegaConf.to_container(cfg.task, resolve=True), hints, "task")
    task = instantiate(task_cfg, model=model, _convert_="all")
    # the values actually used, for the loggers (mmzoo.run_info.logged_config)
    task.resolved_config = {"model": {**model_kwargs, "pretrained": pretrained}, "task": task_cfg}
    return dm, task


def optimized_value(metrics: dict[str, Any], name: str | None) -> float | None:
    """The final value of the metric a sweep optimises (``optimized_metric``), or None without a sweep.

    Args:
        metrics: the run's final metrics (what :func:`train` returns).
        name: the metric's key, e.g. ``val/acc1``.
    """
    if not name:
        return None
    if name not in metrics:
        numeric = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))
        raise KeyError(f"optimized_metric={name} is not among the run's final metrics; choose one of {numeric}")
    return float(metrics[name])


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and test) as configured; returns the final metrics also written to ``metrics.json``.
    A config with ``pipeline.stages`` runs its stages first, each an ordinary run (:mod:`mmzoo.pipeline`)."""
    if (cfg.get("pipeline") or {}).get("stages"):
        from .pipeline import run_pipeline

        return run_pipeline(cfg)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # every rank ends with its launcher, and a stop request ends a rank stuck in a collective
    watchdog.install(cfg.get("shutdown_grace_s", 30.0))
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    if cfg.get("test_ckpt", "best") not in TEST_CKPT_CHOICES:
        raise ValueError(f"test_ckpt={cfg.test_ckpt!r} is invalid; valid choices: {list(TEST_CKPT_CHOICES)} (the "
                         "best validation checkpoint or the final weights)")
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is not None and Path(ckpt_path).is_dir():
        raise ckpt_lib.CheckpointError(
            f"ckpt_path={ckpt_path} is a folder: a run resumes from a checkpoint file such as "
            "DIR/checkpoints/last.ckpt (a sharded trainer=fsdp folder: python -m mmzoo.distributed consolidate "
            "FOLDER OUT.ckpt makes one)")
    if ckpt_path is not None and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist; pass a checkpoint file such as "
                                "DIR/checkpoints/last.ckpt")
    # checked before anything is built; tensors memory-mapped, not read
    resume = ckpt_lib.read_training_checkpoint(ckpt_path, mmap=True) if ckpt_path is not None else None

    console.single_log_lines()
    run_info.prepare(cfg)
    dm, task = build(cfg)
    callbacks = _instantiate_group(cfg.get("callbacks")) + [run_info.RunInfo(cfg.run_name)]
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if cfg.trainer.get("enable_model_summary", True) and not any(isinstance(c, ModelSummary) for c in callbacks):
        callbacks.append(console.ModelSummary(max_depth=1))
    record = RunRecord({})
    loggers = _instantiate_group(cfg.get("logger"))
    # a resumed run continues the CSV history (read now: Lightning's CSV writer deletes the file it opens)
    history = read_csv_history(loggers, out_dir, Path(ckpt_path) if ckpt_path is not None else None)
    if history:
        callbacks.append(ContinueCSVHistory(history))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=[*callbacks, record], logger=loggers or False,
                                     plugins=[AtomicCheckpointIO()])
    record.record = ckpt_lib.run_record(cfg.get("seed"), OmegaConf.to_container(cfg.data, resolve=True),
                                        trainer.world_size, trainer.accumulate_grad_batches)
    _prepare_resume(cfg, trainer, resume, record.record)
    del resume
    resolved = run_info.logged_config(cfg, task.model, task.resolved_config["model"], task.resolved_config["task"])
    for lg in trainer.loggers:
        lg.log_hyperparams(resolved)
    if trainer.is_global_zero:
        log.info("model %s: %s", task.model.model_name, describe_parameters(task.model))
        log.info("run %s, directory: %s", cfg.run_name, out_dir)

    with watchdog.stopped_is_failure():
        trainer.fit(task, datamodule=dm, ckpt_path=ckpt_path)
    if trainer.interrupted:
        raise KeyboardInterrupt("training was interrupted; the last checkpoint written is kept")
    trainer.save_checkpoint(out_dir / "checkpoints" / "last.ckpt", weights_only=False)  # full state: exact resume
    if (cfg.get("peft") or {}).get("method", "none") != "none" and trainer.is_global_zero:
        # the small checkpoint of the final weights: trainable parameters + a reference to the base
        path = save_adaptation(task.model, out_dir / "checkpoints" / "adapter.pt", task.model.peft_base)
        log.info("adaptation checkpoint (trainable parameters only): %s", path)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    if cfg.get("test", True) and getattr(dm, "test_dataloader", None) is not None:
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
        use_best = cfg.get("test_ckpt", "best") == "best" and best
        with watchdog.stopped_is_failure():
            results = trainer.test(task, datamodule=dm, ckpt_path=best if use_best else None, weights_only=True)
        if results:
            metrics.update({k: float(v) for k, v in results[0].items()})
        metrics["test_checkpoint"] = best if use_best else "last"  # type: ignore[assignment]
    metrics["global_step"] = trainer.global_step
    run_info.finish_loggers(trainer)
    if trainer.is_global_zero:
        _atomic_write_json(metrics, out_dir / "metrics.json")
        print(json.dumps(metrics, indent=2, sort_keys=True))
        log.info("%s", console.outputs_summary(trainer, out_dir))
    return metrics
