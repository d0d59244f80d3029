"""Image to patch tokens."""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn as nn


def _pair(x: Union[int, Sequence[int]]) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


class PatchEmbed(nn.Module):
    """Split an image into non-overlapping patches and project each to ``embed_dim`` (a strided conv).

    Args:
        img_size: expected input size (int or (H, W)); other sizes raise unless ``dynamic_img_size``.
        patch_size: patch side (int or (h, w)).
        in_chans: input channels.
        embed_dim: output width.
        bias: conv bias (CLIP has none).
        dynamic_img_size: accept any size divisible by the patch (the caller resamples positions).
    """

    def __init__(self, img_size: Union[int, Sequence[int]] = 224, patch_size: Union[int, Sequence[int]] = 16,
                 in_chans: int = 3, embed_dim: int = 768, bias: bool = True, dynamic_img_size: bool = False) -> None:
        super().__init__()
        self.img_size = _pair(img_size)
        self.patch_size = _pair(patch_size)
        if self.img_size[0] % self.patch_size[0] or self.img_size[1] % self.patch_size[1]:
            raise ValueError(f"img_size {self.img_size} must be divisible by patch_size {self.patch_size}")
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.in_chans = in_chans
        self.dynamic_img_size = dynamic_img_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H/p * W/p, embed_dim)."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected images of shape (B, {self.in_chans}, {self.img_size[0]}, "
                             f"{self.img_size[1]}), got {tuple(x.shape)}")
        H, W = x.shape[-2:]
        if self.dynamic_img_size:
            if H % self.patch_size[0] or W % self.patch_size[1]:
                raise ValueError(f"image size {(H, W)} is not divisible by patch size {self.patch_size}")
        elif (H, W) != self.img_size:
            raise ValueError(f"expected images of shape (B, {self.in_chans}, {self.img_size[0]}, "
                             f"{self.img_size[1]}), got {tuple(x.shape)}; build the model with "
                             f"img_size={(H, W)} (position embeddings are interpolated) or dynamic_img_size=True")
        x = self.proj(x)  # (B, D, H/p, W/p)
        return x.flatten(2).transpose(1, 2)  # (B, N, D)
