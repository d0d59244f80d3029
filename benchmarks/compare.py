"""mmzoo against timm and open_clip on this machine: training-step and inference time, peak memory,
FLOP/s (MFU on GPU).

Same process, same shapes, dtype and batch; runs are interleaved (A B A B ...) and each figure is the
median over ``--rounds`` rounds after ``--warmup`` rounds. A training step is forward, loss, backward,
optimizer step and zero_grad, each library with its own optimizer recipe: mmzoo's
(:func:`mmzoo.tasks.base.build_adamw`: decay groups, foreach/fused AdamW), timm's
``create_optimizer_v2("adamw")``, open_clip's training script (AdamW over decay / no-decay groups).

    python benchmarks/compare.py                          # CPU fp32, ~5-8 min on 2 idle cores
    python benchmarks/compare.py --dtype bf16             # bf16 autocast (trainer.precision=bf16-mixed)
    python benchmarks/compare.py --compile                # torch.compile on both sides (mmzoo: per block)
    python benchmarks/compare.py --compile model          # mmzoo compiled whole, as the reference
    python benchmarks/compare.py --device cuda --dtype bf16 --batch-scale 16   # GPU (benchmarks/gpu.sh)

Figures are printed, never asserted; record the machine load next to them.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mmzoo  # noqa: E402
from mmzoo.flops import flop_counter  # noqa: E402
from mmzoo.models.speed import compile_model  # noqa: E402
from mmzoo.tasks.base import build_adamw  # noqa: E402

# dense bf16 peak FLOP/s of the accelerators MFU is reported against (vendor datasheets, no sparsity)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "A10G": 125e12, "L4": 121e12,
             "L40S": 362e12, "RTX 4090": 165e12, "B200": 2250e12}
# name: (mmzoo preset, reference library, reference name, CPU batch)
PAIRS = {
    "vit_small_patch16_224": ("vit_small_patch16_224", "timm", "vit_small_patch16_224", 16),
    "vit_base_patch16_224": ("vit_base_patch16_224", "timm", "vit_base_patch16_224", 8),
    "clip_vit_b32": ("clip_vit_b32", "open_clip", "ViT-B-32", 32),
}


def device_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16.items():
        if key in name:
            return peak
    return None


def build(pair: str, side: str, device: torch.device) -> tuple[nn.Module, str]:
    mm_name, lib, ref_name, _ = PAIRS[pair]
    if side == "mmzoo":
        return mmzoo.create_model(mm_name).to(device), "clip" if lib == "open_clip" else "vit"
    if lib == "timm":
        import timm
        return timm.create_model(ref_name).to(device), "vit"
    import open_clip
    return open_clip.create_model(ref_name).to(device), "clip"


def make_optimizer(model: nn.Module, side: str, lib: str) -> torch.optim.Optimizer:
    if side == "mmzoo":
        return build_adamw(model, lr=1e-4, weight_decay=0.05)
    if lib == "timm":
        from timm.optim import create_optimizer_v2
        return create_optimizer_v2(model, "adamw", lr=1e-4, weight_decay=0.05)
    # open_clip's training/main.py: no decay for gains, biases, embeddings, logit_scale
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
              {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": 0.05}]
    return torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.98), eps=1e-6)


def make_inputs(kind: str, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = {"images": torch.randn(batch, 3, 224, 224, generator=g).to(device)}
    if kind == "vit":
        x["labels"] = torch.randint(0, 1000, (batch,), generator=g).to(device)
    else:
        x["tokens"] = torch.randint(1, 49407, (batch, 77), generator=g).to(device)
    return x


def forward_loss(model: nn.Module, kind: str, side: str, x: dict[str, torch.Tensor]) -> torch.Tensor:
    if kind == "vit":
        return F.cross_entropy(model(x["images"]), x["labels"])
    out = model(x["images"], x["tokens"])
    img, txt, scale = (out.image_features, out.text_features, out.logit_scale) if side == "mmzoo" else out[:3]
    logits = scale * img @ txt.T
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """One side of a comparison: model, optimizer, inputs, and timed train / inference steps."""

    def __init__(self, pair: str, side: str, args: argparse.Namespace, device: torch.device) -> None:
        self.side, self.device = side, device
        self.lib = PAIRS[pair][1]
        self.model, self.kind = build(pair, side, device)
        if args.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if args.compile:
            if side == "mmzoo":
                compile_model(self.model, args.compile)  # "blocks" (model.compile=true) or "model"
            else:
                self.model.compile()
        self.opt = make_optimizer(self.model, side, self.lib)
        self.x = make_inputs(self.kind, args.batch[pair], device)
        if args.channels_last:
            self.x["images"] = self.x["images"].contiguous(memory_format=torch.channels_last)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def train_step(self) -> None:
        self.model.train()
        with self.autocast:
            loss = forward_loss(self.model, self.kind, self.side, self.x)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    @torch.inference_mode()
    def infer_step(self) -> None:
        self.model.eval()
        with self.autocast:
            if self.kind == "vit":
                self.model(self.x["images"])
            else:
                self.model(self.x["images"], self.x["tokens"])

    def timed(self, fn: Callable[[], None]) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        fn()
        sync(self.device)
        return time.perf_counter() - t0

    def flops(self, train: bool) -> float:
        """FLOPs of one step (forward, plus backward when training), counted by mmzoo.flops.flop_counter (torch's FlopCounterMode + the CPU flash kernel)."""
        with flop_counter() as counter:
            if train:
                self.model.train()
                with self.autocast:
                    loss = forward_loss(self.model, self.kind, self.side, self.x)
                loss.backward()
                self.opt.zero_grad(set_to_none=True)
            else:
                self.infer_step()
        return float(counter.get_total_flops())


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory_child(pair: str, side: str, mode: str, args: argparse.Namespace) -> None:
    """Run in a fresh process: peak memory of ``mode`` steps above the memory held before the first."""
    device = torch.device(args.device)
    r = Runner(pair, side, args, device)
    step = r.train_step if mode == "train" else r.infer_step
    if device.type == "cuda":
        step()  # optimizer state exists from the first step on: count it in the baseline
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        step()
        base = rss_bytes()
        before_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        step()
        after_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        peak = max(after_max, before_max) - base
    print(f"PEAK {peak}")


def peak_memory(pair: str, side: str, mode: str, args: argparse.Namespace) -> float:
    cmd = [sys.executable, __file__, "--_memory", pair, side, mode, "--device", args.device, "--dtype", args.dtype,
           "--threads", str(args.threads), "--batch-scale", str(args.batch_scale)]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    if args.channels_last:
        cmd.append("--channels-last")
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    for line in out.stdout.splitlines():
        if line.startswith("PEAK "):
            return int(line.split()[1]) / 2**20
    raise RuntimeError(f"memory measurement of {pair}/{side} failed:\n{out.stderr[-2000:]}")


def compare(pair: str, args: argparse.Namespace, device: torch.device) -> list[str]:
    torch.manual_seed(0)
    runners = {side: Runner(pair, side, args, device) for side in ("mmzoo", "ref")}
    lib = PAIRS[pair][1]
    rows = []
    for mode in ("train", "infer"):
        times: dict[str, list[float]] = {"mmzoo": [], "ref": []}
        for r in range(args.warmup + args.rounds):
            order = ("mmzoo", "ref") if r % 2 == 0 else ("ref", "mmzoo")  # alternate who goes first
            for side in order:
                run = runners[side]
                t = run.timed(run.train_step if mode == "train" else run.infer_step)
                if r >= args.warmup:
                    times[side].append(t)
        med = {s: statistics.median(v) for s, v in times.items()}
        flops = runners["mmzoo"].flops(mode == "train")
        peak = device_peak(device)
        fps = flops / med["mmzoo"]
        mfu = f"{100 * fps / peak:5.1f}%" if peak else "  n/a"
        mem = ""
        if args.memory:
            m, ref = (peak_memory(pair, s, mode, args) for s in ("mmzoo", "ref"))
            mem = f"  peak MiB mmzoo {m:7.0f} {lib} {ref:7.0f}"
        batch = args.batch[pair]
        rows.append(f"{pair:22s} {mode:5s} b={batch:<3d} mmzoo {1000 * med['mmzoo']:8.1f} ms  {lib:9s} "
                    f"{1000 * med['ref']:8.1f} ms  ratio {med['mmzoo'] / med['ref']:.3f}  "
                    f"{batch / med['mmzoo']:7.1f} samples/s  {fps / 1e9:8.1f} GFLOP/s  MFU {mfu}{mem}")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (median)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=None, help="one batch for every model")
    p.add_argument("--batch-scale", type=int, default=1, help="multiply the CPU default batches (GPU: 16)")
    p.add_argument("--compile", nargs="?", const="blocks", default=False, choices=["blocks", "model"],
                   help="torch.compile both sides; mmzoo per block (model.compile=true, the default) or whole "
                        "model (model.compile=model); the reference always whole")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip peak-memory subprocesses")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--_memory", nargs=3, metavar=("PAIR", "SIDE", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.batch = {k: args.batch_size or v[3] * args.batch_scale for k, v in PAIRS.items()}
    if args._memory:
        pair, side, mode = args._memory
        return peak_memory_child(pair, "mmzoo" if side == "mmzoo" else "ref", mode, args)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# mmzoo vs timm / open_clip on {name}; torch {torch.__version__}; dtype {args.dtype}; "
          f"compile {args.compile}; median of {args.rounds} interleaved rounds after {args.warmup} warm-up; "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    for pair in args.models:
        compare(pair, args, device)
    print(f"# load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
