"""Compare the six fusion variants and a text-only baseline on the built-in shapes_vqa data.

Every variant trains with ``train.py``'s own pipeline (the composed Hydra config of
``python train.py model=fusion model.fusion=<variant>``) and the same budget, then is scored on the test
split. Printed per variant: test accuracy per question type and overall, parameters, forward FLOPs per
sample (``mmzoo.flops.flop_counter``, one batch), and the median wall time of a training
step (forward, backward, AdamW step on one batch, after warm-up). Usage::

    python benchmarks/fusion_variants.py --jobs 2              # the table of docs/models/fusion.md (CPU, minutes per variant)
    python benchmarks/fusion_variants.py --epochs 1 --num-train 2000 --variants early_sum text_only
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from mmzoo.flops import flop_counter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmzoo.data.shapes_vqa import QUESTION_TYPES  # noqa: E402
from mmzoo.models.fusion import FUSION_TYPES  # noqa: E402
from mmzoo.training import build, train  # noqa: E402

VARIANTS = ("text_only", *FUSION_TYPES)
LETTER = {"early_sum": "(a)", "early_concat": "(b)", "multi_to_one": "(c)", "one_to_multi": "(d)",
          "cross_attention": "(e)", "cross_attention_concat": "(f)", "text_only": "baseline"}


def overrides_for(variant: str, args: argparse.Namespace, out_dir: Path) -> list[str]:
    model = (["model.name=fusion_micro_text_only", "model.fusion=early_concat"] if variant == "text_only"
             else [f"model.fusion={variant}"])
    return ["model=fusion", *model, f"data.num_train={args.num_train}", f"data.num_val={args.num_eval}",
            f"data.num_test={args.num_eval}", f"data.batch_size={args.batch_size}", f"trainer.max_epochs={args.epochs}", f"task.lr={args.lr}",
            f"seed={args.seed}", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false", "callbacks.progress_bar=null", "callbacks.sample_predictions=null",
            "test_ckpt=last", f"paths.output_dir={out_dir / variant}", *args.override]


def measure(cfg, steps: int) -> dict[str, float]:
    """Parameters, forward FLOPs per sample, median training-step time on one batch of the config."""
    dm, task = build(cfg)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    model = task.model
    params = sum(p.numel() for p in model.parameters())
    B = batch["answer"].shape[0]
    model.eval()
    with torch.no_grad(), flop_counter() as counter:
        model(batch["image"], batch["text"], batch["text_padding_mask"])
    flops = counter.get_total_flops() / B
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(steps + 3):
        t0 = time.perf_counter()
        logits = model(batch["image"], batch["text"], batch["text_padding_mask"])
        loss = torch.nn.functional.cross_entropy(logits, batch["answer"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 3:  # warm-up steps excluded
            times.append(time.perf_counter() - t0)
    return {"params": params, "flops_per_sample": flops, "ms_per_step": 1000 * statistics.median(times),
            "batch_size": B}


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    """Measure, then train and test one variant (in this process)."""
    torch.set_num_threads(args.threads)
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides_for(variant, args, args.out_dir))
    row = {"variant": variant, **measure(cfg, args.timing_steps)}
    if not args.measure_only:
        t0 = time.perf_counter()
        metrics = train(cfg)
        row["train_minutes"] = (time.perf_counter() - t0) / 60
        row["acc"] = metrics["test/acc"]
        row.update({f"acc_{t}": metrics.get(f"test/acc_{t}", float("nan")) for t in QUESTION_TYPES})
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--num-train", type=int, default=12000)
    p.add_argument("--num-eval", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timing-steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per job")
    p.add_argument("--jobs", type=int, default=1, help="variants trained at once, each in its own process")
    p.add_argument("--out-dir", type=Path, default=Path("/tmp/mmzoo_fusion_variants"))
    p.add_argument("--measure-only", action="store_true", help="skip training (params, FLOPs, step time)")
    p.add_argument("override", nargs="*", help="extra train.py overrides, e.g. model.depth=3")
    args = p.parse_args()
    if args.jobs > 1:
        # separate processes: each variant's timing and training see only their own threads
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows = list(pool.map(run_variant, args.variants, [args] * len(args.variants)))
    else:
        rows = [run_variant(v, args) for v in args.variants]

    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    head = "| variant | " + " | ".join(QUESTION_TYPES) + " | overall | params | fwd MFLOPs/sample | ms/step |"
    print("\n" + head + "\n|" + "---|" * (head.count("|") - 1))
    for r in rows:
        accs = " | ".join(f"{100 * r[f'acc_{t}']:.1f}" for t in QUESTION_TYPES) if "acc" in r else \
            " | ".join("-" for _ in QUESTION_TYPES)
        overall = f"{100 * r['acc']:.1f}" if "acc" in r else "-"
        print(f"| {LETTER[r['variant']]} {r['variant']} | {accs} | {overall} | {r['params'] / 1e6:.3f}M | "
              f"{r['flops_per_sample'] / 1e6:.2f} | {r['ms_per_step']:.1f} |")


if __name__ == "__main__":
    main()
