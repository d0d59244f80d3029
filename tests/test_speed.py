"""Speed features of every model: the fused SDPA kernel actually runs, activation checkpointing gives the
same numbers with fewer saved activations, compiled blocks have no graph breaks, and the config keys
``model.compile`` / ``model.grad_checkpointing`` reach the built model."""
from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
import torch._dynamo as dynamo
from torch.nn.attention import SDPBackend, sdpa_kernel

import mmzoo
from mmzoo.layers import Attention, DropPath
from mmzoo.layers.block import Block
from mmzoo.models import list_archs
from mmzoo.models.speed import compile_model, set_grad_checkpointing
from mmzoo.training import build


def _images(cfg: Any, batch: int = 2) -> torch.Tensor:
    size = cfg.img_size if isinstance(cfg.img_size, tuple) else (cfg.img_size, cfg.img_size)
    return torch.randn(batch, cfg.in_chans, *size)


def _tokens(cfg: Any, batch: int = 2) -> torch.Tensor:
    tokens = torch.randint(1, cfg.vocab_size - 1, (batch, cfg.context_length))
    tokens[:, -1] = cfg.vocab_size - 1  # CLIP pools at the highest id (end of text)
    return tokens


def _image_text(model: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    return _images(model.cfg.vision), _tokens(model.cfg.text)


def _clips(model: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    cfg = model.cfg
    return (torch.randn(2, cfg.in_chans, cfg.num_frames, cfg.img_size, cfg.img_size),)  # (B, C, T, H, W)


def _lm_tokens(model: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    cfg = model.cfg
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.context_length))
    return (tokens, tokens[:, : cfg.context_length // 2]) if cfg.kind == "encoder_decoder" else (tokens,)


def _image_question(model: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    cfg = model.cfg
    return _images(cfg.vision), torch.randint(0, cfg.text.vocab_size, (2, cfg.text.context_length))


# arch -> (tiny preset, inputs of its forward); a new architecture is one line here
TINY: dict[str, tuple[str, Callable[[torch.nn.Module], tuple[torch.Tensor, ...]]]] = {
    "vit": ("vit_nano_patch4_32", lambda m: (_images(m.cfg),)),
    "clip": ("clip_nano", _image_text),
    "coca": ("coca_nano", _image_text),
    "wav2vec2": ("wav2vec2_tiny", lambda m: (torch.randn(2, 16000),)),
    "timesformer": ("timesformer_tiny_divided", _clips),
    "point_bert": ("point_bert_tiny", lambda m: (torch.randn(2, 512, 3),)),
    # GPT-style; T5's relative position bias is a learned additive bias, which SDPA's flash kernel cannot
    # take (it runs the math kernel on CPU and the memory-efficient kernel on GPU; see docs/scaling.md)
    "transformer_lm": ("gpt_nano", _lm_tokens),
    "fusion": ("fusion_tiny", _image_question),
}
# architectures without attention layers (the dVAE tokenizer is a DGCNN encoder + convolutional decoder)
NO_ATTENTION = {"point_bert_dvae"}


def _tiny(arch: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    if arch in NO_ATTENTION:
        pytest.skip(f"{arch} has no attention or transformer blocks")
    if arch not in TINY:
        pytest.skip(f"no tiny preset / input builder for arch {arch!r} in tests/test_speed.py: TINY")
    torch.manual_seed(0)
    name, inputs = TINY[arch]
    model = mmzoo.create_model(name)
    # no dropout / stochastic depth, so train mode is deterministic (two forwards give the same numbers) and
    # attention can run on the CPU flash kernel, which has no dropout (SDPA falls back to its math kernel on
    # CPU when dropout_p > 0; the CUDA flash kernel does take dropout). Presets that train with them
    # (wav2vec2_tiny, point_bert_tiny) keep them everywhere else.
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        elif isinstance(m, DropPath):
            m.drop_prob = 0.0
    return model, inputs(model)


def _loss(out: Any) -> torch.Tensor:
    tensors = [out] if torch.is_tensor(out) else [t for t in out if torch.is_tensor(t) and t.is_floating_point()]
    return sum(t.float().square().mean() for t in tensors)


def _count_sdpa_ops(fn: Callable[[], Any]) -> dict[str, int]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            *([torch.profiler.ProfilerActivity.CUDA]
                                              if torch.cuda.is_available() else [])]) as prof:
        fn()
    counts: dict[str, int] = {}
    for e in prof.events():
        if "scaled_dot_product" in e.name or "attention" in e.name.lower():
            counts[e.name] = counts.get(e.name, 0) + 1
    return counts


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", list_archs())
def test_every_attention_runs_on_the_flash_kernel(arch, device):
    """Forward and backward of each model's tiny preset under ``sdpa_kernel([FLASH...])``: SDPA raises if
    any call would fall back; the profiler confirms one flash call per attention module call."""
    model, inputs = _tiny(arch)
    model, inputs = model.to(device), tuple(x.to(device) for x in inputs)
    calls = []
    hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for m in model.modules() if isinstance(m, Attention)]
    assert hooks, f"{arch} has no mmzoo.layers.Attention"
    backends = [SDPBackend.FLASH_ATTENTION] if device == "cpu" else [SDPBackend.FLASH_ATTENTION,
                                                                     SDPBackend.CUDNN_ATTENTION]

    def step():
        with sdpa_kernel(backends), torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            _loss(model(*inputs)).backward()

    counts = _count_sdpa_ops(step)
    flash = sum(n for name, n in counts.items() if name.startswith("aten::_scaled_dot_product_")
                and ("flash" in name or "cudnn" in name) and "backward" not in name)
    assert not any("math" in name for name in counts), counts
    assert flash == len(calls) > 0, counts


@pytest.mark.parametrize("arch", list_archs())
def test_grad_checkpointing_same_outputs_and_grads_fewer_saved_activations(arch):
    model, inputs = _tiny(arch)
    model.train()  # dropout and drop-path are off (_tiny): train mode is deterministic here

    depth = [0]  # > 0 while inside a transformer block's forward
    for blk in (m for m in model.modules() if isinstance(m, Block)):
        blk.register_forward_pre_hook(lambda *_: depth.__setitem__(0, depth[0] + 1))
        blk.register_forward_hook(lambda *_: depth.__setitem__(0, depth[0] - 1))

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor], int, int]:
        saved, in_blocks = [0], [0]

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved[0] += t.numel() * t.element_size()
            in_blocks[0] += t.numel() * t.element_size() if depth[0] > 0 else 0
            return t

        model.zero_grad(set_to_none=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = _loss(model(*inputs))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), grads, saved[0], in_blocks[0]

    loss0, grads0, saved0, blocks0 = run()
    assert set_grad_checkpointing(model, True) >= 1
    loss1, grads1, saved1, _ = run()
    assert torch.equal(loss0, loss1)
    assert grads0.keys() == grads1.keys()
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], rtol=1e-5, atol=1e-7, msg=name)
    # checkpointed blocks keep only their inputs: nearly all activations saved inside blocks are gone
    assert blocks0 > 0 and saved0 - saved1 > 0.8 * blocks0, (saved0, saved1, blocks0)


@pytest.mark.parametrize("arch", list_archs())
def test_transformer_blocks_compile_without_graph_breaks(arch):
    model, inputs = _tiny(arch)
    blocks = {type(m).__name__: m for m in model.modules() if isinstance(m, Block)}
    assert blocks
    # one explain per distinct stack: capture each block's real inputs with a hook, then explain it
    captured: dict[int, tuple] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, kwargs: captured.setdefault(id(mod), (args, kwargs)),
                                         with_kwargs=True) for m in model.modules() if isinstance(m, Block)]
    with torch.no_grad():
        model(*inputs)
    for h in hooks:
        h.remove()
    for blk in [m for m in model.modules() if isinstance(m, Block)][:: max(1, len(captured) // 4)]:
        args, kwargs = captured[id(blk)]
        dynamo.reset()
        explained = dynamo.explain(blk)(*args, **kwargs)
        assert explained.graph_break_count == 0, explained.break_reasons


def test_config_keys_reach_the_model(train_cfg):
    _, task = build(train_cfg("model=clip", "model.name=clip_nano", "model.grad_checkpointing=true",
                              "model.compile=true"))
    model = task.model
    assert model.visual.grad_checkpointing and model.text.grad_checkpointing
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    assert blocks and all(b._compiled_call_impl is not None for b in blocks)
    _, task = build(train_cfg("model=vit", "model.name=vit_nano_patch4_32"))  # defaults: off
    assert not task.model.grad_checkpointing
    assert all(b._compiled_call_impl is None for b in task.model.blocks)
    with pytest.raises(ValueError, match="model.compile must be one of"):
        compile_model(task.model, "fast")


@pytest.mark.slow
def test_compiled_blocks_match_eager():
    torch.manual_seed(0)
    model = mmzoo.create_model("vit_nano_patch4_32").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        eager = model(x)
        compile_model(model, True)
        compiled = model(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def test_gqa_fused_path_matches_reference_without_repeating_keys():
    torch.manual_seed(0)
    attn = Attention(64, num_heads=8, num_kv_heads=2)
    x = torch.randn(2, 10, 64)
    pad = torch.zeros(2, 10, dtype=torch.bool)
    pad[1, 7:] = True
    for kw in ({}, {"is_causal": True}, {"key_padding_mask": pad}):
        attn.fused_attn = True
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            fused = attn(x, **kw)
        attn.fused_attn = False
        torch.testing.assert_close(fused, attn(x, **kw), rtol=1e-5, atol=1e-6)


def test_wav2vec2_padding_mask_only_when_padded_and_flash_takes_it_on_cpu():
    """An unpadded batch passes no mask to attention; a padded one a (B, T) key-padding mask (a (B, 1, 1, T)
    SDPA mask), which the CPU flash kernel takes: ``sdpa_kernel([FLASH_ATTENTION])`` raises otherwise."""
    torch.manual_seed(0)
    model = mmzoo.create_model("wav2vec2_tiny").eval()
    masks = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, kw: masks.append(kw.get("key_padding_mask")),
                                         with_kwargs=True) for m in model.modules() if isinstance(m, Attention)]
    wav = torch.randn(2, 16000)
    with torch.no_grad(), sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        model(wav, torch.tensor([16000, 16000]))
        assert len(masks) == model.cfg.depth and all(m is None for m in masks)
        masks.clear()
        out, padding = model.forward_features(wav, torch.tensor([16000, 9600]))
    for h in hooks:
        h.remove()
    assert padding is not None and padding[1].any() and not padding[0].any()
    assert len(masks) == model.cfg.depth and all(torch.equal(m, padding) for m in masks)
    assert torch.isfinite(out).all()
