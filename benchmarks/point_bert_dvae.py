"""dVAE validation Chamfer-L1 at initialisation (same seed as the run) and after training, per patch
(the training loss) and of the whole rebuilt cloud against the input (Point-BERT's validation), plus
codebook usage, and how much the trained tokens say about their patches: the spread of the token logits
against the Gumbel noise of training (how often a Gumbel sample picks the arg-max token), and the
Chamfer-L1 when every patch is decoded from one and the same token or from its cloud's tokens shuffled,
next to putting every point at its patch centre. Run after `train.py model=point_bert_dvae ...
hydra.run.dir=RUN`:
    PYTHONPATH=$PWD python benchmarks/point_bert_dvae.py RUN/checkpoints/last.ckpt --num-points 512 --seed 42
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import mmzoo
from mmzoo.data.points import ProceduralShapesDataset
from mmzoo.layers import chamfer_distance


@torch.no_grad()
def evaluate(model, points, batch: int = 50) -> dict[str, float]:
    """Chamfer-L1 of the arg-max reconstructions: per patch (the training loss, relative coordinates) and of
    the whole rebuilt cloud against the input (Point-BERT's dVAE validation metric); codebook usage, token
    perplexity and the logits' spread. ``points``: a (N, P, 3) tensor or a loader of ``(points, ...)``."""
    model.eval()
    batches = (points[i:i + batch] for i in range(0, len(points), batch)) if torch.is_tensor(points) else \
        (b[0] for b in points)
    patch = cloud = std = 0.0
    n = 0
    counts = torch.zeros(model.cfg.num_tokens)
    for x in batches:
        out = model(x)
        patch += chamfer_distance(out.fine.flatten(0, 1), out.neighborhood.flatten(0, 1), "l1").item() * len(x)
        whole = (out.fine + out.centers.unsqueeze(2)).flatten(1, 2)
        cloud += chamfer_distance(whole, x, "l1").item() * len(x)
        std += out.logits.std(-1).mean().item() * len(x)
        n += len(x)
        counts += torch.bincount(out.logits.argmax(-1).flatten(), minlength=model.cfg.num_tokens)
    p = counts[counts > 0] / counts.sum()
    return {"patch": patch / n, "cloud": cloud / n, "usage": float((counts > 0).float().mean()),
            "perplexity": float(torch.exp(-(p * p.log()).sum())), "logit_std": std / n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--num-points", type=int, default=512, help="as data.num_points of the run")
    ap.add_argument("--num-val", type=int, default=200)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    trained = mmzoo.create_model(pretrained=args.checkpoint)
    torch.manual_seed(args.seed)  # train.py seeds before building the model: same initial weights
    initial = mmzoo.models.build_model(trained.cfg)  # the run's config (every override), fresh weights
    val = ProceduralShapesDataset(args.num_val, args.num_points, args.seed, "val").points
    e0, e1 = evaluate(initial, val), evaluate(trained, val)
    for key, what in (("patch", "per patch (training loss)"), ("cloud", "whole cloud (Point-BERT's validation)")):
        print(f"val Chamfer-L1 {what}: initial {e0[key]:.4f} -> trained {e1[key]:.4f} "
              f"(ratio {e1[key] / e0[key]:.3f})")
    print(f"codebook usage {e0['usage']:.3f} -> {e1['usage']:.3f}")
    for k, v in token_information(trained, val[:100]).items():
        print(f"  {k}: {v:.4f}")


@torch.no_grad()
def token_information(model, points: torch.Tensor) -> dict[str, float]:
    """Do the arg-max tokens carry the patches' shapes? (see the module docstring)"""
    model.eval()
    neighborhood, centers = model.group(points)
    logits = model.encode(neighborhood, centers)
    gt = neighborhood.flatten(0, 1)
    T = model.cfg.num_tokens
    tokens = logits.argmax(-1)

    def chamfer(token_ids: torch.Tensor) -> float:
        _, fine = model.decode(F.one_hot(token_ids, T).to(logits.dtype), centers)
        return chamfer_distance(fine.flatten(0, 1), gt, "l1").item()

    g = torch.Generator().manual_seed(0)
    gumbel = -torch.empty_like(logits).exponential_(generator=g).log()
    perm = torch.stack([torch.randperm(tokens.shape[1], generator=g) for _ in range(tokens.shape[0])])
    top2 = logits.topk(2, dim=-1).values
    most_frequent = torch.full_like(tokens, tokens.flatten().mode().values.item())
    return {
        "logit std per patch": logits.std(-1).mean().item(),
        "top-1 minus top-2 logit": (top2[..., 0] - top2[..., 1]).mean().item(),
        "Gumbel sample = arg-max token (fraction)": ((logits + gumbel).argmax(-1) == tokens).float().mean().item(),
        "Chamfer-L1, arg-max tokens": chamfer(tokens),
        "Chamfer-L1, tokens shuffled within each cloud": chamfer(torch.gather(tokens, 1, perm)),
        "Chamfer-L1, the most frequent token everywhere": chamfer(most_frequent),
        "Chamfer-L1, every point at its patch centre": chamfer_distance(torch.zeros_like(gt), gt, "l1").item(),
    }


if __name__ == "__main__":
    main()
