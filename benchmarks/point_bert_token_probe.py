"""How predictable are a dVAE's tokens? Trains a fresh Point-BERT + linear head to predict the token of
every *visible* patch (``--mode visible``) or of block-masked patches (``--mode masked``, masked point
modeling) and prints accuracy next to the share of the most frequent token.

A tokenizer whose tokens a model cannot learn even from the patch itself gives masked point modeling
little to learn from its context.

    python benchmarks/point_bert_token_probe.py RUN/checkpoints/last.ckpt --mode visible
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mmzoo  # noqa: E402
from plain_loop import cycle  # noqa: E402
from mmzoo.data import ProceduralShapesDataModule  # noqa: E402
from mmzoo.models.point_bert import block_mask  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="a model=point_bert_dvae run's checkpoint")
    ap.add_argument("--mode", choices=["visible", "masked"], default="visible")
    ap.add_argument("--model", default="point_bert_tiny")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--num-points", type=int, default=512)
    ap.add_argument("--mask-ratio", type=float, default=0.35)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    dvae = mmzoo.create_model(pretrained=args.checkpoint).eval()
    dm = ProceduralShapesDataModule(batch_size=32, seed=42, num_points=args.num_points)
    dm.setup("fit")
    model = mmzoo.create_model(args.model, num_classes=0, num_groups=dvae.cfg.num_groups,
                               group_size=dvae.cfg.group_size)
    head = nn.Linear(model.cfg.dim, dvae.cfg.num_tokens)
    opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=1e-3)
    batches = cycle(dm.train_dataloader())
    for step in range(args.steps):
        points = next(batches)[0]
        neighborhood, centers = model.group(points)
        tokens = dvae.tokenize(neighborhood, centers)
        if args.mode == "visible":
            sel = torch.ones_like(tokens, dtype=torch.bool)
            x = model.forward_groups(neighborhood, centers)[:, 1:]
        else:
            sel = block_mask(centers, torch.full((points.shape[0],), args.mask_ratio))
            x = model.forward_groups(neighborhood, centers, sel)[:, 1:]
        logits = head(x[sel])
        loss = F.cross_entropy(logits, tokens[sel])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0 or step + 1 == args.steps:
            top = torch.bincount(tokens.flatten(), minlength=dvae.cfg.num_tokens).max().item() / tokens.numel()
            acc = (logits.argmax(-1) == tokens[sel]).float().mean().item()
            print(f"{args.mode} step {step + 1}: loss {loss.item():.3f}, token accuracy {acc:.3f}, "
                  f"most frequent token {top:.3f} of patches", flush=True)


if __name__ == "__main__":
    main()
