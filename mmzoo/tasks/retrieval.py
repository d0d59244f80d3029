"""Image-text retrieval recall (R@K) from embedding matrices."""
from __future__ import annotations

from typing import Optional, Sequence

import torch


@torch.no_grad()
def retrieval_recall(image_features: torch.Tensor, text_features: torch.Tensor,
                     text_to_image: Optional[torch.Tensor] = None,
                     ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K both ways, as in the CLIP / ALIGN retrieval benchmarks.

    Args:
        image_features: (N_img, D) L2-normalised.
        text_features: (N_txt, D) L2-normalised.
        text_to_image: (N_txt,) index of the image each text describes (COCO: 5 texts per image);
            default: text i describes image i.
        ks: the K of R@K.
    Returns:
        ``{"i2t_R@K": ..., "t2i_R@K": ...}``: image->text counts a hit when any of the image's texts is in
        the top K; text->image when its image is in the top K.
    """
    n_img, n_txt = image_features.shape[0], text_features.shape[0]
    if text_to_image is None:
        if n_img != n_txt:
            raise ValueError(f"{n_img} images but {n_txt} texts: pass text_to_image")
        text_to_image = torch.arange(n_txt, device=image_features.device)
    sim = image_features.float() @ text_features.float().T  # (N_img, N_txt)
    positive = text_to_image[None, :] == torch.arange(n_img, device=sim.device)[:, None]  # (N_img, N_txt)
    out = {}
    # rank of the best positive per image: number of texts scoring above it
    best_pos = sim.masked_fill(~positive, float("-inf")).max(dim=1).values
    i2t_rank = (sim > best_pos[:, None]).sum(dim=1)
    # rank of each text's image among all images
    pos_score = sim[text_to_image, torch.arange(n_txt, device=sim.device)]
    t2i_rank = (sim > pos_score[None, :]).sum(dim=0)
    for k in ks:
        out[f"i2t_R@{k}"] = (i2t_rank < k).float().mean().item()
        out[f"t2i_R@{k}"] = (t2i_rank < k).float().mean().item()
    return out
