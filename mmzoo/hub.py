"""A model as a folder: ``model.save_pretrained(DIR)`` / ``mmzoo.from_pretrained(DIR)``.

The folder holds what model hubs expect::

    DIR/
      config.json                # arch, preset name, model config, num_classes, pretrained_cfg (timm's layout)
      model.safetensors          # the weights; its metadata holds the same mmzoo entry, so
                                 #   create_model(pretrained="DIR/model.safetensors") works too
      preprocessor_config.json   # the preprocessing the model expects (mmzoo.preprocessing)
      README.md                  # a model card: model details, intended uses, limitations,
                                 #   training details, evaluation, how to load

:func:`save_checkpoint_pretrained` writes the folder from a training checkpoint, with the run's data
config and settings (``mmzoo_run``) and its ``metrics.json`` in the card.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch.nn as nn

from .checkpoint import MMZOO_KEY, RUN_KEY, atomic_write_bytes, atomic_write_text, load, model_metadata

PathLike = Union[str, os.PathLike]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PREPROCESSOR_NAME = "preprocessor_config.json"
CARD_NAME = "README.md"


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def model_card(model: nn.Module, pretrained_cfg: Mapping[str, Any], metrics: Optional[Mapping[str, Any]] = None,
               training: Optional[Mapping[str, Any]] = None, source: Optional[str] = None) -> str:
    """A model card (README.md) in the sections model hubs use.

    Args:
        model: the model the card describes.
        pretrained_cfg: its preprocessing (:mod:`mmzoo.preprocessing`).
        metrics: the run's final metrics (``metrics.json``), if known.
        training: the run's settings (the checkpoint's ``mmzoo_run``: seed, data config, world size ...), if known.
        source: the checkpoint the folder was written from, if any.
    """
    name = getattr(model, "model_name", None) or model.arch_name
    pc = dict(pretrained_cfg)
    lines = ["---", "library_name: mmzoo", "tags:", f"- {model.arch_name}", "- mmzoo", "---", "",
             f"# {name}", "", "## Model details", "",
             f"- Architecture: `{model.arch_name}` (mmzoo preset `{name}`), {_num_params(model):,} parameters.",
             "- Implementation: mmzoo, from-scratch PyTorch; the full model config is in `config.json`."]
    if source:
        lines.append(f"- Written from the checkpoint `{source}`.")
    if "input_size" in pc:
        lines.append(f"- Input: images of {pc['input_size'][1]}x{pc['input_size'][2]} pixels, {pc['input_size'][0]} "
                     f"channel(s), normalised with mean {pc.get('mean')} and std {pc.get('std')} "
                     f"({pc.get('interpolation', 'bilinear')} resize of the shorter side, centre crop).")
    for key, what in (("num_frames", "frames per clip"), ("sample_rate", "audio samples per second"),
                      ("num_points", "points per cloud"), ("context_length", "text tokens per sequence")):
        if key in pc:
            lines.append(f"- {what.capitalize()}: {pc[key]}.")
    if pc.get("class_names"):
        shown = ", ".join(pc["class_names"][:20]) + (" ..." if len(pc["class_names"]) > 20 else "")
        lines.append(f"- Classes ({len(pc['class_names'])}): {shown}.")
    lines += ["", "## Intended uses", "",
              "Research and teaching: a reference for the architecture, a starting point for fine-tuning "
              "(`python train.py finetune.from=...`) and for comparing training recipes."]
    if hasattr(model, "encode_text"):
        lines.append("Zero-shot classification of images by prompts: `python -m mmzoo.zeroshot ckpt_path=... data=...`.")
    lines += ["", "## Limitations", "",
              "- Trained on the data named under Training details only; it has not been evaluated on other data and "
              "should not be used for decisions about people.",
              "- Inputs must be preprocessed as in `preprocessor_config.json`; other sizes or normalisations give "
              "other results.",
              "", "## Training details", ""]
    if pc.get("data_module"):
        lines.append(f"- Data: `{pc['data_module']}`.")
    if training:
        for key in ("seed", "world_size", "accumulate_grad_batches"):
            if key in training:
                lines.append(f"- {key}: {training[key]}")
        if isinstance(training.get("data"), Mapping):
            data = {k: v for k, v in training["data"].items() if k != "_target_"}
            lines.append(f"- Data config: `{json.dumps(data, sort_keys=True)}`")
    if metrics:
        for key in ("global_step", "epoch", "train_time_s", "hardware"):
            if key in metrics:
                lines.append(f"- {key}: {metrics[key]}")
    if not training and not metrics:
        lines.append("- Not recorded (the folder was written from a model, not from a training run).")
    lines += ["", "## Evaluation", ""]
    scores = {k: v for k, v in (metrics or {}).items() if "/" in k and isinstance(v, (int, float))}
    if scores:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in sorted(scores.items())]
    else:
        lines.append("No evaluation recorded.")
    lines += ["", "## How to load", "", "```python", "import mmzoo", "",
              "model = mmzoo.from_pretrained(\"PATH/TO/THIS/FOLDER\").eval()",
              "model.pretrained_cfg  # the preprocessing above", "```", ""]
    return "\n".join(lines)


def save_pretrained(model: nn.Module, folder: PathLike, *, metrics: Optional[Mapping[str, Any]] = None,
                    training: Optional[Mapping[str, Any]] = None, source: Optional[str] = None) -> Path:
    """Write ``model`` as a folder (config.json, model.safetensors, preprocessor_config.json, README.md).

    Args:
        model: a model built by ``mmzoo.create_model``.
        folder: the folder to write (created; files in it are replaced atomically).
        metrics: the run's metrics for the model card.
        training: the run's settings for the model card.
        source: the checkpoint the model comes from, for the model card.

    Returns:
        ``folder`` as a ``Path``.
    """
    from safetensors.torch import save

    from .preprocessing import config_of

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"save_pretrained: {folder} is a file; pass a folder to write into")
    pc = config_of(model)
    meta = model_metadata(model, pc)
    config = {"architecture": meta["model_name"] or meta["arch"], "num_classes": pc.get("num_classes"), **meta}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(folder / WEIGHTS_NAME, save(tensors, metadata={MMZOO_KEY: json.dumps(meta)}))
    atomic_write_text(folder / CONFIG_NAME, _json(config))
    atomic_write_text(folder / PREPROCESSOR_NAME, _json(pc))
    atomic_write_text(folder / CARD_NAME, model_card(model, pc, metrics, training, source))
    return folder


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a {type(value).__name__}, not the JSON object mmzoo writes")
    return value


def from_pretrained(folder: PathLike, **overrides: Any) -> nn.Module:
    """Build the model a :func:`save_pretrained` folder holds, weights loaded and ``pretrained_cfg`` set.

    Args:
        folder: the folder.
        **overrides: config fields to change, as for ``mmzoo.create_model`` (e.g. ``num_classes=5``).

    Raises:
        FileNotFoundError: the folder or one of its files is missing (the message names it).
        ValueError: ``config.json`` describes another model than the weights' metadata.
    """
    from .models import create_model

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"from_pretrained: {folder} is not a folder (write one with model.save_pretrained)")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"from_pretrained: {folder} has no {name} (a save_pretrained folder holds "
                                    f"{CONFIG_NAME}, {WEIGHTS_NAME}, {PREPROCESSOR_NAME}, {CARD_NAME})")
    config = _read_json(folder / CONFIG_NAME)
    model = create_model(pretrained=folder / WEIGHTS_NAME, **overrides)
    if config.get("arch") != model.arch_name or (not overrides and config.get("config") != model_metadata(model)["config"]):
        raise ValueError(f"{folder / CONFIG_NAME} describes a {config.get('arch')!r} model other than the one in "
                         f"{folder / WEIGHTS_NAME} ({model.arch_name!r}); the folder was edited or mixed up")
    if (folder / PREPROCESSOR_NAME).is_file():
        from .preprocessing import pretrained_cfg

        model.pretrained_cfg = pretrained_cfg(model, _read_json(folder / PREPROCESSOR_NAME))
    return model


def save_checkpoint_pretrained(ckpt_path: PathLike, folder: PathLike) -> Path:
    """Write a training checkpoint as a :func:`save_pretrained` folder; the model card gets the run's settings
    (``mmzoo_run``) and its ``metrics.json`` (``DIR/metrics.json`` beside ``DIR/checkpoints/``) when present.

    Args:
        ckpt_path: a checkpoint written by ``train.py`` (or any file ``mmzoo.create_model`` reads).
        folder: the folder to write.
    """
    from .models import create_model

    ckpt_path = Path(ckpt_path)
    model = create_model(pretrained=ckpt_path)
    training = None
    if ckpt_path.is_file() and ckpt_path.suffix != ".safetensors":
        obj = load(ckpt_path, mmap=True)
        run = obj.get(RUN_KEY) if isinstance(obj, dict) else None
        training = dict(run) if isinstance(run, dict) else None
    metrics = None
    metrics_file = ckpt_path.resolve().parent.parent / "metrics.json"
    if metrics_file.is_file():
        try:
            metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            metrics = None
    return save_pretrained(model, folder, metrics=metrics, training=training, source=str(ckpt_path))


__all__ = ["save_pretrained", "from_pretrained", "save_checkpoint_pretrained", "model_card", "CONFIG_NAME",
           "WEIGHTS_NAME", "PREPROCESSOR_NAME", "CARD_NAME"]
