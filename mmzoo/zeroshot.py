"""Zero-shot classification CLI: ``python -m mmzoo.zeroshot ckpt_path=CKPT data=digits``, or a preset with
foreign weights: ``python -m mmzoo.zeroshot model=clip_vit_b32 pretrained=WEIGHTS tokenizer=clip``.

Builds a text classifier from prompt templates x class names, classifies the images of any mmzoo
classification data module, reports top-1 / top-5 / per-class accuracy, and writes ``zeroshot.json`` and
``confusion.png`` to the run directory (``hydra.run.dir``).

Images are preprocessed as the model was trained (``model.pretrained_cfg``, stored in the checkpoint): the
data module's ``image_size``, ``in_chans``, ``mean`` and ``std`` are set from it, and the log says so. A value
given on the command line (``data.image_size=64``) is used as given, with a warning naming it and the model's.
A data module without prompt templates of its own gets the model's. ``zeroshot.json`` records the
preprocessing used under ``preprocessing``.
"""
from __future__ import annotations

import inspect
import json
import logging
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger("mmzoo")


def _load_model(cfg: DictConfig) -> torch.nn.Module:
    from mmzoo import create_model

    if cfg.ckpt_path is not None:
        return create_model(cfg.model_name, pretrained=cfg.ckpt_path)
    if cfg.model_name is None:
        raise ValueError("pass ckpt_path=CKPT (an mmzoo checkpoint) or model=PRESET pretrained=WEIGHTS")
    return create_model(cfg.model_name, pretrained=cfg.pretrained)


def command_line_data_keys(overrides: Optional[Sequence[str]]) -> set[str]:
    """The ``data.KEY`` settings given on the command line (``data.image_size=64``, ``+data.mean=[...]``);
    read from Hydra's record of the run when ``overrides`` is None.

    Args:
        overrides: the command-line overrides, or None.
    """
    if overrides is None:
        try:
            from hydra.core.hydra_config import HydraConfig

            overrides = list(HydraConfig.get().overrides.task)
        except Exception:  # composed outside @hydra.main: nothing was given on a command line
            overrides = []
    keys = set()
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if key.startswith("data."):
            keys.add(key[len("data."):])
    return keys


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= 1e-6
    return a == b


def apply_model_preprocessing(data_cfg: DictConfig, model_cfg: Mapping[str, Any], given: set[str]) -> dict[str, Any]:
    """Set the data module's image settings to the model's preprocessing, except those given on the command
    line: each of those that differs from the model's is kept, with a warning naming both values.

    Args:
        data_cfg: the ``data`` config; edited in place.
        model_cfg: the model's ``pretrained_cfg``.
        given: the ``data`` keys given on the command line (:func:`command_line_data_keys`).

    Returns:
        The settings taken from the model.
    """
    from hydra.utils import get_class

    from mmzoo.preprocessing import data_kwargs

    try:
        accepted = inspect.signature(get_class(data_cfg._target_).__init__).parameters
    except Exception:  # an unknown target: instantiate() reports it
        return {}
    applied = {}
    for key, value in data_kwargs(model_cfg).items():
        if key not in accepted:
            continue
        if key in given:
            current = OmegaConf.to_container(data_cfg, resolve=True).get(key)
            if not _same(current, value):
                log.warning("data.%s=%s was given, but the model was trained with %s=%s: using %s as given "
                            "(drop data.%s to use the model's)", key, current, key, value, current, key)
            continue
        with open_dict(data_cfg):
            data_cfg[key] = value
        applied[key] = value
    if applied:
        log.info("preprocessing from the model's pretrained_cfg: %s",
                 ", ".join(f"data.{k}={v}" for k, v in applied.items()))
    return applied


def _used_preprocessing(dm: Any, model_cfg: Mapping[str, Any], given: set[str]) -> dict[str, Any]:
    """The data module's image settings, with a warning for each that differs from the model's although it was
    not given on the command line (a data module whose fixed normalisation cannot be set)."""
    from mmzoo.preprocessing import data_config

    used = {k: v for k, v in data_config(dm).items() if k in ("input_size", "mean", "std")}
    warned_already = {"input_size"} if given & {"image_size", "in_chans"} else set()
    for key, value in used.items():
        if key in given | warned_already:
            continue
        if key in model_cfg and not _same(model_cfg[key], value):
            log.warning("%s normalises images with %s=%s, but the model was trained with %s=%s",
                        type(dm).__name__, key, value, key, model_cfg[key])
    return used


def _save_confusion_png(confusion: torch.Tensor, names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    size = max(4.0, min(0.25 * n + 2, 24.0))
    fig, ax = plt.subplots(figsize=(size, size))
    norm = confusion.float() / confusion.sum(1, keepdim=True).clamp_min(1)
    ax.imshow(norm.numpy(), cmap="viridis", vmin=0, vmax=1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 60:
        ax.set_xticks(range(n), names, rotation=90, fontsize=6)
        ax.set_yticks(range(n), names, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(cfg: DictConfig, overrides: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Evaluate as configured; returns the metrics also written to ``zeroshot.json``.

    Args:
        cfg: the composed ``configs/zeroshot.yaml``.
        overrides: the command-line overrides (None: Hydra's record of them, none outside ``@hydra.main``);
            ``data.KEY`` among them keeps that data setting instead of the model's preprocessing.
    """
    from mmzoo.checkpoint import atomic_write_text
    from mmzoo.data.templates import check_templates, load_templates
    from mmzoo.data.tokenizer import get_tokenizer
    from mmzoo.preprocessing import config_of
    from mmzoo.tasks.zeroshot import DEFAULT_TEMPLATES, build_zeroshot_classifier, zeroshot_evaluate

    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    # a template file is checked before anything is loaded: its errors name the file and line
    templates = load_templates(cfg.templates) if cfg.templates is not None else None
    model = _load_model(cfg).to(device).eval()
    if not hasattr(model, "encode_text"):
        raise ValueError(f"{getattr(model, 'model_name', type(model).__name__)} has no text tower; zero-shot "
                         "classification needs an image-text model (clip_*, coca_*)")
    model_cfg = config_of(model)
    given = command_line_data_keys(overrides)
    apply_model_preprocessing(cfg.data, model_cfg, given)
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("test")
    used = _used_preprocessing(dm, model_cfg, given)
    names = list(getattr(dm, "class_names", []) or [])
    if not names:
        raise ValueError(f"{type(dm).__name__} provides no class_names to build prompts from")
    if cfg.tokenizer is not None:
        tokenizer = get_tokenizer(cfg.tokenizer)
    else:
        tokenizer = getattr(dm, "tokenizer", None) or get_tokenizer("clip")
    if templates is None:  # the data module's, else those the model was evaluated with, else mmzoo's
        if getattr(dm, "zeroshot_templates", None):
            templates = check_templates(dm.zeroshot_templates, f"the zero-shot templates of {type(dm).__name__}")
        elif model_cfg.get("zeroshot_templates"):
            templates = check_templates(model_cfg["zeroshot_templates"], "the zero-shot templates of the model's "
                                        "pretrained_cfg")
            log.info("prompt templates: the %d the model was evaluated with (its pretrained_cfg)", len(templates))
        else:
            templates = check_templates(DEFAULT_TEMPLATES, "mmzoo's default zero-shot templates")
    if hasattr(dm, "zeroshot_dataloader"):
        loader = dm.zeroshot_dataloader(cfg.split)
    else:
        loader = dm.test_dataloader() if cfg.split == "test" else dm.val_dataloader()
    context_length = model.cfg.text.context_length
    if tokenizer.vocab_size != model.cfg.text.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model's text tower expects "
                         f"{model.cfg.text.vocab_size}: pass the tokenizer the model was trained with "
                         "(tokenizer=clip, tokenizer=PATH.json, or the data module's, e.g. data.tokenizer=bpe)")
    classifier = build_zeroshot_classifier(model, tokenizer, names, templates, context_length)
    res = zeroshot_evaluate(model, classifier, loader, num_classes=len(names))

    metrics = {k: v for k, v in res.items() if k not in ("per_class", "confusion")}
    metrics["per_class"] = dict(zip(names, res["per_class"]))
    metrics["num_classes"] = len(names)
    metrics["chance"] = 1.0 / len(names)
    metrics["templates"] = templates
    metrics["split"] = cfg.split
    metrics["preprocessing"] = used
    atomic_write_text(out_dir / "zeroshot.json", json.dumps(metrics, indent=2) + "\n")
    _save_confusion_png(res["confusion"], names, out_dir / "confusion.png")
    summary = {k: metrics[k] for k in ("top1", "top5", "top1_seen", "top1_heldout", "chance", "num_samples")
               if k in metrics}
    print(json.dumps(summary, indent=2))
    log.info("wrote %s and %s", out_dir / "zeroshot.json", out_dir / "confusion.png")
    return metrics


def preset_alias(argv: Sequence[str]) -> list[str]:
    """``model=NAME`` names a preset on this command line, but ``model`` is also the model config group of
    ``configs/`` (train.py's), so Hydra would look for ``configs/model/NAME.yaml``: it becomes the plain
    key ``model_name=NAME`` before Hydra parses the arguments."""
    return [f"model_name={a[len('model='):]}" if a.startswith("model=") else a for a in argv]


# an absolute path: Hydra resolves a relative one from the calling module, which differs between
# `python -m mmzoo.zeroshot`, the `mmzoo-zeroshot` console script and a call from Python
_CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


@hydra.main(version_base="1.3", config_path=_CONFIG_DIR, config_name="zeroshot")
def _hydra_main(cfg: DictConfig) -> None:
    run(cfg)


def main() -> None:
    """``python -m mmzoo.zeroshot`` / ``mmzoo-zeroshot``."""
    sys.argv[1:] = preset_alias(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
