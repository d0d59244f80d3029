"""FLOP counting that sees every attention kernel.

``torch.utils.flop_counter.FlopCounterMode`` has formulas for the CUDA SDPA kernels (flash, efficient,
cuDNN) but not for the CPU flash kernel (``aten._scaled_dot_product_flash_attention_for_cpu``) that
``F.scaled_dot_product_attention`` dispatches to on CPU, so on CPU every fused attention would count as
zero FLOPs. :func:`flop_counter` registers the same formulas for the CPU kernel (forward and backward)
and returns a counter::

    with flop_counter() as fc:
        model(x)
    fc.get_total_flops()
"""
from __future__ import annotations

import torch
from torch.utils import flop_counter as _fc

__all__ = ["flop_counter"]

_registered = False


def _register_cpu_sdpa() -> None:
    global _registered
    if _registered:
        return
    aten = torch.ops.aten
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None and fwd not in _fc.flop_registry:
        @_fc.register_flop_formula(fwd)
        def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            # (B, H, L, E) inputs, as the CUDA kernels' formula expects
            return _fc.sdpa_flop_count(query_shape, key_shape, value_shape)
    if bwd is not None and bwd not in _fc.flop_registry:
        @_fc.register_flop_formula(bwd)
        def _cpu_sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                               **kwargs) -> int:
            return _fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)
    _registered = True


def flop_counter(display: bool = False, **kwargs) -> _fc.FlopCounterMode:
    """A ``FlopCounterMode`` that also counts the CPU flash-attention kernel."""
    _register_cpu_sdpa()
    return _fc.FlopCounterMode(display=display, **kwargs)
