"""Parameter-efficient adaptation of any zoo model: one entry point, :func:`apply_peft`, configured by the
``peft`` Hydra group (``configs/peft/*.yaml``).

Methods (``peft.method``):

* ``none``: full fine-tuning (every parameter trains);
* ``lora``: low-rank updates of the attention projections (or ``target`` patterns), mergeable;
* ``adapter``: Houlsby bottleneck adapters after attention and MLP of every block;
* ``prefix``: learnable key/value prefixes in every self-attention (and cross-attention), trained through
  Li & Liang's MLP reparameterisation (``reparam``) and collapsed into plain tables after training;
* ``prompt``: soft prompt tokens at the input of every transformer stack;
* ``bitfit``: biases only;
* ``linear_probe``: the head only;
* ``partial``: the last ``num_blocks`` blocks of every transformer stack.

Methods are generic: they work on the shared layers (:class:`~mmzoo.layers.Attention`,
:class:`~mmzoo.layers.Block`) and on parameter-name patterns, never on a model's class. Every method
except ``none`` trains the *head* too (parameters matching ``head`` patterns, default: classifier
``head`` and the projections / temperature of contrastive models) unless ``train_head=false``.

Adaptation checkpoints (:func:`save_adaptation` / :func:`load_adaptation`) hold only the trainable
parameters plus a reference to the base model (prefix tuning: the collapsed prefix tables, not the MLP).
"""
from __future__ import annotations

import fnmatch
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
import torch.nn as nn

from .. import checkpoint
from .adapter import Adapter, apply_adapters
from .lora import LoRALinear, apply_lora, merge_lora, unmerge_lora
from .prompt import (PREFIX_MLP, PrefixFromMLP, PrefixKV, PrefixMLP, SoftPrompt, apply_prefix, apply_prompt,
                     block_stacks, collapse_prefix, collapsed_prefix_tables)

log = logging.getLogger("mmzoo")

METHODS = ("none", "lora", "adapter", "prefix", "prompt", "bitfit", "linear_probe", "partial")
# parameter-name patterns of "the head": a classifier `head`, or what a contrastive model puts on top of
# its towers (projections to the joint space, the temperature)
DEFAULT_HEAD = ("head.*", "*.head.*", "visual_proj.*", "text.proj.*", "text_proj.*", "logit_scale", "logit_bias")
ADAPTATION_FORMAT = "mmzoo-adaptation"

__all__ = ["METHODS", "Adapter", "LoRALinear", "PrefixFromMLP", "PrefixKV", "PrefixMLP", "SoftPrompt", "apply_peft",
           "apply_adapters", "apply_lora", "apply_prefix", "apply_prompt", "block_stacks", "collapse_prefix",
           "collapsed_prefix_tables", "merge_lora", "unmerge_lora", "trainable_state_dict", "save_adaptation",
           "load_adaptation", "count_parameters"]


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def _set_trainable(model: nn.Module, predicate) -> int:
    n = 0
    for name, p in model.named_parameters():
        p.requires_grad_(bool(predicate(name)))
        n += p.requires_grad
    return n


def apply_peft(model: nn.Module, cfg: Optional[Mapping[str, Any]]) -> nn.Module:
    """Adapt ``model`` in place as ``cfg`` says (a ``peft`` config: ``method`` plus its options).

    Options: ``r``, ``alpha``, ``dropout``, ``target``, ``untie`` (lora); ``bottleneck`` (adapter);
    ``num_tokens`` (prefix, prompt); ``cross_attn``, ``reparam``, ``reparam_hidden``, ``reparam_dim``
    (prefix); ``stacks`` (prompt); ``num_blocks`` (partial); ``train_head``, ``head`` (all). A key a
    config leaves out takes its function's default (prefix: no cross-attention, no reparameterisation,
    as in adaptation checkpoints written before those keys existed). Freezes everything else; records
    the config as ``model.peft_config``.

    Args:
        model: the model, adapted in place.
        cfg: the ``peft`` config (None: full fine-tuning).
    """
    cfg = dict(cfg or {})
    method = cfg.get("method", "none") or "none"
    if method not in METHODS:
        raise ValueError(f"unknown peft.method {method!r}; valid choices: {list(METHODS)}")
    if method == "none":
        model.peft_config = cfg
        return model
    head = tuple(cfg.get("head") or DEFAULT_HEAD)
    train_head = cfg.get("train_head", True)
    new_names: set[str] = set()
    # every name, tied ones too: a weight that peft.untie separates from its twin is not a new parameter
    before = {n for n, _ in model.named_parameters(remove_duplicate=False)}

    if method == "lora":
        apply_lora(model, r=int(cfg.get("r", 8)), alpha=float(cfg.get("alpha", 16.0)),
                   dropout=float(cfg.get("dropout", 0.0)), target=cfg.get("target"),
                   untie=bool(cfg.get("untie", False)))
    elif method == "adapter":
        apply_adapters(model, bottleneck=int(cfg.get("bottleneck", 16)))
    elif method == "prefix":
        apply_prefix(model, num_tokens=int(cfg.get("num_tokens", 8)), cross_attn=bool(cfg.get("cross_attn", False)),
                     reparam=bool(cfg.get("reparam", False)), reparam_hidden=int(cfg.get("reparam_hidden", 512)),
                     reparam_dim=cfg.get("reparam_dim"))
    elif method == "prompt":
        apply_prompt(model, num_tokens=int(cfg.get("num_tokens", 8)), stacks=cfg.get("stacks"))
    new_names = {n for n, _ in model.named_parameters()} - before

    head_names = {n for n, _ in model.named_parameters() if _matches(n, head)}
    if method == "linear_probe" and not head_names:
        raise ValueError(f"peft=linear_probe: no parameter of {type(model).__name__} matches peft.head="
                         f"{list(head)}; set peft.head to name patterns of the head's parameters")
    keep = set(new_names) | (head_names if train_head or method == "linear_probe" else set())
    if method == "bitfit":
        keep |= {n for n, _ in model.named_parameters() if n.endswith("bias")}
    elif method == "partial":
        num_blocks = int(cfg.get("num_blocks", 1))
        stacks = block_stacks(model)
        if not stacks:
            raise ValueError(f"peft=partial needs a ModuleList of mmzoo.layers.Block; {type(model).__name__} has none")
        for stack_name, blocks in stacks:
            for i in range(max(0, len(blocks) - num_blocks), len(blocks)):
                keep |= {f"{stack_name}.{i}.{n}" for n, _ in blocks[i].named_parameters()}
    _set_trainable(model, lambda n: n in keep)
    model.peft_config = cfg
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts (shared parameters counted once)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters by name, detached on CPU."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_adaptation(model: nn.Module, path: Union[str, os.PathLike], base: Mapping[str, Any],
                    collapse_prefix: bool = True) -> Path:
    """Write only the trainable parameters plus ``base`` (how to rebuild the base model: ``model_name``,
    ``pretrained`` path or None, config ``overrides``) and the peft config. Loads with
    ``torch.load(weights_only=True)``.

    Args:
        model: the adapted model.
        path: the file to write (atomically).
        base: how to rebuild the frozen base.
        collapse_prefix: prefix tuning trained through the MLP reparameterisation writes the prefix tables
            it produces (``collapsed_prefix_tables``) instead of the MLP, with ``reparam=False`` (Li & Liang
            keep only the prefixes); the model itself is left as it is. False writes the MLP.
    """
    if any(isinstance(m, LoRALinear) and m.merged for m in model.modules()):
        raise ValueError("save_adaptation: the LoRA weights are merged; call unmerge_lora(model) first")
    peft = dict(getattr(model, "peft_config", {}))
    state = trainable_state_dict(model)
    tables = collapsed_prefix_tables(model) if collapse_prefix else {}
    if tables:
        state = {k: v for k, v in state.items() if not k.startswith(f"{PREFIX_MLP}.")}
        state.update({k: v.cpu() for k, v in tables.items()})
        peft["reparam"] = False
    obj = {"format": ADAPTATION_FORMAT, "base": dict(base), "peft": peft, "state_dict": state}
    return checkpoint.save(obj, path)


def load_adaptation(path: Union[str, os.PathLike], model: Optional[nn.Module] = None) -> nn.Module:
    """Rebuild the base model (or take ``model``, the unadapted base), apply the saved peft config and
    load the saved parameters onto it."""
    obj = checkpoint.load(path)
    if not isinstance(obj, dict) or obj.get("format") != ADAPTATION_FORMAT:
        what = ("a training checkpoint (load it with mmzoo.create_model(pretrained=...))"
                if isinstance(obj, dict) and checkpoint.MMZOO_KEY in obj else
                f"a dict with keys {sorted(map(str, obj))[:6]}" if isinstance(obj, dict) else f"a {type(obj).__name__}")
        raise checkpoint.CheckpointError(f"{path} is not an mmzoo adaptation checkpoint (written by save_adaptation, "
                                         f"DIR/checkpoints/adapter.pt): it is {what}")
    for key, kind in (("base", dict), ("peft", dict), ("state_dict", dict)):
        if not isinstance(obj.get(key), kind):
            raise checkpoint.CheckpointError(f"{path}: its '{key}' entry is missing or not a dict; the adaptation "
                                             "file is damaged")
    if model is None:
        from ..models import create_model

        base = obj["base"]
        if base.get("pretrained") is None:
            log.warning("%s: the base model has no pretrained weights; its frozen parameters are a fresh "
                        "initialisation (seeded with base.seed=%s) and may differ from training", path,
                        base.get("seed"))
            if base.get("seed") is not None:
                torch.manual_seed(int(base["seed"]))
        model = create_model(base.get("model_name"), pretrained=base.get("pretrained"),
                             **dict(base.get("overrides") or {}))
    apply_peft(model, obj["peft"])
    own = dict(model.named_parameters())
    not_tensors = [k for k, v in obj["state_dict"].items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise checkpoint.CheckpointError(f"{path}: entries {not_tensors[:5]} of its state_dict are not tensors; the "
                                         "adaptation file is damaged")
    unknown = [k for k in obj["state_dict"] if k not in own]
    if unknown:
        raise ValueError(f"{path}: parameters {unknown[:5]} do not exist in the adapted base model")
    with torch.no_grad():
        for k, v in obj["state_dict"].items():
            if own[k].shape != v.shape:
                raise ValueError(f"{path}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
            own[k].copy_(v)
    return model
