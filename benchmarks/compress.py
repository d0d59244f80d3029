"""Compression figures of mmzoo.compress on a ViT trained here on the built-in ``digits`` (CPU, minutes).

1. Pruning: accuracy against sparsity per granularity (fine-grained, rows / channels, attention heads), each
   round pruned from the previous one and retrained with the masks held (Han et al. 2015's loop), beside the
   same sparsity pruned in one shot from the dense model without retraining; the real size of each sparse
   export (``export_sparse``, a safetensors file) in bytes.
2. Quantization: accuracy, model bytes and latency of fp32, k-means 2 / 4 / 8 bits (and 2 bits with its
   centroids fine-tuned), int8 weights (W8), W8A8 (static calibrated and dynamic per-token activations, integer
   GEMM ``torch._int_mm``) and W8A8 after SmoothQuant; plus one large linear layer (fp32 GEMM vs int8 GEMM) to
   show the kernel's speed apart from the tiny model's overheads.

``--outlier-scale 30`` adds a controlled SmoothQuant case: two input channels of every ``qkv`` / ``fc1`` are
made 30 times larger (LayerNorm weight and bias times 30, the linear's columns divided by 30: the float model
is unchanged), then W8A8 runs with and without SmoothQuant (``--outliers-only``: just that).

Prints Markdown tables and writes ``compress.json`` to ``--out``.

    PYTHONPATH=$PWD python benchmarks/compress.py --out /tmp/compress --seeds 0 1 2

Every figure is measured per seed (split, initialisation and training order all follow the seed); tables show
the mean and, with several seeds, the min..max range. Latency: one thread, median of repeated forwards.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mmzoo.compress import (calibrate, export_sparse, iterative_prune, model_bytes, prune, quantize_int8,
                            quantize_kmeans, smooth_quant)
from mmzoo.compress.quantization import int8_matmul
from mmzoo.data import DigitsDataModule
from mmzoo.models import create_model
from mmzoo.tasks.base import param_groups_weight_decay, warmup_cosine
from mmzoo.tasks.stages import cycle

SCHEDULES = {"fine": [0.5, 0.7, 0.8, 0.9, 0.95], "row": [0.25, 0.5, 0.625, 0.75], "head": [0.25, 0.5, 0.75]}


def train(model, loader, steps: int, lr: float, weight_decay: float = 0.05) -> None:
    """AdamW + warmup-cosine for ``steps`` steps (masks, if any, stay applied: they are parametrizations)."""
    opt = torch.optim.AdamW(param_groups_weight_decay(model, weight_decay), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, max(1, steps // 20), steps, 0.01))
    model.train()
    batches = cycle(loader)
    for _ in range(steps):
        x, y = next(batches)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()


@torch.no_grad()
def accuracy(model, loader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(-1) == y).sum().item()
        total += len(y)
    return 100.0 * correct / total


@torch.no_grad()
def latency_ms(model, x, repeats: int) -> float:
    """Median wall time of one forward of ``x`` (after two warm-up calls)."""
    model.eval()
    for _ in range(2):
        model(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def pruning_curves(model, data, args, out: Path, seed: int) -> list[dict]:
    rows = []
    test = data.test_dataloader()
    for granularity, schedule in SCHEDULES.items():
        pruned = copy.deepcopy(model)
        one_shot = {}
        for s in schedule:
            m = copy.deepcopy(model)
            prune(m, s, granularity)
            one_shot[s] = accuracy(m, test)

        sizes = {}

        def retrain(m, s):
            train(m, data.train_dataloader(), args.retrain_steps, args.retrain_lr)
            sizes[s] = export_sparse(m, out / f"pruned_{granularity}_{seed}.safetensors")  # real file size

        rounds = iterative_prune(pruned, schedule, retrain, granularity, evaluate=lambda m: accuracy(m, test))
        for r in rounds:
            r.update(granularity=granularity, seed=seed, one_shot=one_shot[r["target"]], bytes=sizes[r["target"]])
        for r in rounds:
            print(json.dumps(r), flush=True)
        rows += rounds
    return rows


def quantization_rows(model, data, args, seed: int) -> list[dict]:
    test = data.test_dataloader()
    x_lat = next(iter(test))[0][: args.latency_batch]
    calib = [x for i, (x, _) in zip(range(args.calib_batches), data.train_dataloader())]
    rows = []

    def add(label, m):
        row = {"method": label, "seed": seed, "acc": accuracy(m, test), "bytes": model_bytes(m),
               "latency_ms": latency_ms(m, x_lat, args.latency_repeats)}
        rows.append(row)
        print(json.dumps(row), flush=True)

    add("fp32", model)
    for bits in (8, 4, 2):
        add(f"k-means {bits} bit", quantize_kmeans(copy.deepcopy(model), bits))
    m = quantize_kmeans(copy.deepcopy(model), 2)
    # fine-tune the shared centroids (and the float parameters: norms, embeddings, head); indices stay fixed
    train(m, data.train_dataloader(), args.retrain_steps, args.retrain_lr)
    add("k-means 2 bit + fine-tuning (centroids, float params)", m)
    add("int8 weights (W8, per channel)", quantize_int8(copy.deepcopy(model)))
    add("W8A8 dynamic (per token)", quantize_int8(copy.deepcopy(model), "dynamic"))
    cal = calibrate(model, calib)
    add("W8A8 static (calibrated)", quantize_int8(copy.deepcopy(model), "static", cal))
    m = copy.deepcopy(model)
    smooth_quant(m, calib, alpha=args.alpha)
    add(f"W8A8 static + SmoothQuant (alpha {args.alpha})", quantize_int8(m, "static", calibrate(m, calib)))
    return rows


@torch.no_grad()
def add_outlier_channels(model, scale: float, channels=(0, 1)) -> None:
    """Give the inputs of every block's ``attn.qkv`` and ``mlp.fc1`` outlier channels without changing the float
    function: the LayerNorm's weight and bias of ``channels`` times ``scale``, the linear's columns divided by it
    (the pattern SmoothQuant targets: a few activation channels far larger than the rest)."""
    from mmzoo.layers.block import Block

    for blk in model.modules():
        if isinstance(blk, Block):
            for norm, lin in ((blk.norm1, blk.attn.qkv), (blk.norm2, blk.mlp.fc1)):
                for c in channels:
                    norm.weight[c] *= scale
                    norm.bias[c] *= scale
                    lin.weight[:, c] /= scale


def outlier_rows(model, data, args, seed: int) -> list[dict]:
    """W8A8 with and without SmoothQuant on the model given outlier input channels (same float function)."""
    test = data.test_dataloader()
    calib = [x for i, (x, _) in zip(range(args.calib_batches), data.train_dataloader())]
    m = copy.deepcopy(model)
    add_outlier_channels(m, args.outlier_scale)
    label = f"outlier channels x{args.outlier_scale:g}"
    rows = [{"method": f"{label}: fp32", "acc": accuracy(m, test)}]
    rows.append({"method": f"{label}: W8A8 static", "acc": accuracy(quantize_int8(copy.deepcopy(m), "static",
                                                                                   calibrate(m, calib)), test)})
    rows.append({"method": f"{label}: W8A8 dynamic (per token)",
                 "acc": accuracy(quantize_int8(copy.deepcopy(m), "dynamic"), test)})
    smooth_quant(m, calib, alpha=args.alpha)
    rows.append({"method": f"{label}: W8A8 static + SmoothQuant (alpha {args.alpha})",
                 "acc": accuracy(quantize_int8(m, "static", calibrate(m, calib)), test)})
    for r in rows:
        r.update(seed=seed, bytes=0, latency_ms=0.0)
        print(json.dumps(r), flush=True)
    return rows


def gemm_row(args) -> dict:
    """fp32 matmul vs int8 GEMM (int32 accumulation) of a large linear layer, one thread."""
    torch.manual_seed(0)
    M, K, N = 256, 1024, 4096
    xf, wf = torch.randn(M, K), torch.randn(N, K)
    xq = torch.randint(-127, 128, (M, K), dtype=torch.int8)
    wq = torch.randint(-127, 128, (N, K), dtype=torch.int8)

    def timed(fn):
        for _ in range(2):
            fn()
        t = []
        for _ in range(args.latency_repeats):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(t)

    return {"shape": [M, K, N], "fp32_ms": timed(lambda: xf @ wf.t()),
            "int8_ms": timed(lambda: int8_matmul(xq, wq.t()))}


def summarise(rows: list[dict], key: str, fields: list[str]) -> dict:
    groups: dict = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in key.split(",")), []).append(r)
    out = {}
    for k, rs in groups.items():
        out[k] = {f: (statistics.mean(r[f] for r in rs), min(r[f] for r in rs), max(r[f] for r in rs))
                  for f in fields if all(f in r for r in rs)}
    return out


def fmt(v, digits=1, show_range=True):
    mean, lo, hi = v
    return f"{mean:.{digits}f}" + (f" ({lo:.{digits}f}..{hi:.{digits}f})" if show_range and lo != hi else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("compress_out"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--model", default="vit_micro_patch4_32")
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--train-steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--retrain-steps", type=int, default=50)
    p.add_argument("--retrain-lr", type=float, default=5e-4)
    p.add_argument("--calib-batches", type=int, default=4)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--latency-batch", type=int, default=64)
    p.add_argument("--latency-repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--outlier-scale", type=float, default=0.0,
                   help="> 0: also W8A8 with / without SmoothQuant after giving 2 input channels of every qkv / fc1 "
                        "this factor (function-preserving)")
    p.add_argument("--outliers-only", action="store_true", help="only the base models and the outlier rows")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    t_start = time.time()
    prune_rows, quant_rows, base = [], [], []
    for seed in args.seeds:
        torch.manual_seed(seed)
        data = DigitsDataModule(batch_size=64, seed=seed, image_size=args.image_size, eval_batch_size=256)
        data.setup("fit")
        model = create_model(args.model, img_size=args.image_size, in_chans=1, num_classes=10, embed_dim=args.embed_dim)
        train(model, data.train_dataloader(), args.train_steps, args.lr)
        acc = accuracy(model, data.test_dataloader())
        base.append({"seed": seed, "acc": acc, "params": sum(p.numel() for p in model.parameters()),
                     "dense_export_bytes": export_sparse(model, args.out / "dense.safetensors")})
        print(json.dumps(base[-1]), flush=True)
        if not args.outliers_only:
            quant_rows += quantization_rows(model, data, args, seed)
        if args.outlier_scale > 0:
            quant_rows += outlier_rows(model, data, args, seed)
        if not args.outliers_only:
            prune_rows += pruning_curves(model, data, args, args.out, seed)
        report(args, base, prune_rows, quant_rows, t_start)  # after every seed: a partial run still reports


def report(args, base, prune_rows, quant_rows, t_start) -> None:
    """Write compress.json and print the tables over the seeds done so far."""
    gemm = gemm_row(args)
    results = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "base": base, "pruning": prune_rows, "quantization": quant_rows, "gemm": gemm,
               "seconds": time.time() - t_start, "load_avg": os.getloadavg(), "torch": torch.__version__}
    (args.out / "compress.json").write_text(json.dumps(results, indent=1))

    dense = statistics.mean(b["dense_export_bytes"] for b in base)
    accs = [b["acc"] for b in base]
    acc = fmt((statistics.mean(accs), min(accs), max(accs)))
    print(f"\nbase: {args.model} (embed_dim {args.embed_dim}) at {args.image_size}px, test acc {acc}%, "
          f"dense export {dense:,.0f} bytes, seeds {[b['seed'] for b in base]}")
    print("\n| granularity | target | weight sparsity | acc one-shot | acc pruned (iterative) | acc retrained "
          "| export bytes |")
    print("|---|---|---|---|---|---|---|")
    for (g, t), v in ({} if not prune_rows else summarise(prune_rows, "granularity,target",
                               ["weight_sparsity", "one_shot", "pruned", "retrained", "bytes"])).items():
        print(f"| {g} | {t:.3f} | {fmt(v['weight_sparsity'], 3, False)} | {fmt(v['one_shot'])} | {fmt(v['pruned'])} | "
              f"{fmt(v['retrained'])} | {v['bytes'][0]:,.0f} ({v['bytes'][0] / dense:.2f}x) |")
    print("\n| method | acc | model bytes | latency ms (batch %d) |" % args.latency_batch)
    print("|---|---|---|---|")
    for (m,), v in summarise(quant_rows, "method", ["acc", "bytes", "latency_ms"]).items():
        measured = v["bytes"][0] > 0  # the outlier rows measure accuracy only
        size = f"{v['bytes'][0]:,.0f}" if measured else "n/a"
        latency = fmt(v["latency_ms"], 2) if measured else "n/a"
        print(f"| {m} | {fmt(v['acc'])} | {size} | {latency} |")
    print(f"\nGEMM {gemm['shape']}: fp32 {gemm['fp32_ms']:.2f} ms, int8 (torch._int_mm) {gemm['int8_ms']:.2f} ms")
    print(f"total {results['seconds']:.0f} s, load average {results['load_avg']}")


if __name__ == "__main__":
    main()
