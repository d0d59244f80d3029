"""Prefix tuning with and without Li & Liang's MLP reparameterisation, on the same few-label transfer.

A ViT (``--model``) is pretrained here on the real ``digits`` 0-4, then adapted to the digits 5-9 from
``--per-class`` labelled images per class by prefix tuning: plain key/value tables (``reparam: false``)
against the MLP reparameterisation (``reparam: true``, collapsed into tables for the test), at each
learning rate of ``--lrs``, for ``--seeds`` seeds (prefix initialisation and batch order); a linear probe
on the same batches is the baseline (chance: 20 %). Prints a Markdown table of test accuracy (mean and
every seed) and writes ``results.json``.

    PYTHONPATH=$PWD python benchmarks/prefix_reparam.py --out /tmp/prefix_reparam
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mmzoo.data import DigitsDataModule
from mmzoo.models import create_model
from mmzoo.peft import apply_peft, collapse_prefix, count_parameters
from mmzoo.tasks.base import param_groups_weight_decay, warmup_cosine


def batches(loader, seed: int):
    """Batches forever, reshuffled every epoch by a generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    ds = loader.dataset
    while True:
        order = torch.randperm(len(ds), generator=g).tolist()
        for i in range(0, len(order) - loader.batch_size + 1, loader.batch_size):
            items = [ds[j] for j in order[i:i + loader.batch_size]]
            yield torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


def fit(model, loader, steps: int, lr: float, seed: int) -> float:
    """AdamW + warmup-cosine; returns seconds per step."""
    opt = torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, max(1, steps // 20), steps, 0.01))
    model.train()
    it = batches(loader, seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = next(it)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return (time.perf_counter() - t0) / steps


@torch.no_grad()
def accuracy(model, loader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(-1) == y).sum().item()
        total += len(y)
    return 100.0 * correct / total


class Subset(torch.utils.data.Dataset):
    """The samples of ``classes`` (labels renumbered 0..), at most ``per_class`` of each (the first ones)."""

    def __init__(self, dataset, classes, per_class=None) -> None:
        self.dataset, self.remap = dataset, {c: i for i, c in enumerate(classes)}
        counts = {c: 0 for c in classes}
        self.indices = []
        for i in range(len(dataset)):
            y = int(dataset[i][1])
            if y in counts and (per_class is None or counts[y] < per_class):
                self.indices.append(i)
                counts[y] += 1

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        x, y = self.dataset[self.indices[i]]
        return x, self.remap[int(y)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="vit_micro_patch4_32")
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--pretrain-steps", type=int, default=600)
    ap.add_argument("--pretrain-lr", type=float, default=2e-3)
    ap.add_argument("--steps", type=int, default=300, help="adaptation steps of every run")
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--num-tokens", type=int, default=8)
    ap.add_argument("--reparam-hidden", type=int, default=512)
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 1e-2], help="learning rates of both prefix runs")
    ap.add_argument("--probe-lrs", type=float, nargs="+", default=[1e-2], help="learning rates of the linear probe")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--methods", nargs="+", default=["probe", "plain", "reparam"],
                    choices=["probe", "plain", "reparam"], help="which rows to run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="/tmp/prefix_reparam")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    S = args.image_size

    digits = DigitsDataModule(batch_size=64, seed=0, image_size=S)
    digits.setup("fit")
    digits.setup("test")
    first, second = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]
    torch.manual_seed(0)
    base = create_model(args.model, num_classes=5, img_size=S, in_chans=1)
    t = fit(base, torch.utils.data.DataLoader(Subset(digits.train_set, first), batch_size=64), args.pretrain_steps,
            args.pretrain_lr, seed=0)
    test04 = torch.utils.data.DataLoader(Subset(digits.test_set, first), batch_size=256)
    results = {"args": vars(args), "pretrain_acc_digits04": accuracy(base, test04), "runs": []}
    print(f"pretrained {args.model} on digits 0-4: test {results['pretrain_acc_digits04']:.1f}% "
          f"({args.pretrain_steps} steps, {t:.3f} s/step)", flush=True)

    target = DigitsDataModule(batch_size=64, seed=1, image_size=S, fractions=(0.3, 0.1, 0.6))
    target.setup("fit")
    target.setup("test")
    few = Subset(target.train_set, second, args.per_class)
    train_loader = torch.utils.data.DataLoader(few, batch_size=min(args.batch_size, len(few)))
    test_loader = torch.utils.data.DataLoader(Subset(target.test_set, second), batch_size=256)
    print(f"digits 5-9: {len(few)} training images, {len(test_loader.dataset)} test images", flush=True)

    methods = {"linear probe": {"method": "linear_probe"},
               "prefix, plain tables": {"method": "prefix", "num_tokens": args.num_tokens, "reparam": False},
               "prefix, MLP reparameterisation": {"method": "prefix", "num_tokens": args.num_tokens, "reparam": True,
                                                  "reparam_hidden": args.reparam_hidden}}
    keys = dict(zip(methods, ["probe", "plain", "reparam"]))
    methods = {k: v for k, v in methods.items() if keys[k] in args.methods}
    rows = []
    for label, cfg in methods.items():
        for lr in (args.probe_lrs if cfg["method"] == "linear_probe" else args.lrs):
            accs = []
            for seed in args.seeds:
                torch.manual_seed(seed)
                model = copy.deepcopy(base)
                model.reset_classifier(5)
                apply_peft(model, cfg)
                trainable, _ = count_parameters(model)
                sps = fit(model, train_loader, args.steps, lr, seed)
                acc = accuracy(model, test_loader)
                if cfg.get("reparam"):
                    collapse_prefix(model)  # the tables the MLP produced: the same accuracy
                    assert accuracy(model, test_loader) == acc
                accs.append(acc)
                results["runs"].append({"method": label, "lr": lr, "seed": seed, "acc": acc,
                                        "trainable": trainable, "s_per_step": sps})
                print(f"{label} lr={lr:g} seed={seed}: {acc:.1f}% ({trainable:,} trainable, {sps:.3f} s/step)",
                      flush=True)
            rows.append((label, lr, statistics.mean(accs), statistics.pstdev(accs), accs))
    print(f"\n| method | lr | test acc % (mean +- std over seeds {args.seeds}) | per seed |\n|---|---:|---:|---|")
    for label, lr, mean, std, accs in rows:
        print(f"| {label} | {lr:g} | {mean:.1f} +- {std:.1f} | {' / '.join(f'{a:.1f}' for a in accs)} |")
    (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
