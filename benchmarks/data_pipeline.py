"""Samples/s of every data set config (``configs/data/*.yaml``) at its default settings, against how many
samples/s its default model consumes in training on the same machine.

Data sets are discovered from ``configs/data/``: built-in ones are instantiated as they are; file
readers (``???`` keys) get small files written first by a writer in ``WRITERS`` (one function per
config; a new reader without a writer is reported, not skipped silently). The default model of a data
set is the model config whose ``override /data`` names it (else ``--model``), trained with the data
set's batch size: its rate is forward + backward + AdamW steps per second on real batches.

    python benchmarks/data_pipeline.py                    # every config, 2 CPU threads
    python benchmarks/data_pipeline.py --only shapes csv --batches 20
"""
from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import re
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402

from mmzoo.training import build  # noqa: E402

WORDS = ["red", "green", "blue", "yellow"]


def _png(path: Path, i: int, size: int = 96) -> None:
    rng = np.random.default_rng(i)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def _jpeg_bytes(i: int, size: int = 96) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(i).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def write_image_folder(d: Path, n: int) -> list[str]:
    for i in range(n):
        _png(d / "train" / WORDS[i % 4] / f"{i}.png", i)
    return [f"data.root={d}"]


def write_csv(d: Path, n: int) -> list[str]:
    rows = ["filepath,title"]
    for i in range(n):
        _png(d / "img" / f"{i}.png", i)
        rows.append(f"img/{i}.png,a photo of something {WORDS[i % 4]}")
    (d / "train.csv").write_text("\n".join(rows) + "\n")
    return [f"data.train_file={d / 'train.csv'}"]


def write_webdataset(d: Path, n: int) -> list[str]:
    d.mkdir(parents=True, exist_ok=True)
    with tarfile.open(d / "shard-000000.tar", "w") as tar:
        for i in range(n):
            for ext, data in (("jpg", _jpeg_bytes(i)), ("txt", f"a photo of something {WORDS[i % 4]}".encode())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return [f"data.shards={d / 'shard-000000.tar'}"]


def write_coco_captions(d: Path, n: int) -> list[str]:
    images, anns = [], []
    for i in range(n):
        _png(d / "train2017" / f"{i:012d}.png", i)
        images.append({"id": i, "file_name": f"{i:012d}.png", "width": 96, "height": 96})
        anns += [{"id": 5 * i + k, "image_id": i, "caption": f"a {WORDS[(i + k) % 4]} thing"} for k in range(5)]
    (d / "captions_train2017.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return [f"data.train_annotations={d / 'captions_train2017.json'}", f"data.train_images={d / 'train2017'}"]


def write_cifar10(d: Path, n: int) -> list[str]:
    folder = d / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, f)
    return [f"data.root={d}", "data.val_size=100"]


# config name -> writer of small files in the format it reads; returns the overrides that point at them
WRITERS: dict[str, Callable[[Path, int], list[str]]] = {
    "image_folder": write_image_folder,
    "csv": write_csv,
    "webdataset": write_webdataset,
    "coco_captions": write_coco_captions,
    "cifar10": write_cifar10,
}


def default_models() -> dict[str, str]:
    """data config -> the model config that picks it (``override /data: NAME``)."""
    out = {}
    for path in sorted((ROOT / "configs" / "model").glob("*.yaml")):
        m = re.search(r"override /data:\s*(\w+)", path.read_text())
        if m:
            out.setdefault(m.group(1), path.stem)
    return out


def model_for(data: str, models: dict[str, str], fallback_image: str, fallback_text: str) -> str:
    if data in models:
        return models[data]
    text = (ROOT / "configs" / "data" / f"{data}.yaml").read_text()
    return fallback_text if "tokenizer" in text else fallback_image


def measure(data: str, model: str, extra: list[str], args: argparse.Namespace) -> dict[str, float]:
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", f"data={data}", *extra,
                                          "trainer.accelerator=cpu", "paths.output_dir=/tmp/mmzoo_data_bench"])
    dm, task = build(cfg)
    dm.setup("fit")
    loader = dm.train_dataloader()
    it = iter(loader)
    batches = [next(it)]  # first batch: worker start-up
    n, t0 = 0, time.perf_counter()
    for _ in range(args.batches):
        try:
            b = next(it)
        except StopIteration:
            break
        batches.append(b)
        n += len(next(iter(b.values())) if isinstance(b, dict) else b[0])
    data_rate = n / max(time.perf_counter() - t0, 1e-9)
    del it
    # consumption: training steps of the default model on the batches just read
    opt = torch.optim.AdamW(task.parameters(), lr=1e-4)
    task.train()
    task.log = lambda *a, **k: None  # no trainer attached: logging is a no-op here
    task.check_loss = lambda loss: loss
    times, seen = [], 0
    for i, b in enumerate(batches[: args.steps + 1]):
        t = time.perf_counter()
        loss = task.training_step(b, i)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i > 0:  # first step: warm-up
            times.append(time.perf_counter() - t)
            seen += len(next(iter(b.values())) if isinstance(b, dict) else b[0])
    model_rate = seen / max(sum(times), 1e-9)
    return {"data": data_rate, "model": model_rate, "batch_size": cfg.data.batch_size,
            "num_workers": cfg.data.get("num_workers", 0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", help="data config names (default: all of configs/data)")
    p.add_argument("--batches", type=int, default=10, help="timed batches per data set")
    p.add_argument("--steps", type=int, default=3, help="timed training steps of the default model")
    p.add_argument("--files", type=int, default=512, help="samples written for file readers")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    names = args.only or sorted(p.stem for p in (ROOT / "configs" / "data").glob("*.yaml"))
    models = default_models()
    print(f"# data pipeline vs default model, {args.threads} torch threads; load {os.getloadavg()[0]:.2f}")
    print(f"{'data':16s} {'model':8s} {'batch':>5s} {'workers':>7s} {'data samples/s':>15s} "
          f"{'model samples/s':>16s} {'data/model':>10s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            needs_files = "???" in (ROOT / "configs" / "data" / f"{name}.yaml").read_text() or name in WRITERS
            extra: list[str] = []
            if needs_files:
                if name not in WRITERS:
                    print(f"{name:16s} no writer in benchmarks/data_pipeline.py: WRITERS; not measured")
                    continue
                extra = WRITERS[name](Path(tmp) / name, args.files)
            model = model_for(name, models, "vit", "clip")
            try:
                r = measure(name, model, extra, args)
            except Exception as e:  # report and go on: one broken reader should not hide the others
                print(f"{name:16s} FAILED: {type(e).__name__}: {str(e)[:200]}")
                continue
            print(f"{name:16s} {model:8s} {r['batch_size']:5d} {r['num_workers']:7d} {r['data']:15.0f} "
                  f"{r['model']:16.0f} {r['data'] / r['model']:10.2f}", flush=True)
    print(f"# load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
