"""Full fine-tuning vs LoRA r=8 over seeds and learning rates, on the transfer setting of
``benchmarks/peft_transfer.py --base digits_split`` (reuses its pretrained base in ``--out``, training it
first if absent). A seed sets the head / LoRA initialisation and the batch order (with 10 images per class the
whole training set is one batch). Prints one JSON line
per run with the accuracy on the 5-9 validation and test images.

    PYTHONPATH=$PWD python benchmarks/peft_lora_seeds.py --out /tmp/peft_transfer
"""
from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peft_transfer as pt  # noqa: E402
from mmzoo.data import DigitsDataModule  # noqa: E402
from mmzoo.models import create_model  # noqa: E402
from mmzoo.peft import apply_peft, count_parameters  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target-per-class", type=int, default=10)
    ap.add_argument("--embed-dim", type=int, default=None, help="width of the base ViT (default: the preset's)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--pretrain-steps", type=int, default=3000, help="of the base, when --out holds none")
    ap.add_argument("--pretrain-lr", type=float, default=2e-3, help="of the base, when --out holds none")
    ap.add_argument("--full-lrs", type=float, nargs="*", default=[1e-3, 3e-4])
    ap.add_argument("--lora-lrs", type=float, nargs="+", default=[3e-3, 1e-2, 3e-2])
    ap.add_argument("--lora-target", nargs="+", default=None,
                    help="LoRA's module name patterns (default: the attention projections), e.g. '*.mlp.fc1'")
    ap.add_argument("--out", default="/tmp/peft_transfer")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    args = types.SimpleNamespace(image_size=16, batch_size=64, model="vit_micro_patch4_32",
                                 pretrain_steps=a.pretrain_steps, pretrain_lr=a.pretrain_lr,
                                 target_per_class=a.target_per_class,
                                 base="digits_split", embed_dim=a.embed_dim)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    base_ckpt, S, nc, ic, train_loader, test_loader = pt.digits_split_setting(args, out, {})
    target = DigitsDataModule(batch_size=64, seed=1, image_size=S, fractions=(0.3, 0.1, 0.6))  # as the setting
    target.setup("fit")
    val_loader = torch.utils.data.DataLoader(pt._ClassSubset(target.val_set, [5, 6, 7, 8, 9]), batch_size=64)
    lora8 = {"method": "lora", "r": 8, "alpha": 16.0, "target": a.lora_target}
    runs = [("full", {"method": "none"}, lr) for lr in a.full_lrs] + [("lora8", lora8, lr) for lr in a.lora_lrs]
    for seed in a.seeds:
        for name, peft, lr in runs:
            torch.manual_seed(seed)
            model = create_model(args.model, pretrained=str(base_ckpt), num_classes=nc, img_size=S, in_chans=ic)
            apply_peft(model, peft)
            train_loader.generator.manual_seed(seed)
            pt.train(model, train_loader, a.steps, lr, weight_decay=0.05 if name == "full" else 0.0)
            trainable, total = count_parameters(model)
            print(json.dumps({"method": name, "lr": lr, "seed": seed,
                              "trainable_pct": round(100 * trainable / total, 2),
                              "val": round(pt.accuracy(model, val_loader), 2),
                              "test": round(pt.accuracy(model, test_loader), 2)}), flush=True)


if __name__ == "__main__":
    main()
