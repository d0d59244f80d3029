"""Zero-shot classification with an image-text model: class prompts -> text classifier -> accuracy.

Shared by the contrastive task (evaluated every validation epoch) and the ``mmzoo.zeroshot`` CLI.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F

# template files are read and checked in one place (errors name the file and line); importable from here too
from ..data.templates import load_templates  # noqa: F401

#: default prompt templates (a small ensemble in the spirit of CLIP's ImageNet prompts)
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a drawing of a {}.",
    "a {}.",
)


@torch.no_grad()
def build_zeroshot_classifier(model: torch.nn.Module, tokenizer: Callable, class_names: Sequence[str],
                              templates: Sequence[str] = DEFAULT_TEMPLATES,
                              context_length: Optional[int] = None) -> torch.Tensor:
    """(D, C) classifier: per class, the normalised mean of its normalised prompt embeddings."""
    device = next(model.parameters()).device
    weights = []
    for name in class_names:
        tokens = tokenizer([t.format(name) for t in templates], context_length).to(device)
        emb = F.normalize(model.encode_text(tokens).float(), dim=-1)  # (T, D)
        weights.append(F.normalize(emb.mean(dim=0), dim=-1))
    return torch.stack(weights, dim=1)  # (D, C)


def _fit_images(images: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """Grey -> RGB and resize to the image tower's input size (classification data of another size)."""
    patch = model.visual.patch_embed
    if images.shape[1] == 1 and patch.in_chans == 3:
        images = images.expand(-1, 3, -1, -1)
    if tuple(images.shape[-2:]) != tuple(patch.img_size) and not patch.dynamic_img_size:
        images = F.interpolate(images, size=patch.img_size, mode="bilinear", align_corners=False, antialias=True)
    return images


@torch.no_grad()
def zeroshot_evaluate(model: torch.nn.Module, classifier: torch.Tensor,
                      batches: Iterable[Any], num_classes: int) -> dict[str, Any]:
    """Top-1 / top-5, per-class accuracy and the confusion matrix over ``batches``.

    Batches are dicts with "image", "label" (and optionally a boolean "heldout") or (image, label) tuples.
    Reports ``top1_heldout`` / ``top1_seen`` when batches carry "heldout".
    """
    device = classifier.device
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    top5_hits, total = 0, 0
    split_hits = {True: 0, False: 0}
    split_total = {True: 0, False: 0}
    for batch in batches:
        if isinstance(batch, dict):
            images, labels, heldout = batch["image"], batch["label"], batch.get("heldout")
        else:
            (images, labels), heldout = batch[:2], None
        images = _fit_images(images.to(device), model)
        feats = F.normalize(model.encode_image(images).float(), dim=-1)
        logits = feats @ classifier  # (B, C)
        labels = labels.to(device)
        pred = logits.argmax(dim=-1)
        k = min(5, num_classes)
        top5_hits += (logits.topk(k, dim=-1).indices == labels[:, None]).any(dim=-1).sum().item()
        total += labels.numel()
        confusion += torch.bincount((labels * num_classes + pred).cpu(), minlength=num_classes ** 2
                                    ).view(num_classes, num_classes)
        if heldout is not None:
            heldout = torch.as_tensor(heldout, device=device).bool()
            correct = pred == labels
            for flag in (True, False):
                sel = heldout == flag
                split_hits[flag] += correct[sel].sum().item()
                split_total[flag] += sel.sum().item()
    if total == 0:
        raise ValueError("zero-shot evaluation got no samples")
    per_class = (confusion.diag().float() / confusion.sum(1).clamp_min(1)).tolist()
    out: dict[str, Any] = {"top1": confusion.diag().sum().item() / total, "top5": top5_hits / total,
                           "num_samples": total, "per_class": per_class, "confusion": confusion}
    if split_total[True]:
        out["top1_heldout"] = split_hits[True] / split_total[True]
    if split_total[False]:
        out["top1_seen"] = split_hits[False] / split_total[False]
    return out
