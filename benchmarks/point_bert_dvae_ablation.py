"""Which part of the dVAE keeps it from reconstructing patches? Trains, for ``--steps`` steps on
``procedural_shapes``, the tiny dVAE's pieces with the quantizer replaced by a plain softmax (no Gumbel
noise) and prints the fine Chamfer-L1 next to the trivial one of putting every point at the patch centre:

  full        encoder -> DGCNN 1 -> softmax codes -> codebook -> DGCNN 2 -> folding decoder (GroupNorm in both
              DGCNNs, as the released Point-BERT dVAE)
  full_no_norm2  the same without GroupNorm in DGCNN 2 (the tiny preset's decoder_dgcnn_norm=False)
  full_no_norm   the same without GroupNorm in either DGCNN
  no_dgcnn2   encoder -> DGCNN 1 -> softmax codes -> codebook -> folding decoder
  dgcnn2_only encoder -> DGCNN 2 -> folding decoder
  fold        encoder -> linear -> folding decoder
  mlp         encoder -> MLP -> 16 points (no folding)

    python benchmarks/point_bert_dvae_ablation.py --modes full full_no_norm2 no_dgcnn2 mlp
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mmzoo  # noqa: E402
from plain_loop import cycle  # noqa: E402
from mmzoo.data import ProceduralShapesDataModule  # noqa: E402
from mmzoo.layers.points import chamfer_distance  # noqa: E402

MODES = ["full", "full_no_norm2", "full_no_norm", "no_dgcnn2", "dgcnn2_only", "fold", "mlp"]


def run(mode: str, steps: int, preset: str, group_size: int | None = None) -> tuple[float, float, float]:
    torch.manual_seed(0)
    dvae = mmzoo.create_model(preset, decoder_dgcnn_norm=mode != "full_no_norm2" and mode != "full_no_norm",
                              **({"group_size": group_size} if group_size else {}))
    if mode == "full_no_norm":  # the encoder-side DGCNN too (no config switch: an ablation only)
        for m in list(dvae.dgcnn_1.modules()):
            for name, child in list(m.named_children()):
                if isinstance(child, nn.GroupNorm):
                    setattr(m, name, nn.Identity())
    c = dvae.cfg
    dm = ProceduralShapesDataModule(batch_size=32, seed=42, num_points=512)
    dm.setup("fit")
    extra = nn.ModuleDict({"proj": nn.Linear(c.encoder_dim, c.decoder_dim),
                           "mlp": nn.Sequential(nn.Linear(c.encoder_dim, 256), nn.ReLU(), nn.Linear(256, 256),
                                                nn.ReLU(), nn.Linear(256, 3 * c.group_size))})
    opt = torch.optim.AdamW([*dvae.parameters(), *extra.parameters()], lr=1e-3, weight_decay=0.05)
    batches = cycle(dm.train_dataloader())
    for _ in range(steps):
        neighborhood, centers = dvae.group(next(batches)[0])
        f = dvae.encoder(neighborhood)
        if mode == "mlp":
            fine = extra["mlp"](f).reshape(*f.shape[:2], c.group_size, 3)
        else:
            if mode.startswith("full") or mode == "no_dgcnn2":
                z = dvae.dgcnn_1(f, centers).softmax(-1) @ dvae.codebook
                z = z if mode == "no_dgcnn2" else dvae.dgcnn_2(z, centers)
            elif mode == "dgcnn2_only":
                z = dvae.dgcnn_2(f, centers)
            else:
                z = extra["proj"](f)
            fine = dvae.decoder(z)[1]
        gt = neighborhood.flatten(0, 1)
        loss = chamfer_distance(fine.flatten(0, 1), gt, "l1")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    trivial = chamfer_distance(torch.zeros_like(gt[:, :1]), gt, "l1").item()
    return loss.item(), fine.norm(dim=-1).mean().item(), trivial


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--preset", default="point_bert_dvae_tiny")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--group-size", type=int, default=None, help="points per patch (default: the preset's)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for mode in args.modes:
        loss, spread, trivial = run(mode, args.steps, args.preset, args.group_size)
        print(f"{mode:12s} fine Chamfer-L1 {loss:.4f} (all points at the centre: {trivial:.4f}); "
              f"mean |point| {spread:.4f} after {args.steps} steps", flush=True)


if __name__ == "__main__":
    main()
