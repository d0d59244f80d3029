"""dVAE validation Chamfer-L1 at initialisation (same seed as the run) and after training, plus
codebook usage. Run after `train.py model=point_bert_dvae ... hydra.run.dir=RUN`:
    PYTHONPATH=$PWD python benchmarks/point_bert_dvae.py RUN/checkpoints/last.ckpt --num-points 512 --seed 42
"""
from __future__ import annotations

import argparse

import torch

import mmzoo
from mmzoo.data.points import ProceduralShapesDataset
from mmzoo.layers import chamfer_distance


@torch.no_grad()
def evaluate(model, points: torch.Tensor, batch: int = 50) -> tuple[float, float]:
    model.eval()
    total, counts = 0.0, torch.zeros(model.cfg.num_tokens)
    for i in range(0, len(points), batch):
        out = model(points[i:i + batch])
        total += chamfer_distance(out.fine.flatten(0, 1), out.neighborhood.flatten(0, 1), "l1").item() * len(out.fine)
        counts += torch.bincount(out.logits.argmax(-1).flatten(), minlength=model.cfg.num_tokens)
    return total / len(points), float((counts > 0).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--num-points", type=int, default=512, help="as data.num_points of the run")
    ap.add_argument("--num-val", type=int, default=200)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    trained = mmzoo.create_model(pretrained=args.checkpoint)
    torch.manual_seed(args.seed)  # train.py seeds before building the model: same initial weights
    initial = mmzoo.create_model(trained.model_name, **{k: getattr(trained.cfg, k) for k in ("num_groups", "group_size")})
    val = ProceduralShapesDataset(args.num_val, args.num_points, args.seed, "val").points
    c0, u0 = evaluate(initial, val)
    c1, u1 = evaluate(trained, val)
    print(f"val Chamfer-L1 initial {c0:.4f} -> trained {c1:.4f} (ratio {c1 / c0:.3f}); "
          f"codebook usage {u0:.3f} -> {u1:.3f}")


if __name__ == "__main__":
    main()
