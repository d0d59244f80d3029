"""Compare TimeSformer's five attention schemes at one clip size: parameters, forward FLOPs, peak memory
and time per training step, plus top-1 read from training runs.

    python benchmarks/timesformer_schemes.py                       # tiny preset, 8x32x32 clips, batch 32
    python benchmarks/timesformer_schemes.py --runs /tmp/ts_runs   # + top-1 from RUNS/<scheme>/metrics.json
    python benchmarks/timesformer_schemes.py --preset timesformer_base --batch 1 --steps 2   # ViT-B, 8x224

The top-1 runs come from ``python train.py model=timesformer model.attention=<scheme>
hydra.run.dir=RUNS/<scheme>``. Each scheme is measured in its own process so that peak memory is
its own: CUDA's ``max_memory_allocated`` on a GPU, else the growth of the process's peak resident set
(``ru_maxrss``) over the training steps (activations, gradients and optimizer state). FLOPs are
counted by ``mmzoo.flops.flop_counter`` (matmuls, convolutions and attention) for one
forward pass. ``--wandb`` also logs the table to W&B (offline without an API key).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

SCHEMES = ("space_only", "joint_space_time", "divided_space_time", "sparse_local_global", "axial")
SHORT = {"space_only": "S", "joint_space_time": "ST", "divided_space_time": "T+S", "sparse_local_global": "L+G",
         "axial": "T+W+H"}


def measure(args: argparse.Namespace, scheme: str) -> dict:
    """One scheme, in this process."""
    import mmzoo
    from mmzoo.flops import flop_counter

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = mmzoo.create_model(args.preset, attention=scheme, num_frames=args.frames).to(device)
    size = model.cfg.img_size if isinstance(model.cfg.img_size, int) else model.cfg.img_size[0]
    x = torch.randn(args.batch, 3, args.frames, size, size, device=device)
    y = torch.randint(max(model.num_classes, 1), (args.batch,), device=device)
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad(), flop_counter() as fc:
        model.eval()(x[:1])
    flops = fc.get_total_flops()  # per clip
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()  # warm-up (allocates gradients and optimizer state)
    times = []
    for _ in range(args.steps):
        sync()
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024  # Linux: KiB
    return {"scheme": scheme, "params": params, "gflops": flops / 1e9, "peak_mb": peak_mb,
            "step_ms": 1000 * statistics.median(times)}


def top1(runs: Path | None, scheme: str) -> float | None:
    if runs is None or not (runs / scheme / "metrics.json").is_file():
        return None
    m = json.loads((runs / scheme / "metrics.json").read_text())
    return m.get("test/acc1", m.get("val/acc1"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="timesformer_tiny")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5, help="timed training steps (median reported)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=Path, default=None, help="directory of RUNS/<scheme>/metrics.json")
    ap.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=SCHEMES)
    ap.add_argument("--wandb", action="store_true", help="log the table to W&B (offline without an API key)")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args._child:
        print(json.dumps(measure(args, args._child)))
        return
    rows = []
    for scheme in args.schemes:
        cmd = [sys.executable, __file__, "--_child", scheme, "--preset", args.preset, "--frames", str(args.frames),
               "--batch", str(args.batch), "--steps", str(args.steps), "--device", args.device,
               "--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["top1"] = top1(args.runs, scheme)
        rows.append(row)
        print(f"measured {scheme}", file=sys.stderr, flush=True)
    print(f"\n{args.preset}, {args.frames} frames, batch {args.batch}, {args.device} ({args.threads} threads)\n")
    print("| scheme | top-1 (%) | parameters | forward GFLOPs / clip | peak memory (MB) | train step (ms) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        acc = "-" if r["top1"] is None else f"{100 * r['top1']:.1f}"
        print(f"| {r['scheme']} ({SHORT[r['scheme']]}) | {acc} | {r['params']:,} | {r['gflops']:.3f} | "
              f"{r['peak_mb']:.0f} | {r['step_ms']:.0f} |")
    if args.wandb:
        from mmzoo.loggers import wandb_logger

        import wandb

        logger = wandb_logger(project="mmzoo", name=f"timesformer_schemes_{args.preset}", save_dir="wandb_runs")
        cols = ["scheme", "top1", "params", "gflops", "peak_mb", "step_ms"]
        table = wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in rows])
        logger.experiment.log({"timesformer/scheme_comparison": table})
        logger.experiment.finish()


if __name__ == "__main__":
    main()
