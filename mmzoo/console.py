"""A clean console for ``python train.py``: each log line once, a model summary without Lightning's
FLOPs column (it counts only with an ``example_input_array`` and otherwise prints zeros), and a closing
summary of where the run's outputs are.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelSummary as _LightningModelSummary
from lightning.pytorch.utilities.model_summary.model_summary import get_human_readable_count

log = logging.getLogger("mmzoo")

_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")


def single_log_lines() -> None:
    """Drop Lightning's own console handlers when the root logger already prints (Hydra configures it:
    console and the run's log file); otherwise each Lightning INFO line appears twice, once per handler."""
    if not logging.getLogger().handlers:
        return
    for name in _LIGHTNING_LOGGERS:
        lg = logging.getLogger(name)
        for handler in list(lg.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                lg.removeHandler(handler)
        lg.propagate = True


class ModelSummary(_LightningModelSummary):
    """The model's top-level modules with their parameter counts and train/eval mode, without the FLOPs
    column (``mmzoo.flops`` counts FLOPs per sample where it matters: ``benchmarks/``)."""

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int = 0,
                  **summarize_kwargs: Any) -> None:
        """Log the table (the arguments are those Lightning's ``ModelSummary`` passes).

        Args:
            summary_data: ``(column name, values)`` pairs.
            total_parameters: all parameters.
            trainable_parameters: parameters with ``requires_grad``.
            model_size: estimated size in MB.
            total_training_modes: modules in train / eval mode.
            total_flops: Lightning's FLOPs count; not shown.
            **summarize_kwargs: unused.
        """
        columns = [(name, values) for name, values in summary_data if name in ("Name", "Type", "Params", "Mode")]
        widths = [max(len(name), *(len(v) for v in values)) if values else len(name) for name, values in columns]
        lines = ["  ".join(name.ljust(w) for (name, _), w in zip(columns, widths))]
        for row in zip(*(values for _, values in columns)):
            lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths)))
        frozen = total_parameters - trainable_parameters
        lines.append(f"parameters: {get_human_readable_count(trainable_parameters).strip()} trainable, "
                     f"{get_human_readable_count(frozen).strip()} frozen, {get_human_readable_count(total_parameters).strip()} "
                     f"total ({model_size:.2f} MB); modules in train mode {total_training_modes.get('train', 0)}, "
                     f"eval mode {total_training_modes.get('eval', 0)}")
        log.info("model summary\n%s", "\n".join(lines))


def outputs_summary(trainer: L.Trainer, out_dir: Path) -> str:
    """Where a finished run's outputs are: checkpoints, metrics, logs (CSV, TensorBoard, W&B), profiler
    reports.

    Args:
        trainer: the trainer that ran.
        out_dir: the run directory.
    """
    out_dir = Path(out_dir)
    lines = [f"run directory: {out_dir}"]
    ckpt_dir = out_dir / "checkpoints"
    if ckpt_dir.is_dir():
        ckpts = sorted(p.name for p in ckpt_dir.iterdir() if p.suffix in (".ckpt", ".pt", ".safetensors"))
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
        lines.append(f"  checkpoints: {ckpt_dir} ({', '.join(ckpts) or 'none'})")
        if best:
            lines.append(f"  best checkpoint: {best}")
    for lg in trainer.loggers:
        kind = type(lg).__name__
        where = getattr(lg, "log_dir", None) or getattr(lg, "save_dir", None)
        if kind == "WandbLogger":
            run = getattr(lg, "_experiment", None)
            where = getattr(run, "dir", None) or where
            lines.append(f"  W&B: {where} (offline runs: `wandb sync {out_dir}/wandb/offline-run-*`)")
        elif where:
            lines.append(f"  {kind.removesuffix('Logger')} log: {where}")
    if (out_dir / "metrics.json").is_file():
        lines.append(f"  final metrics: {out_dir / 'metrics.json'}")
    reports = sorted(out_dir.glob("*profiler*.txt"))
    if reports:
        lines.append(f"  profiler reports: {', '.join(str(p) for p in reports)}")
    lines.append(f"  curves: `mmzoo plot {out_dir}`")
    return "\n".join(lines)
