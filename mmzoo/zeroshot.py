"""Zero-shot classification CLI: ``python -m mmzoo.zeroshot ckpt_path=CKPT data=digits``, or a preset with
foreign weights: ``python -m mmzoo.zeroshot model=clip_vit_b32 pretrained=WEIGHTS tokenizer=clip``.

Builds a text classifier from prompt templates x class names, classifies the images of any mmzoo
classification data module, reports top-1 / top-5 / per-class accuracy, and writes ``zeroshot.json`` and
``confusion.png`` to the run directory (``hydra.run.dir``).
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

log = logging.getLogger("mmzoo")


def _load_model(cfg: DictConfig) -> torch.nn.Module:
    from mmzoo import create_model

    if cfg.ckpt_path is not None:
        return create_model(cfg.model_name, pretrained=cfg.ckpt_path)
    if cfg.model_name is None:
        raise ValueError("pass ckpt_path=CKPT (an mmzoo checkpoint) or model=PRESET pretrained=WEIGHTS")
    return create_model(cfg.model_name, pretrained=cfg.pretrained)


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


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate as configured; returns the metrics also written to ``zeroshot.json``."""
    from mmzoo.checkpoint import atomic_write_text
    from mmzoo.data.templates import check_templates, load_templates
    from mmzoo.data.tokenizer import get_tokenizer
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
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("test")
    names = list(getattr(dm, "class_names", []) or [])
    if not names:
        raise ValueError(f"{type(dm).__name__} provides no class_names to build prompts from")
    if cfg.tokenizer is not None:
        tokenizer = get_tokenizer(cfg.tokenizer)
    else:
        tokenizer = getattr(dm, "tokenizer", None) or get_tokenizer("clip")
    if templates is None:
        templates = check_templates(getattr(dm, "zeroshot_templates", None) or DEFAULT_TEMPLATES,
                                    f"the zero-shot templates of {type(dm).__name__}")
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
