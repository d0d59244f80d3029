"""Fused (SDPA) vs reference attention path of ``mmzoo.layers.Attention`` at 1k-8k tokens: time and
peak memory of forward + backward. The fused path never materialises the (L, L) score matrix, so its
memory grows linearly with the length; the reference path's grows quadratically.

Each measurement runs in a fresh process (peak memory = the process's high-water mark above what it
held before the step: ``ru_maxrss`` on CPU, ``max_memory_allocated`` on GPU).

    python benchmarks/attention.py                      # CPU: L = 1024 2048 4096 8192, 2 heads of 64
    python benchmarks/attention.py --device cuda --heads 16 --batch 4
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmzoo.layers import Attention  # noqa: E402


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    torch.manual_seed(0)
    dim = args.heads * args.head_dim
    attn = Attention(dim, num_heads=args.heads, fused_attn=args.path == "fused").to(device)
    x = torch.randn(args.batch, args.length, dim, device=device, requires_grad=True)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            out = attn(x, is_causal=args.causal)
        out.float().sum().backward()

    step()  # warm-up: kernels, allocator pools, gradient buffers
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = rss_bytes()
    t0 = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    print(json.dumps({"time_s": time.perf_counter() - t0, "peak_bytes": max(peak, 0)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--causal", action="store_true")
    p.add_argument("--_child", choices=["fused", "reference"], dest="path", help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.path:
        return child(args)
    print(f"# Attention fwd+bwd, batch {args.batch}, {args.heads} heads x {args.head_dim}, {args.dtype}, "
          f"causal {args.causal}, {args.device}; load {os.getloadavg()[0]:.2f}")
    print(f"{'L':>6} {'fused ms':>10} {'fused MiB':>10} {'ref ms':>10} {'ref MiB':>10} {'mem ref/fused':>14}")
    rows = []
    for length in args.lengths:
        res = {}
        for path in ("fused", "reference"):
            cmd = [sys.executable, __file__, "--_child", path, "--length", str(length), "--device", args.device,
                   "--dtype", args.dtype, "--batch", str(args.batch), "--heads", str(args.heads),
                   "--head-dim", str(args.head_dim)] + (["--causal"] if args.causal else [])
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(out.stderr[-2000:])
            res[path] = json.loads(out.stdout.strip().splitlines()[-1])
        f, r = res["fused"], res["reference"]
        rows.append((length, f["peak_bytes"]))
        print(f"{length:6d} {1000 * f['time_s']:10.1f} {f['peak_bytes'] / 2**20:10.1f} {1000 * r['time_s']:10.1f} "
              f"{r['peak_bytes'] / 2**20:10.1f} {r['peak_bytes'] / max(f['peak_bytes'], 1):14.1f}", flush=True)
    if len(rows) > 1:
        (l0, m0), (l1, m1) = rows[0], rows[-1]
        print(f"# fused memory growth {l0}->{l1} tokens: x{m1 / max(m0, 1):.1f} for x{l1 / l0:.0f} length "
              f"(linear: x{l1 / l0:.0f}, quadratic: x{(l1 / l0) ** 2:.0f}); load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
