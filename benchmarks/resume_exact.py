"""Kill a run after its first end-of-epoch checkpoint, resume it, and compare with the uninterrupted run.

    python benchmarks/resume_exact.py                                  # 1 CPU process, tiny ViT on digits
    python benchmarks/resume_exact.py trainer=ddp trainer.devices=2    # 2 processes (gloo on CPU)
    python benchmarks/resume_exact.py trainer=fsdp trainer.devices=2 trainer.strategy.state_dict_type=full

Extra arguments are ``train.py`` overrides appended to a short run (4 batches an epoch, 10 steps: two
epoch ends). Prints how many weight tensors differ bit for bit between the uninterrupted run and the
run SIGKILLed (every process) once ``last.ckpt`` exists and resumed from it, whether the resumed
``csv/metrics.csv`` holds the uninterrupted run's rows exactly once, and the runs' wall times. Needs
file checkpoints (FSDP: ``trainer.strategy.state_dict_type=full``).
"""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RUN = ["model=vit", "model.name=vit_nano_patch4_32", "data=digits", "model.drop_path_rate=0.2",
       "+trainer.limit_train_batches=4", "+trainer.limit_val_batches=2", "+trainer.limit_test_batches=2",
       "trainer.max_steps=10", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
       "callbacks.progress_bar=null", "trainer.enable_model_summary=false", "test=false"]


def _cmd(run: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "train.py", *RUN, *extra, f"hydra.run.dir={run}"]


def _rows(run: Path) -> list[tuple]:
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return sorted(tuple(sorted((k, v) for k, v in r.items() if v != "")) for r in csv.DictReader(f))


def main() -> None:
    extra = sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="mmzoo_resume_") as d:
        full, killed = Path(d) / "full", Path(d) / "killed"
        t0 = time.monotonic()
        subprocess.run(_cmd(full, extra), cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        t_full = time.monotonic() - t0
        last = killed / "checkpoints" / "last.ckpt"
        proc = subprocess.Popen(_cmd(killed, extra), cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL)
        while not last.exists():
            if proc.poll() is not None:
                sys.exit(f"the run ended (rc={proc.returncode}) before writing {last}")
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
        t0 = time.monotonic()
        subprocess.run(_cmd(killed, [*extra, f"ckpt_path={last}"]), cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        t_resumed = time.monotonic() - t0
        a = torch.load(full / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
        b = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
        differ = [k for k in a if not torch.equal(a[k], b.get(k, torch.empty(0)))]
        rows_full, rows_resumed = _rows(full), _rows(killed)
        print(f"overrides: {' '.join(extra) or '(none)'}")
        print(f"killed after the checkpoint of step {step}; resumed to step 10")
        print(f"weights: {len(differ)} of {len(a)} tensors differ from the uninterrupted run")
        print(f"csv: {len(rows_resumed)} rows, {len(set(rows_resumed))} distinct; equal to the uninterrupted run's "
              f"{len(rows_full)}: {rows_resumed == rows_full}")
        print(f"wall time: uninterrupted {t_full:.1f} s, resumed part {t_resumed:.1f} s")


if __name__ == "__main__":
    main()
