"""A scale rehearsal of streaming: ~100k synthetic image-text samples in WebDataset shards, streamed through
``model=clip`` with DDP (2 CPU processes x 2 loader workers), checking that every sample is seen exactly once
per epoch across the ranks (no resampling), and timing the stream alone against the model's consumption.

Steps (each printed with its figures):

1. write ``--samples`` samples (a 16x16 JPEG whose colour encodes the index + the caption "sample <index>")
   into shards of ``--shard-size`` with ``data_scripts/write_shards.py``'s writer;
2. **stream only**: one rank's share of an epoch read by ``--workers`` loader workers (decode, augment,
   tokenise, collate), as samples/s; this is what the loader can feed one rank;
3. **train**: ``python train.py model=clip model.name=clip_nano data=webdataset_stream trainer=ddp ...`` for
   ``--epochs`` epochs; a callback records every training caption per rank and epoch, and the timestamps of
   each epoch's first and last batch: samples/s consumed by the model (both ranks);
4. the check: per epoch, the union of both ranks' captions is every sample exactly once;
5. the same with ``pipe:cat`` URLs (``--pipe``).

    python benchmarks/stream_rehearsal.py --samples 100000 --shard-size 1000 --batch-size 250 --epochs 1 --pipe

(``PYTHONPATH`` needs the repository root when mmzoo is not installed from it.)

The figures depend on the machine and its load (print ``uptime`` next to them).
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parents[1]


class RecordSeen(L.Callback):
    """Writes ``DIR/seen-rank<r>-epoch<e>.json``: the captions of every training batch of rank r in epoch e,
    with the times of the epoch's first and last batch."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.captions: list[str] = []
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.captions += list(batch["caption"])
        self.times.append(time.perf_counter())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"seen-rank{trainer.global_rank}-epoch{trainer.current_epoch}.json"
        path.write_text(json.dumps({"captions": self.captions, "first": self.times[0], "last": self.times[-1],
                                    "batches": len(self.times)}))
        self.captions, self.times = [], []


def _writer():
    spec = importlib.util.spec_from_file_location("write_shards", ROOT / "data_scripts" / "write_shards.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write(out: Path, samples: int, shard_size: int) -> float:
    from PIL import Image

    def source():
        for k in range(samples):
            b = io.BytesIO()
            Image.new("RGB", (16, 16), (k % 256, (k // 256) % 256, (k // 65536) % 256)).save(b, "JPEG", quality=90)
            yield {"__key__": f"{k:09d}", "jpg": b.getvalue(), "txt": f"sample {k}"}

    t = time.perf_counter()
    _writer().write_shards(source(), out, shard_size, info={"modality": "image-text"})
    return time.perf_counter() - t


def stream_rate(urls: str, batch_size: int, workers: int, world: int, max_batches: int) -> tuple[float, int]:
    """Samples/s of one rank's share of an epoch (its first ``max_batches`` batches after the first), read
    without a model (rank 0 of ``world``)."""
    from types import SimpleNamespace

    from mmzoo.data.streaming import StreamImageTextDataModule

    dm = StreamImageTextDataModule(urls=urls, image_size=16, context_length=16, batch_size=batch_size,
                                   num_workers=workers, seed=0)
    dm.trainer = SimpleNamespace(global_rank=0, world_size=world, current_epoch=0, training=True)
    n, t = 0, None
    for i, batch in enumerate(dm.train_dataloader()):
        if t is None:  # the workers' start-up is not counted
            t = time.perf_counter()
            continue
        n += len(dm.on_before_batch_transfer(batch, 0)["caption"])
        if i == max_batches:
            break
    return n / (time.perf_counter() - t), n


def train(urls: str, out: Path, args) -> tuple[float, dict]:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'benchmarks'}{os.pathsep}"
               f"{os.environ.get('PYTHONPATH', '')}")
    cmd = [sys.executable, "train.py", "model=clip", "model.name=clip_nano", "data=webdataset_stream",
           f'data.urls="{urls}"', "data.image_size=16", "data.context_length=16",
           f"data.batch_size={args.batch_size}", f"data.num_workers={args.workers}", "trainer=ddp",
           "trainer.accelerator=cpu", f"trainer.devices={args.ranks}", f"trainer.max_epochs={args.epochs}",
           "test=false", "callbacks.progress_bar=null", "trainer.enable_progress_bar=false",
           "callbacks.model_checkpoint.monitor=null", "logger=csv", f"hydra.run.dir={out}",
           "+callbacks.seen._target_=stream_rehearsal.RecordSeen", f"+callbacks.seen.out_dir={out}/seen"]
    print("   ", " ".join(cmd[1:]))
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"train.py failed:\n{proc.stderr[-4000:]}")
    return wall, check(out / "seen", args)


def check(seen_dir: Path, args) -> dict:
    result = {}
    for e in range(args.epochs):
        per_rank = [json.loads((seen_dir / f"seen-rank{r}-epoch{e}.json").read_text()) for r in range(args.ranks)]
        counts = Counter(c for p in per_rank for c in p["captions"])
        expected = {f"sample {k}" for k in range(args.samples)}
        twice = sum(1 for c in counts.values() if c > 1)
        missing = len(expected - set(counts))
        seconds = max(p["last"] for p in per_rank) - min(p["first"] for p in per_rank)
        batches = [p["batches"] for p in per_rank]
        consumed = sum(len(p["captions"]) for p in per_rank)
        # the first batch's wait is not counted: the rate is over the batches after it
        rate = (consumed - args.ranks * args.batch_size) / seconds if seconds > 0 else float("nan")
        ok = twice == 0 and missing == 0 and len(set(batches)) == 1
        print(f"    epoch {e}: batches per rank {batches}, samples seen {consumed}, twice {twice}, missing "
              f"{missing} -> {'every sample exactly once' if ok else 'FAILED'}; model consumed {rate:.0f} samples/s")
        result[e] = {"batches": batches, "seen": consumed, "twice": twice, "missing": missing, "ok": ok,
                     "samples_per_s": rate}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=250, help="per rank")
    ap.add_argument("--workers", type=int, default=2, help="loader workers per rank")
    ap.add_argument("--ranks", type=int, default=2, help="DDP processes")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--pipe", action="store_true", help="also run with pipe:cat URLs")
    ap.add_argument("--stream-batches", type=int, default=40, help="batches timed in the stream-only step")
    ap.add_argument("--out", type=Path, default=Path("outputs/stream_rehearsal"))
    args = ap.parse_args()
    shards = args.out / "shards"
    n_shards = -(-args.samples // args.shard_size)
    if not (shards / "_info.json").is_file() or \
            json.loads((shards / "_info.json").read_text())["total_samples"] != args.samples:
        seconds = write(shards, args.samples, args.shard_size)
        print(f"1. wrote {args.samples} samples into {n_shards} shards in {seconds:.1f} s "
              f"({args.samples / seconds:.0f} samples/s)")
    urls = {"file": f"{shards.resolve()}/{{000000..{n_shards - 1:06d}}}.tar"}
    if args.pipe:
        urls["pipe:cat"] = f"pipe:cat {shards.resolve()}/{{000000..{n_shards - 1:06d}}}.tar"
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "load": os.getloadavg()}
    for name, u in urls.items():
        rate, n = stream_rate(u, args.batch_size, args.workers, args.ranks, args.stream_batches)
        print(f"2. [{name}] stream only: {n} samples (rank 0 of {args.ranks}) at {rate:.0f} samples/s with "
              f"{args.workers} workers")
        print(f"3. [{name}] train.py, {args.ranks} DDP processes x {args.workers} workers, {args.epochs} epoch(s):")
        wall, result = train(u, args.out / f"run-{name.replace(':', '_')}", args)
        print(f"    wall time {wall:.0f} s (start-up and validation included)")
        report[name] = {"stream_samples_per_s_per_rank": rate, "train": result, "wall_s": wall}
    report["load_after"] = os.getloadavg()
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    print(f"load average before / after: {report['load']} / {report['load_after']}")


if __name__ == "__main__":
    main()
