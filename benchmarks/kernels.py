"""Which attention kernels a ViT-B/16 bf16 training step runs, from ``torch.profiler``: the SDPA op
(flash / cuDNN / memory-efficient / math) and, on GPU, the device kernels behind it.

    python benchmarks/kernels.py                  # GPU if present, else CPU
    python benchmarks/kernels.py --model vit_small_patch16_224 --batch 8 --device cpu
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mmzoo  # noqa: E402

ATTENTION_WORDS = ("attention", "flash", "fmha", "cudnn", "sdpa", "softmax")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vit_base_patch16_224")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None, help="default: 64 on GPU, 4 on CPU")
    args = p.parse_args()
    device = torch.device(args.device)
    batch = args.batch or (64 if device.type == "cuda" else 4)
    model = mmzoo.create_model(args.model).to(device)
    x = torch.randn(batch, 3, 224, 224, device=device)
    y = torch.randint(0, model.num_classes, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()

    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    ops, kernels = Counter(), Counter()
    for e in prof.events():
        if any(w in e.name.lower() for w in ATTENTION_WORDS):
            on_device = e.device_type == torch.autograd.DeviceType.CUDA
            (kernels if on_device else ops)[e.name] += 1
    print(f"# {args.model} bf16 training step, batch {batch}, {device}")
    print("## attention ops (CPU side)")
    for name, n in ops.most_common():
        print(f"{n:5d}  {name}")
    if device.type == "cuda":
        print("## device kernels")
        for name, n in kernels.most_common():
            print(f"{n:5d}  {name[:160]}")
    fused = any("flash" in n or "cudnn" in n or "efficient" in n for n in ops)
    print(f"# fused SDPA kernel used: {fused}; math fallback used: {any('_math' in n for n in ops)}")


if __name__ == "__main__":
    main()
