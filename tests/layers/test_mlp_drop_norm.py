"""Feed-forward blocks (Mlp, GluMlp, SwiGLU, GEGLU), DropPath, LayerScale and norms by name."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmzoo.layers import (GEGLU, DropPath, GluMlp, LayerScale, Mlp, SwiGLU, drop_path, get_mlp_layer,
                          get_norm_layer)


def test_mlp_matches_manual():
    torch.manual_seed(0)
    mlp = Mlp(8, 16, out_features=4)
    x = torch.randn(2, 3, 8)
    expected = F.linear(F.gelu(F.linear(x, mlp.fc1.weight, mlp.fc1.bias)), mlp.fc2.weight, mlp.fc2.bias)
    torch.testing.assert_close(mlp(x), expected)
    assert Mlp(8).fc1.out_features == 8 and Mlp(8).fc2.out_features == 8


@pytest.mark.parametrize("factory, act", [
    (lambda: GluMlp(8, 16), F.silu),
    (lambda: GluMlp(8, 16, act_layer=nn.GELU), F.gelu),
    (lambda: SwiGLU(8, 16), F.silu),
    (lambda: GEGLU(8, 16), F.gelu),
    (lambda: SwiGLU(8, 16, act_layer=nn.GELU), F.silu),  # the name fixes the gate (Block always passes act_layer)
    (lambda: GEGLU(8, 16, act_layer=nn.ReLU), F.gelu),
])
def test_glu_matches_manual(factory, act):
    torch.manual_seed(0)
    mlp = factory().eval()
    assert mlp.fc1.weight.shape == (32, 8) and mlp.fc2.weight.shape == (8, 16)
    x = torch.randn(2, 3, 8)
    h = x @ mlp.fc1.weight.T + mlp.fc1.bias
    value, gate = h[..., :16], h[..., 16:]  # first half value, second half gate
    expected = (value * act(gate)) @ mlp.fc2.weight.T + mlp.fc2.bias
    torch.testing.assert_close(mlp(x), expected)


def test_get_mlp_layer():
    assert get_mlp_layer("mlp") is Mlp
    assert isinstance(get_mlp_layer("swiglu")(8, 16).act, nn.SiLU)
    assert isinstance(get_mlp_layer("geglu")(8, 16).act, nn.GELU)
    with pytest.raises(ValueError, match=r"unknown mlp_layer 'glu'.*geglu.*mlp.*swiglu"):
        get_mlp_layer("glu")


def test_drop_path_eval_is_identity():
    dp = DropPath(0.5).eval()
    x = torch.randn(8, 3, 4)
    assert dp(x) is x
    assert drop_path(x, 0.0, training=True) is x


def test_drop_path_train_zeroes_whole_samples_and_rescales():
    torch.manual_seed(0)
    p = 0.25
    dp = DropPath(p).train()
    x = torch.randn(4000, 3, 5) + 3.0  # no zeros in the input
    y = dp(x)
    dropped = (y == 0).flatten(1).all(1)
    kept = (y != 0).flatten(1).all(1)
    assert (dropped | kept).all(), "a sample is either dropped entirely or kept entirely"
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))
    assert abs(dropped.float().mean().item() - p) < 0.03
    # the expectation is unchanged
    assert abs(y.mean().item() - x.mean().item()) < 0.1
    assert "drop_prob=0.25" in repr(dp)


def test_layer_scale_init_and_forward():
    ls = LayerScale(6, init_values=1e-5)
    assert isinstance(ls.gamma, nn.Parameter)
    assert torch.equal(ls.gamma.data, torch.full((6,), 1e-5))
    assert torch.equal(LayerScale(6).gamma.data, torch.full((6,), 1e-5))  # default init
    x = torch.randn(2, 3, 6)
    torch.testing.assert_close(LayerScale(6, 0.1)(x), x * 0.1)


def test_norm_layers_by_name():
    ln = get_norm_layer("layernorm")(8)
    assert isinstance(ln, nn.LayerNorm) and ln.eps == 1e-6
    assert get_norm_layer("layernorm_1e5")(8).eps == 1e-5
    rms = get_norm_layer("rmsnorm")(8)
    x = torch.randn(2, 8)
    torch.testing.assert_close(rms(x), x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt())
    with pytest.raises(ValueError, match=r"unknown norm_layer 'bn'.*layernorm"):
        get_norm_layer("bn")
