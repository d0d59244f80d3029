"""What every model logs: runs each model config (and each of its tasks) for a few batches with the CSV and
TensorBoard loggers, then prints the logged metric names per run and writes the logged images as PNGs.

The runs are `python train.py <config> debug=limit logger=tensorboard` (5 training batches, 2 epochs), so the
models are barely trained: the images show what a dashboard holds, not what a trained model predicts.

    python benchmarks/dashboards.py --out /tmp/dashboards                 # every run, ~10 min on 2 cores
    python benchmarks/dashboards.py --out /tmp/dashboards --runs vit clip  # some of them
    python benchmarks/dashboards.py --out /tmp/dashboards --images-to docs/img/dashboards
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# run label -> train.py overrides (the defaults of each model config, and its other tasks)
RUNS: dict[str, list[str]] = {
    "vit": ["model=vit"],
    "vit_distill": ["model=vit", "model.name=vit_nano_patch4_32", "task=distill", "task.teacher={vit}"],
    "clip": ["model=clip"],
    "coca": ["model=coca"],
    "fusion": ["model=fusion"],
    "timesformer": ["model=timesformer", "pipeline=none"],
    "wav2vec2": ["model=wav2vec2"],
    "wav2vec2_classification": ["model=wav2vec2", "task=audio_classification"],
    "wav2vec2_ctc": ["model=wav2vec2", "task=ctc"],
    "point_bert_dvae": ["model=point_bert_dvae"],
    "point_bert": ["model=point_bert"],  # a pipeline: the tokenizer stage first (10 steps under debug=limit)
    "point_classification": ["model=point_bert", "task=point_classification"],
    "gpt": ["model=gpt"],
    "bert": ["model=bert"],
    "t5": ["model=t5"],
}
COMMON = ["debug=limit", "logger=tensorboard", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
          "callbacks.progress_bar=null", "trainer.enable_model_summary=false"]


def logged_metrics(run_dir: Path) -> list[str]:
    """Metric names of the run's CSV log (``DIR/csv/metrics.csv``), without Lightning's own columns."""
    path = run_dir / "csv" / "metrics.csv"
    with open(path, newline="") as f:
        header = next(csv.reader(f))
    return sorted(h for h in header if h not in ("epoch", "step"))


def logged_media(run_dir: Path, images_dir: Path, label: str) -> dict[str, list[str]]:
    """Image / text / audio / histogram tags of the run's TensorBoard log; the last image of each image tag is
    written to ``images_dir/<label>__<tag>.png``."""
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    media: dict[str, list[str]] = {"images": [], "text": [], "audio": [], "histograms": []}
    for path in events:
        acc = EventAccumulator(str(path), size_guidance={"images": 0, "audio": 0, "histograms": 0, "tensors": 0})
        acc.Reload()
        tags = acc.Tags()
        for tag in tags.get("images", []):
            media["images"].append(tag)
            last = acc.Images(tag)[-1]
            images_dir.mkdir(parents=True, exist_ok=True)
            name = f"{label}__{tag.replace('/', '_')}.png"
            Image.open(io.BytesIO(last.encoded_image_string)).save(images_dir / name)
        media["audio"] += tags.get("audio", [])
        media["histograms"] += tags.get("histograms", [])
        # add_text is stored as a tensor summary named "<tag>/text_summary"
        media["text"] += [t.removesuffix("/text_summary") for t in tags.get("tensors", []) if t.endswith("/text_summary")]
    return {k: sorted(set(v)) for k, v in media.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="run directories go to OUT/runs/<label>")
    p.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=list(RUNS))
    p.add_argument("--images-to", type=Path, default=None, help="PNG folder (default OUT/images)")
    args = p.parse_args()
    images_dir = args.images_to or args.out / "images"
    done: dict[str, Path] = {}
    rows = []
    for label in args.runs:
        run_dir = args.out / "runs" / label
        overrides = [o.format(vit=done.get("vit", args.out / "runs" / "vit") / "checkpoints" / "last.ckpt")
                     for o in RUNS[label]]
        cmd = [sys.executable, "train.py", *overrides, *COMMON, f"hydra.run.dir={run_dir}"]
        print("$", " ".join(cmd), flush=True)
        t0 = time.time()
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        pipeline = run_dir / "pipeline.json"  # a pipeline of stages: the command's own run is the last stage
        if pipeline.is_file():
            run_dir = Path(json.loads(pipeline.read_text())["stages"][-1]["run_dir"])
        done[label] = run_dir
        rows.append((label, " ".join(RUNS[label]), logged_metrics(run_dir),
                     logged_media(run_dir, images_dir, label), time.time() - t0))
    print("\n| run | overrides | metrics | media |\n|---|---|---|---|")
    for label, overrides, metrics, media, _ in rows:
        shown = "<br>".join(f"{k}: " + ", ".join(f"`{t}`" for t in v) for k, v in media.items() if v)
        print(f"| {label} | `{overrides}` | {', '.join(f'`{m}`' for m in metrics)} | {shown or '-'} |")
    print(f"\nimages written to {images_dir}; run times (s): "
          + ", ".join(f"{label} {t:.0f}" for label, *_, t in rows))


if __name__ == "__main__":
    main()
