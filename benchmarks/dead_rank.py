"""Time from a rank's failure to the end of every rank of a 2-process DDP run (CPU, gloo).

    python benchmarks/dead_rank.py                      # every scenario, 3 repeats, timeout 60 s
    python benchmarks/dead_rank.py --scenarios hang-rank1 --timeout 20 --repeats 1
    python benchmarks/dead_rank.py trainer.accelerator=gpu       # 2 GPUs, NCCL

A tiny ViT trains on digits (``trainer=ddp trainer.devices=2``); once its first end-of-epoch checkpoint
exists, one scenario is applied and the seconds until no rank is left are printed with the launcher's
exit status:

* ``kill-rank1``: SIGKILL a child rank (its peer's next collective fails; Lightning kills rank 0);
* ``kill-rank0``: SIGKILL the launcher (its children die with it: ``mmzoo.watchdog.die_with_parent``);
* ``hang-rank1``: SIGSTOP a child rank (alive, never reaching the collective): bounded by the
  process-group timeout (``trainer.strategy.timeout.seconds``);
* ``term-rank0``: SIGTERM the launcher (Lightning's graceful stop; ``shutdown_grace_s`` bounds it).

The baseline is the configured timeout: without the process-group timeout and the watchdog, the
hang and kill-rank0 scenarios wait forever on NCCL, and a SIGTERM does not reach a rank waiting
inside a collective. Nothing here is asserted (tests/test_ddp_lifecycle.py asserts the bounds).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = {"kill-rank1": (1, signal.SIGKILL), "kill-rank0": (0, signal.SIGKILL),
             "hang-rank1": (1, signal.SIGSTOP), "term-rank0": (0, signal.SIGTERM)}
RUN = ["model=vit", "model.name=vit_nano_patch4_32", "data=digits", "+trainer.limit_train_batches=4",
       "+trainer.limit_val_batches=2", "trainer.max_steps=100000", "trainer=ddp", "trainer.devices=2",
       "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "callbacks.progress_bar=null",
       "trainer.enable_model_summary=false", "test=false"]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] not in "ZX"
    except (OSError, IndexError):
        return False


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def measure(scenario: str, timeout_s: int, grace_s: int, workdir: Path, extra: list[str]) -> tuple[float, int]:
    """Seconds from the signal until every rank is gone, and the launcher's exit status."""
    rank, sig = SCENARIOS[scenario]
    run = workdir / scenario
    shutil.rmtree(run, ignore_errors=True)
    cmd = [sys.executable, "train.py", *RUN, f"trainer.strategy.timeout.seconds={timeout_s}",
           f"shutdown_grace_s={grace_s}", *extra, f"hydra.run.dir={run}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while not (run / "checkpoints" / "last.ckpt").exists():
            if proc.poll() is not None:
                raise RuntimeError(f"the run ended (rc={proc.returncode}) before training got going: {cmd}")
            time.sleep(0.05)
        ranks = [proc.pid, *_children(proc.pid)]
        if len(ranks) != 2:
            raise RuntimeError(f"expected the launcher and one child rank, found pids {ranks}")
        start = time.monotonic()
        os.kill(ranks[rank], sig)
        while any(_alive(p) for p in ranks):
            time.sleep(0.02)
        elapsed = time.monotonic() - start
        return elapsed, proc.wait()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    p.add_argument("--timeout", type=int, default=60, help="process-group timeout, seconds")
    p.add_argument("--grace", type=int, default=30, help="shutdown_grace_s")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("overrides", nargs="*", help="train.py overrides, e.g. trainer.accelerator=gpu")
    args = p.parse_args()
    print(f"# 2-process DDP {' '.join(args.overrides)}, timeout {args.timeout} s, shutdown grace {args.grace} s, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'scenario':<12} {'seconds to all ranks gone (each repeat)':<44} {'median':>7}  launcher exit")
    with tempfile.TemporaryDirectory(prefix="mmzoo_dead_rank_") as d:
        for scenario in args.scenarios:
            results = [measure(scenario, args.timeout, args.grace, Path(d), args.overrides) for _ in range(args.repeats)]
            times = [t for t, _ in results]
            print(f"{scenario:<12} {', '.join(f'{t:.2f}' for t in times):<44} {statistics.median(times):>7.2f}  "
                  f"{sorted({rc for _, rc in results})}", flush=True)


if __name__ == "__main__":
    main()
