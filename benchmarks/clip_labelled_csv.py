"""A user's own labelled image set, turned into a captions CSV, trained as CLIP and zero-shot classified.

Builds a labelled ImageFolder tree from real images (scikit-learn's handwritten digits, classes named
"zero" ... "nine", upscaled to RGB PNGs), converts it with ``data_scripts/prepare_captions.py labelled``
("a photo of a {label}" captions, 20% of each class held out), trains ``model=clip data=csv``, then runs
``python -m mmzoo.zeroshot`` on the held-out split and prints its accuracy against chance.

    python benchmarks/clip_labelled_csv.py --work /tmp/clip_csv --epochs 30
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def build_tree(root: Path, size: int) -> int:
    digits = load_digits()
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
        d = root / WORDS[label]
        d.mkdir(parents=True, exist_ok=True)
        arr = (img / 16.0 * 255).astype(np.uint8)
        Image.fromarray(arr).resize((size, size), Image.BILINEAR).convert("RGB").save(d / f"{i:04d}.png")
    return len(digits.images)


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/mmzoo_clip_csv"))
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--image-size", type=int, default=48)
    args = ap.parse_args()
    tree, csv_dir, run_dir = args.work / "tree", args.work / "csv", args.work / "run"
    n = build_tree(tree, args.image_size)
    run([sys.executable, "data_scripts/prepare_captions.py", "labelled", "--root", str(tree),
         "--out-dir", str(csv_dir), "--test-fraction", "0.2"])
    data = ["data=csv", f"data.train_file={csv_dir / 'train.csv'}", f"data.test_file={csv_dir / 'test.csv'}",
            "data.label_key=label", f"data.image_size={args.image_size}", "data.context_length=32"]
    t0 = time.time()
    run([sys.executable, "train.py", "model=clip", *data, f"trainer.max_epochs={args.epochs}",
         "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"])
    train_s = time.time() - t0
    zs_dir = args.work / "zeroshot"
    run([sys.executable, "-m", "mmzoo.zeroshot", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", *data,
         "split=test", f"hydra.run.dir={zs_dir}"])
    res = json.loads((zs_dir / "zeroshot.json").read_text())
    print(json.dumps({"images": n, "train_seconds": round(train_s, 1), "zeroshot_top1": res["top1"],
                      "zeroshot_top5": res["top5"], "chance": res["chance"], "test_images": res["num_samples"]},
                     indent=2))


if __name__ == "__main__":
    main()
