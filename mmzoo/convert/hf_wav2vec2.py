"""Hugging Face ``Wav2Vec2Model`` / ``Wav2Vec2ForPreTraining`` checkpoints -> mmzoo wav2vec 2.0.

Reads the weights of a ``save_pretrained`` directory (``model.safetensors`` / ``pytorch_model.bin``) or
the file itself. The model's config must match the checkpoint's (``create_model("wav2vec2_base",
pretrained=DIR)`` for ``facebook/wav2vec2-base``; pass overrides for other shapes). Separate q/k/v
projections are concatenated into the zoo's fused ``attn.qkv``; both weight-norm layouts of the position
conv (``weight_g``/``weight_v`` and ``parametrizations.weight.original0/1``) are accepted. A checkpoint
without the pretraining quantizer leaves the model's fresh quantizer in place; HF task heads
(``lm_head``, ``projector``, ``classifier``) are not loaded (the zoo's ``head`` stays fresh).
"""
from __future__ import annotations

import logging
import re

import torch
import torch.nn as nn

from . import register_converter

log = logging.getLogger(__name__)

_RENAMES = [
    (r"^feature_extractor\.conv_layers\.(\d+)\.layer_norm\.", r"feature_extractor.conv_layers.\1.norm."),
    (r"^feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.conv."),
    (r"^feature_projection\.layer_norm\.", "feature_norm."),
    (r"^feature_projection\.projection\.", "feature_proj."),
    (r"^masked_spec_embed$", "mask_emb"),
    (r"^encoder\.pos_conv_embed\.conv\.weight_g$", "pos_conv.conv.parametrizations.weight.original0"),
    (r"^encoder\.pos_conv_embed\.conv\.weight_v$", "pos_conv.conv.parametrizations.weight.original1"),
    (r"^encoder\.pos_conv_embed\.conv\.", "pos_conv.conv."),
    (r"^encoder\.layer_norm\.", "encoder_norm."),
    (r"^encoder\.layers\.(\d+)\.attention\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layers\.(\d+)\.layer_norm\.", r"blocks.\1.norm1."),
    (r"^encoder\.layers\.(\d+)\.final_layer_norm\.", r"blocks.\1.norm2."),
    (r"^encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layers\.(\d+)\.feed_forward\.output_dense\.", r"blocks.\1.mlp.fc2."),
    (r"^quantizer\.", "quantizer."),
    (r"^project_hid\.", "final_proj."),
    (r"^project_q\.", "project_q."),
]
_HEADS = ("lm_head.", "projector.", "classifier.")
_PRETRAIN = ("quantizer.", "project_q.", "final_proj.")


def _is_hf_wav2vec2(sd: dict[str, torch.Tensor]) -> bool:
    return any(k.endswith("feature_projection.projection.weight") for k in sd) and \
        any("encoder.pos_conv_embed.conv" in k for k in sd)


@register_converter("hf_wav2vec2", "wav2vec2", detect=_is_hf_wav2vec2)
def convert_hf_wav2vec2(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """HF wav2vec 2.0 state dict -> mmzoo ``Wav2Vec2`` state dict."""
    sd = {k[len("wav2vec2."):] if k.startswith("wav2vec2.") else k: v for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if k.startswith(_HEADS):
            log.warning("not loading the Hugging Face task head weight %s", k)
            continue
        m = re.match(r"^encoder\.layers\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)$", k)
        if m:
            qkv.setdefault(f"blocks.{m.group(1)}.attn.qkv.{m.group(3)}", {})[m.group(2)] = v
            continue
        for pattern, repl in _RENAMES:
            new, n = re.subn(pattern, repl, k)
            if n:
                out[new] = v
                break
        else:
            raise ValueError(f"unexpected key {k!r} in the Hugging Face wav2vec 2.0 checkpoint")
    for key, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"incomplete q/k/v projections for {key}: found {sorted(parts)}")
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], 0)  # [q | k | v] like attn.qkv
    own = model.state_dict()
    for k in list(out):
        if k.startswith(_PRETRAIN) and k not in own:
            out.pop(k)  # encoder-only model: the pretraining quantizer is not needed
    missing_pretrain = [k for k in own if k.startswith(_PRETRAIN) and k not in out]
    if missing_pretrain:
        log.warning("checkpoint has no pretraining quantizer; keeping the model's fresh %s", missing_pretrain[:3])
        out.update({k: own[k] for k in missing_pretrain})
    return out
