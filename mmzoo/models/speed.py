"""Speed options every model gets from its config, applied in one place after it is built.

* ``model.grad_checkpointing=true``: activation checkpointing in every transformer stack of the model
  (any module with a ``grad_checkpointing`` attribute: :class:`~mmzoo.layers.Transformer`, the ViT, the
  text tower, and the towers of models added later), trading one recomputed forward for activations.
* ``model.compile=true``: ``torch.compile`` of every transformer :class:`~mmzoo.layers.Block`, in
  place (parameter names, hence checkpoints, are unchanged); ``model.compile=model`` compiles the
  whole model's ``forward`` instead.
"""
from __future__ import annotations

from typing import Any, Union

import torch.nn as nn

from ..layers.block import Block

COMPILE_CHOICES = (False, True, "blocks", "model")


def set_grad_checkpointing(model: nn.Module, enable: bool = True) -> int:
    """Turn activation checkpointing on or off in every submodule that supports it; returns how many."""
    count = 0
    for module in model.modules():
        if hasattr(module, "grad_checkpointing") and isinstance(module.grad_checkpointing, bool):
            module.grad_checkpointing = bool(enable)
            count += 1
    if enable and count == 0:
        raise ValueError(f"model.grad_checkpointing=true but {type(model).__name__} has no module with a "
                         "`grad_checkpointing` flag (run its blocks through mmzoo.layers.run_blocks)")
    return count


def compile_model(model: nn.Module, compile: Union[bool, str] = True, **compile_kwargs: Any) -> nn.Module:
    """``torch.compile`` the model's transformer blocks (``True`` / ``"blocks"``) or its whole forward
    (``"model"``), in place; returns the model. Compiling block by block keeps the compiled graphs
    small (one per block shape, reused by every block of a stack) and leaves encode_* methods covered."""
    if compile not in COMPILE_CHOICES:
        raise ValueError(f"model.compile must be one of {COMPILE_CHOICES}, got {compile!r}")
    if compile is False:
        return model
    if compile == "model":
        model.compile(**compile_kwargs)
        return model
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    if not blocks:
        raise ValueError(f"model.compile={compile!r}: {type(model).__name__} has no mmzoo.layers.Block; "
                         "use model.compile=model")
    for blk in blocks:
        blk.compile(**compile_kwargs)
    return model


def apply_speed_options(model: nn.Module, compile: Union[bool, str] = False,
                        grad_checkpointing: bool = False) -> nn.Module:
    """What ``model.compile`` and ``model.grad_checkpointing`` of a training config ask for."""
    if grad_checkpointing:
        set_grad_checkpointing(model, True)
    return compile_model(model, compile)
