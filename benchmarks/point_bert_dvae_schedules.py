"""What lets the tiny dVAE tokenizer learn informative tokens? Trains ``point_bert_dvae_tiny`` on
``procedural_shapes`` (512 points, seed 42) for ``--steps`` steps in a plain loop with one change per mode
and prints the val Chamfer-L1 of arg-max decoding (what Point-BERT's tokens are), codebook usage, token
perplexity and the spread of the logits:

  point_bert    Point-BERT's schedule: full Gumbel noise from the first step (task.noise_ramp=0)
  lr3           the same at lr 3e-3
  kl001         KL weight annealed 0 -> 0.01 instead of 0 -> 0.1
  kl0           no KL term
  linear_logits the logits from a plain linear layer (no GroupNorm + LeakyReLU)
  gamma5        the logits' GroupNorm gain initialised at 5
  hard          straight-through hard Gumbel samples
  no_noise      no Gumbel noise at all (softmax at the annealed temperature)
  ramp05        Gumbel noise ramped 0 -> 1 over the first half of the anneal (the task's default)
  ramp10        ... over the whole anneal

    python benchmarks/point_bert_dvae_schedules.py --steps 625 --modes point_bert ramp05 [--group-size 16]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mmzoo  # noqa: E402
from mmzoo.data import ProceduralShapesDataModule  # noqa: E402
from mmzoo.models.point_bert import DVAEOutput  # noqa: E402
from plain_loop import fit_dvae  # noqa: E402
from point_bert_dvae import evaluate  # noqa: E402

MODES = ["point_bert", "lr3", "kl001", "kl0", "linear_logits", "gamma5", "hard", "no_noise", "ramp05", "ramp10"]


def run(mode: str, steps: int, dm, group_size: int | None = None) -> dict:
    torch.manual_seed(0)
    dvae = mmzoo.create_model("point_bert_dvae_tiny", **({"group_size": group_size} if group_size else {}))
    proj = dvae.dgcnn_1.proj  # conv -> GroupNorm -> LeakyReLU: the token logits
    kw: dict = {"noise_ramp": {"ramp05": 0.5, "ramp10": 1.0}.get(mode, 0.0)}
    if mode == "lr3":
        kw["lr"] = 3e-3
    elif mode == "kl001":
        kw["kl_weight"] = (0.0, 0.01)
    elif mode == "kl0":
        kw["kl_weight"] = (0.0, 0.0)
    elif mode == "linear_logits":
        dvae.dgcnn_1.proj = nn.Conv1d(proj[0].in_channels, proj[0].out_channels, 1)
    elif mode == "gamma5":
        nn.init.constant_(proj[1].weight, 5.0)
    forward = dvae.forward
    if mode == "no_noise":  # the model's own noise scale, held at 0
        dvae.forward = lambda points, temperature=1.0, noise=1.0: forward(points, temperature, 0.0)
    elif mode == "hard":  # training-time samples only; eval still decodes the arg-max tokens
        def hard_sample(points, temperature=1.0, noise=1.0):
            if not dvae.training:
                return forward(points)
            neighborhood, centers = dvae.group(points)
            logits = dvae.encode(neighborhood, centers)
            coarse, fine = dvae.decode(F.gumbel_softmax(logits, tau=temperature, hard=True, dim=-1), centers)
            return DVAEOutput(neighborhood, centers, logits, coarse, fine)
        dvae.forward = hard_sample
    t0 = time.time()
    fit_dvae(dvae, dm.train_dataloader(), steps, **kw)
    return {"mode": mode, "steps": steps, **{k: round(v, 4) for k, v in evaluate(dvae, dm.val_dataloader()).items()},
            "minutes": round((time.time() - t0) / 60, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=625)
    ap.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--group-size", type=int, default=None, help="points per patch (default: the preset's 32)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dm = ProceduralShapesDataModule(batch_size=32, seed=42, num_points=512)
    dm.setup("fit")
    for mode in args.modes:
        print(json.dumps(run(mode, args.steps, dm, args.group_size)), flush=True)


if __name__ == "__main__":
    main()
