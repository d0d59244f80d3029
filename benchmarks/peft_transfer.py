"""Transfer table for mmzoo.peft. By default (``--base digits_split``): a ViT pretrained here on the real
``digits`` 0-4, adapted to the digits 5-9 (new classes, same domain) from ``--target-per-class`` labelled
images per class (10: 50 images; 0: the whole training split), with every method for the same number of
steps. Also: distillation (student alone vs distilled from the fully fine-tuned model) and pruning /
int8 quantization of that model. Prints a Markdown table and writes ``results.json``.

    PYTHONPATH=$PWD python benchmarks/peft_transfer.py --out /tmp/peft_transfer

``--base shapes`` pretrains the ViT on the built-in ``shapes`` instead and adapts it to all ten digits
(grey 8x8 scans upsampled to ``--image-size``; the 3-channel patch embedding is summed to one channel by
the checkpoint loader). ``--base clip --clip-checkpoint RUN/checkpoints/last.ckpt`` uses the image tower
of a CLIP trained by ``python train.py model=clip`` (on the ``shapes_captions`` scenes), adapted to
classifying the single shapes of ``shapes`` (8 classes, at the tower's image size, ``--target-train``
images).

Figures are single runs (seed 0) on CPU; time/step depends on the machine's load.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mmzoo.data import DigitsDataModule, ShapesDataModule
from mmzoo.models import create_model
from mmzoo.peft import apply_peft, count_parameters, merge_lora, save_adaptation, unmerge_lora
from mmzoo.peft.compress import magnitude_prune, model_bytes, prune_heads, quantize_int8
from mmzoo.tasks.base import param_groups_weight_decay, warmup_cosine
from mmzoo.tasks.distill import distillation_loss
from plain_loop import cycle, save_model_checkpoint


def train(model, loader, steps: int, lr: float, weight_decay: float = 0.05, teacher=None, T: float = 4.0,
          alpha: float = 0.0) -> float:
    """AdamW + warmup-cosine for ``steps`` steps; returns mean seconds per step (after 5 warmup steps)."""
    groups = param_groups_weight_decay(model, weight_decay)
    opt = torch.optim.AdamW(groups, lr=lr)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, steps, 0.01))
    model.train()
    batches = cycle(loader)
    times = []
    for step in range(steps):
        x, y = next(batches)
        t0 = time.perf_counter()
        logits = model(x)
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(x)
            loss = distillation_loss(logits, t_logits, y, T, alpha)
        else:
            loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        times.append(time.perf_counter() - t0)
    return sum(times[5:]) / max(1, len(times[5:]))


@torch.no_grad()
def accuracy(model, loader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(-1) == y).sum().item()
        total += len(y)
    return 100.0 * correct / total


def compress_rows(full_model, test_loader) -> list[dict]:
    """Accuracy and weight size of the fine-tuned model after each compression (on copies)."""
    base_acc = accuracy(full_model, test_loader)
    comp = [{"method": "fp32 (fine-tuned)", "acc": base_acc, "bytes": model_bytes(full_model)}]
    for label, fn in (
        ("magnitude 50% (global)", lambda m: magnitude_prune(m, 0.5, "global")),
        ("magnitude 80% (global)", lambda m: magnitude_prune(m, 0.8, "global")),
        ("magnitude 50% (per layer)", lambda m: magnitude_prune(m, 0.5, "layer")),
        ("heads 50% (structured)", lambda m: prune_heads(m, 0.5)),
        ("int8 per-channel", quantize_int8),
    ):
        m = copy.deepcopy(full_model)
        info = fn(m)
        acc = accuracy(m, test_loader)
        comp.append({"method": label, "acc": acc, "delta": acc - base_acc,
                     "bytes": model_bytes(m, info if isinstance(info, dict) else None)})
        print(json.dumps(comp[-1]), flush=True)
    return comp


def base_overrides(args) -> dict:
    """Config changes of the base ViT (``--embed-dim``: a wider base, same depth and heads)."""
    return {"embed_dim": args.embed_dim} if getattr(args, "embed_dim", None) else {}


def shapes_setting(args, out: Path, results: dict):
    """A ViT pretrained here on shapes (S x S RGB, 8 classes), adapted to digits (grey, 10 classes)."""
    S = args.image_size
    base_ckpt = out / "shapes_pretrained.ckpt"
    if not base_ckpt.exists():
        torch.manual_seed(0)
        shapes = ShapesDataModule(batch_size=128, seed=0, image_size=S, num_train=args.shapes_train, num_val=100,
                                  num_test=1000)
        shapes.setup("fit")
        model = create_model(args.model, num_classes=8, img_size=S, in_chans=3, **base_overrides(args))
        t = train(model, shapes.train_dataloader(), args.pretrain_steps, lr=2e-3)
        shapes.setup("test")
        acc = accuracy(model, shapes.test_dataloader())
        print(f"pretrained {args.model} on shapes: test acc {acc:.2f}% ({args.pretrain_steps} steps, {t:.3f} s/step)",
              flush=True)
        results["pretrain_shapes_acc"] = acc
        save_model_checkpoint(model, base_ckpt)
    digits = DigitsDataModule(batch_size=args.batch_size, seed=0, image_size=S)
    digits.setup("fit")
    digits.setup("test")
    return base_ckpt, S, 10, 1, digits.train_dataloader(), digits.test_dataloader()


def clip_setting(args, out: Path):
    """The image tower of a trained CLIP (saved as a plain mmzoo ViT), adapted to shapes (8 classes)."""
    if not args.clip_checkpoint:
        raise SystemExit("--base clip needs --clip-checkpoint RUN/checkpoints/last.ckpt (python train.py model=clip)")
    clip = create_model(pretrained=args.clip_checkpoint)
    if not hasattr(clip, "visual"):
        raise SystemExit(f"{args.clip_checkpoint} holds a {type(clip).__name__}, not a CLIP model")
    tower = clip.visual
    base_ckpt = save_model_checkpoint(tower, out / "clip_image_tower.ckpt")
    S = tower.cfg.img_size if isinstance(tower.cfg.img_size, int) else tower.cfg.img_size[0]
    shapes = ShapesDataModule(batch_size=args.batch_size, seed=1, image_size=S, num_train=args.target_train,
                              num_val=100, num_test=2000)
    shapes.setup("fit")
    shapes.setup("test")
    return base_ckpt, S, 8, 3, shapes.train_dataloader(), shapes.test_dataloader()


class _ClassSubset(torch.utils.data.Dataset):
    """The samples of ``classes`` (in that order) of a ``(x, y)`` data set, labels renumbered 0.."""

    def __init__(self, dataset, classes: list[int], per_class: int | None = None) -> None:
        self.dataset, self.remap = dataset, {c: i for i, c in enumerate(classes)}
        labels = [int(dataset[i][1]) for i in range(len(dataset))]
        self.indices = [i for i, y in enumerate(labels) if y in self.remap]
        if per_class is not None:  # the first ``per_class`` of each class
            counts = {c: 0 for c in classes}
            keep = []
            for i in self.indices:
                if counts[labels[i]] < per_class:
                    keep.append(i)
                    counts[labels[i]] += 1
            if min(counts.values()) < per_class:
                raise SystemExit(f"only {min(counts.values())} images in the smallest class, {per_class} asked for")
            self.indices = keep

    def set_epoch(self, epoch: int) -> None:  # the augmentation of the wrapped set follows the epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        x, y = self.dataset[self.indices[i]]
        return x, self.remap[int(y)]


def digits_split_setting(args, out: Path, results: dict):
    """A ViT pretrained here on the digits 0-4, adapted to the digits 5-9 (new classes, same domain)."""
    S = args.image_size
    digits = DigitsDataModule(batch_size=args.batch_size, seed=0, image_size=S)
    digits.setup("fit")
    digits.setup("test")

    def loader(ds, classes, shuffle):
        g = torch.Generator().manual_seed(0)
        return torch.utils.data.DataLoader(_ClassSubset(ds, classes), batch_size=args.batch_size, shuffle=shuffle,
                                           drop_last=shuffle, generator=g)

    first, second = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]
    base_ckpt = out / "digits04_pretrained.ckpt"
    if not base_ckpt.exists():
        torch.manual_seed(0)
        model = create_model(args.model, num_classes=5, img_size=S, in_chans=1, **base_overrides(args))
        t = train(model, loader(digits.train_set, first, True), args.pretrain_steps, lr=args.pretrain_lr)
        acc = accuracy(model, loader(digits.test_set, first, False))
        print(f"pretrained {args.model} on digits 0-4: test acc {acc:.2f}% ({args.pretrain_steps} steps, "
              f"{t:.3f} s/step)", flush=True)
        results["pretrain_digits04_acc"] = acc
        save_model_checkpoint(model, base_ckpt)
    elif getattr(args, "embed_dim", None):
        width = create_model(pretrained=str(base_ckpt)).cfg.embed_dim
        if width != args.embed_dim:
            raise SystemExit(f"{base_ckpt} holds a {width}-wide base but --embed-dim {args.embed_dim} was asked for; "
                             "use another --out or delete the file")
    if not args.target_per_class:
        return base_ckpt, S, 5, 1, loader(digits.train_set, second, True), loader(digits.test_set, second, False)
    # few labels: N training images per class of 5-9; the test set is 60% of their images (none of them trained on)
    target = DigitsDataModule(batch_size=args.batch_size, seed=1, image_size=S, fractions=(0.3, 0.1, 0.6))
    target.setup("fit")
    target.setup("test")
    train_few = _ClassSubset(target.train_set, second, args.target_per_class)
    g = torch.Generator().manual_seed(0)
    train_loader = torch.utils.data.DataLoader(train_few, batch_size=min(args.batch_size, len(train_few)),
                                               shuffle=True, drop_last=True, generator=g)
    results["target"] = {"train_images": len(train_few), "test_images": len(_ClassSubset(target.test_set, second))}
    print(f"digits 5-9: {len(train_few)} training images ({args.target_per_class} per class), "
          f"{results['target']['test_images']} test images", flush=True)
    return base_ckpt, S, 5, 1, train_loader, loader(target.test_set, second, False)


def scratch_model(args, base_ckpt: Path, num_classes: int, S: int, in_chans: int):
    """The base architecture with fresh weights (the "no pretraining" row)."""
    if args.base == "shapes":
        return create_model(args.model, num_classes=num_classes, img_size=S, in_chans=in_chans, **base_overrides(args))
    base = create_model(pretrained=str(base_ckpt), num_classes=num_classes)
    return type(base)(dataclasses.replace(base.cfg, num_classes=num_classes))  # same config, fresh init


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="vit_micro_patch4_32")
    ap.add_argument("--embed-dim", type=int, default=None, help="width of the base ViT (default: the preset's)")
    ap.add_argument("--student", default="vit_micro_patch4_32")
    ap.add_argument("--student-width", type=int, default=32, help="student embed_dim (depth 1)")
    ap.add_argument("--image-size", type=int, default=16, help="side of shapes and digits images")
    ap.add_argument("--shapes-train", type=int, default=16000)
    ap.add_argument("--pretrain-steps", type=int, default=3000)
    ap.add_argument("--pretrain-lr", type=float, default=2e-3, help="peak learning rate of the base's pretraining")
    ap.add_argument("--steps", type=int, default=1000, help="fine-tuning steps of every method")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="/tmp/peft_transfer")
    ap.add_argument("--base", choices=["shapes", "clip", "digits_split"], default="digits_split",
                    help="shapes: a ViT pretrained here on shapes, adapted to digits; clip: a trained CLIP's "
                         "image tower, adapted to shapes; digits_split: a ViT pretrained here on the digits "
                         "0-4, adapted to the digits 5-9")
    ap.add_argument("--target-per-class", type=int, default=10,
                    help="--base digits_split: labelled training images per class of 5-9 (0: all)")
    ap.add_argument("--lora-target", nargs="+", default=None,
                    help="module name patterns of the LoRA rows (default: the attention projections), e.g. "
                         "'blocks.*' for every block linear; an extra attention-only r=8 row is added")
    ap.add_argument("--clip-checkpoint", default=None, help="--base clip: a model=clip run's checkpoint")
    ap.add_argument("--target-train", type=int, default=4000, help="--base clip: shapes training images")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"args": vars(args), "rows": []}

    if args.base == "clip":
        base_ckpt, S, num_classes, in_chans, train_loader, test_loader = clip_setting(args, out)
        args.model = None  # the architecture comes from the saved tower
    elif args.base == "digits_split":
        base_ckpt, S, num_classes, in_chans, train_loader, test_loader = digits_split_setting(args, out, results)
    else:
        base_ckpt, S, num_classes, in_chans, train_loader, test_loader = shapes_setting(args, out, results)
    def lora(r: int, target=args.lora_target) -> dict:  # alpha / r = 2 for every rank
        return {"method": "lora", "r": r, "alpha": 2.0 * r, "target": target}  # target None: attention
    methods = [  # most informative first: partial results are printed row by row
        ("full fine-tuning", {"method": "none"}, 1e-3),
        ("LoRA r=8", lora(8), 3e-3),
        *([("LoRA r=8 (attention only)", lora(8, None), 3e-3)] if args.lora_target else []),
        ("linear probe", {"method": "linear_probe"}, 1e-2),
        ("BitFit", {"method": "bitfit"}, 1e-2),
        ("adapter (bottleneck 16)", {"method": "adapter", "bottleneck": 16}, 3e-3),
        ("partial (last block)", {"method": "partial", "num_blocks": 1}, 3e-3),
        ("prefix (8 tokens)", {"method": "prefix", "num_tokens": 8}, 1e-2),
        ("prompt (8 tokens)", {"method": "prompt", "num_tokens": 8}, 1e-2),
        ("LoRA r=1", lora(1), 3e-3), ("LoRA r=4", lora(4), 3e-3), ("LoRA r=16", lora(16), 3e-3),
        ("scratch (no pretraining)", None, 1e-3),
    ]
    full_model = None
    for label, peft, lr in methods:
        torch.manual_seed(0)
        if getattr(train_loader, "generator", None) is not None:
            train_loader.generator.manual_seed(0)  # every method sees the same batches in the same order
        if peft is None:
            model = scratch_model(args, base_ckpt, num_classes, S, in_chans)
            peft = {"method": "none"}
        else:
            model = create_model(args.model, pretrained=str(base_ckpt),
                                 num_classes=num_classes, img_size=S, in_chans=in_chans)
        apply_peft(model, peft)
        trainable, total = count_parameters(model)
        frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
        sec = train(model, train_loader, args.steps, lr, weight_decay=0.05 if peft["method"] == "none" else 0.0)
        acc = accuracy(model, test_loader)
        base_same = all(torch.equal(frozen_before[n], p) for n, p in model.named_parameters() if n in frozen_before)
        ckpt = out / f"{re.sub(r'[^0-9A-Za-z]+', '_', label).strip('_')}.pt"
        if peft["method"] == "none":
            torch.save(model.state_dict(), ckpt)
        else:
            save_adaptation(model, ckpt, base={"model_name": args.model, "pretrained": str(base_ckpt),
                                               "overrides": {"num_classes": num_classes, "in_chans": in_chans}})
        row = {"method": label, "acc": acc, "trainable": trainable, "total": total,
               "trainable_pct": 100.0 * trainable / total, "ckpt_bytes": os.path.getsize(ckpt), "sec_per_step": sec,
               "lr": lr, "frozen_unchanged": base_same}
        if peft["method"] == "lora":
            x = next(iter(test_loader))[0]
            model.eval()
            with torch.no_grad():
                y0 = model(x)
                merge_lora(model)
                y1 = model(x)
                unmerge_lora(model)
            row["merge_max_abs_diff"] = (y0 - y1).abs().max().item()
            # the fp32 difference is rounding (summation order); in float64 merging is exact to ~1e-12
            m64 = copy.deepcopy(model).double()
            with torch.no_grad():
                y0 = m64(x.double())
                merge_lora(m64)
                row["merge_max_abs_diff_fp64"] = (y0 - m64(x.double())).abs().max().item()
            row["logit_max_abs"] = y1.abs().max().item()
        if label == "full fine-tuning":
            full_model = model
            save_model_checkpoint(model, out / "target_full.ckpt")
            results["compression"] = compress_rows(model, test_loader)
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))

    # 3. distillation: the fully fine-tuned model teaches a smaller ViT trained from scratch
    teacher = create_model(pretrained=str(out / "target_full.ckpt")).eval()
    results["distill"] = {"teacher_acc": accuracy(teacher, test_loader)}
    for label, alpha in (("student alone", 0.0), ("student distilled (T=4, alpha=0.7)", 0.7)):
        torch.manual_seed(0)
        student = create_model(args.student, num_classes=num_classes, img_size=S, in_chans=in_chans, depth=1,
                               embed_dim=args.student_width)
        if getattr(train_loader, "generator", None) is not None:
            train_loader.generator.manual_seed(0)
        sec = train(student, train_loader, args.steps, 2e-3, teacher=teacher if alpha else None, alpha=alpha)
        results["distill"][label] = {"acc": accuracy(student, test_loader), "sec_per_step": sec,
                                     "params": count_parameters(student)[1]}
        print(label, results["distill"][label], flush=True)

    (out / "results.json").write_text(json.dumps(results, indent=2))

    # 5. the table
    print("\n| method | test acc (%) | trainable params | % of total | checkpoint | time/step (ms) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results["rows"]:
        print(f"| {r['method']} | {r['acc']:.2f} | {r['trainable']:,} | {r['trainable_pct']:.2f} | "
              f"{r['ckpt_bytes'] / 1024:.0f} KiB | {1000 * r['sec_per_step']:.0f} |")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    d = results["distill"]
    print(f"\nteacher ({args.model or 'CLIP image tower'}, full fine-tuning): {d['teacher_acc']:.2f}%")
    for k, v in d.items():
        if k != "teacher_acc":
            print(f"{k} ({args.student}, depth 1, width {args.student_width}, {v['params']:,} params): {v['acc']:.2f}%")
    print("\n| compression | test acc (%) | change | weights size |")
    print("|---|---:|---:|---:|")
    for c in results["compression"]:
        print(f"| {c['method']} | {c['acc']:.2f} | {c.get('delta', 0.0):+.2f} | {c['bytes'] / 1024:.0f} KiB |")


if __name__ == "__main__":
    main()
