"""Farthest point sampling time on 8192-point clouds as the number of centres grows (expected linear),
plus kNN grouping and Chamfer distance. Prints figures; run:
    PYTHONPATH=$PWD python benchmarks/point_ops.py [--batch 8] [--repeats 3]
"""
from __future__ import annotations

import argparse
import time

import torch

from mmzoo.layers import chamfer_distance, farthest_point_sample, group_points


def timed(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--points", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    xyz = torch.rand(args.batch, args.points, 3)
    print(f"torch threads: {torch.get_num_threads()}, batch {args.batch} x {args.points} points")
    for m in (64, 128, 256, 512, 1024):
        t = timed(lambda: farthest_point_sample(xyz, m), args.repeats)
        print(f"FPS {m:5d} centres: {1000 * t:8.1f} ms  ({1000 * t / m:.3f} ms per centre)")
    t = timed(lambda: group_points(xyz, 512, 32), args.repeats)
    print(f"group_points 512 x 32: {1000 * t:8.1f} ms")
    y = torch.rand(args.batch, 2048, 3)
    t = timed(lambda: chamfer_distance(xyz[:, :2048], y, "l1"), args.repeats)
    print(f"chamfer L1 2048 x 2048: {1000 * t:8.1f} ms")


if __name__ == "__main__":
    main()
