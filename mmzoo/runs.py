"""Reading and comparing finished runs without W&B: ``mmzoo plot`` and ``mmzoo compare``.

A run directory (``hydra.run.dir``) holds ``csv/metrics.csv`` (Lightning's CSV logger: one row per
logging call, a column per metric, empty cells where a metric was not logged) and ``metrics.json``
(the final figures written by :func:`mmzoo.training.train`). Both are read here; nothing is written
into the runs themselves.
"""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Sequence

Curve = list[tuple[int, float]]  # (global step, value) in logging order


def metrics_csv(run: str | Path) -> Path:
    """The CSV log of ``run``: ``RUN/csv/metrics.csv`` (or ``RUN`` itself when it is a CSV file)."""
    run = Path(run)
    if run.is_file() and run.suffix == ".csv":
        return run
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: not a run directory (expected the directory of a `python train.py` run "
                                "holding csv/metrics.csv)")
    candidates = [run / "csv" / "metrics.csv", *sorted(run.glob("csv/*/metrics.csv")), *sorted(run.glob("*/metrics.csv"))]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{run}: no csv/metrics.csv; the run was not logged with the CSV logger "
                            "(logger=csv, the default, or logger=many)")


def read_curves(run: str | Path) -> dict[str, Curve]:
    """Every metric logged in ``run``'s CSV log as a curve of ``(step, value)`` points.

    Args:
        run: a run directory or its ``metrics.csv``.

    Returns:
        Metric name -> points in the order they were logged; ``epoch`` and ``step`` are not metrics.
    """
    path = metrics_csv(run)
    curves: dict[str, Curve] = {}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "step" not in reader.fieldnames:
            raise ValueError(f"{path}: not a Lightning CSV log (no 'step' column in the header)")
        for line, row in enumerate(reader, start=2):
            try:
                step = int(float(row["step"]))
            except (TypeError, ValueError):
                raise ValueError(f"{path}, line {line}: step {row.get('step')!r} is not a number") from None
            for key, cell in row.items():
                if key in ("step", "epoch") or key is None or cell in (None, ""):
                    continue
                try:
                    curves.setdefault(key, []).append((step, float(cell)))
                except ValueError:
                    raise ValueError(f"{path}, line {line}: {key}={cell!r} is not a number") from None
    return curves


def final_metrics(run: str | Path) -> dict[str, float]:
    """The run's final figures: ``metrics.json`` where the run finished, else each metric's last logged
    value from the CSV log."""
    run = Path(run)
    summary = run / "metrics.json" if run.is_dir() else None
    out = {key: points[-1][1] for key, points in read_curves(run).items()} if summary is None or \
        not summary.is_file() else {}
    if summary is not None and summary.is_file():
        data = json.loads(summary.read_text(encoding="utf-8"))
        out = {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return out


def run_labels(runs: Sequence[str | Path]) -> list[str]:
    """Short distinct labels for runs: the shortest trailing path parts that tell them apart."""
    parts = [Path(r).resolve().parts for r in runs]
    for n in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-n:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(r) for r in runs]


def compare(runs: Sequence[str | Path], pattern: str = "") -> str:
    """A table of the runs' final metrics side by side (one row per metric, one column per run).

    Args:
        runs: run directories.
        pattern: a regular expression; only metrics whose name matches it are listed.
    """
    labels = run_labels(runs)
    finals = [final_metrics(r) for r in runs]
    keys = sorted({k for f in finals for k in f if re.search(pattern, k)})
    if not keys:
        raise ValueError(f"no metric matching {pattern!r} in {', '.join(map(str, runs))}")
    width = max(len(k) for k in keys)
    cols = [max(len(lab), 12) for lab in labels]
    lines = ["metric".ljust(width) + "  " + "  ".join(lab.rjust(c) for lab, c in zip(labels, cols))]
    for key in keys:
        cells = []
        for f, c in zip(finals, cols):
            v = f.get(key)
            cells.append(("-" if v is None else f"{v:.6g}").rjust(c))
        lines.append(key.ljust(width) + "  " + "  ".join(cells))
    return "\n".join(lines)


def _safe_name(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", metric).strip("_") or "metric"


def plot(runs: Sequence[str | Path], out_dir: str | Path, pattern: str = "") -> list[Path]:
    """One PNG per metric with every run's curve of it, written to ``out_dir/<metric>.png``.

    Args:
        runs: run directories.
        out_dir: where the pictures go (created).
        pattern: a regular expression; only metrics whose name matches it are drawn.

    Returns:
        The written files, sorted by metric name.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = run_labels(runs)
    curves = [read_curves(r) for r in runs]
    keys = sorted({k for c in curves for k in c if re.search(pattern, k)})
    if not keys:
        raise ValueError(f"no metric matching {pattern!r} in {', '.join(map(str, runs))}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for key in keys:
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for label, c in zip(labels, curves):
            points = [(s, v) for s, v in c.get(key, []) if math.isfinite(v)]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker="o" if len(points) < 20 else None, markersize=3, label=label)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{_safe_name(key)}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
