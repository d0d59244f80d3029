"""A multi-process run never outlives a failure: every rank ends when the launcher dies or is told to stop.

Lightning starts ranks 1..N-1 of a node as children of the command the user typed (rank 0). Its own
observer kills rank 0 within seconds when a child exits with an error, and a dead peer breaks the
process group's connections, so the surviving ranks' next collective fails; a rank that hangs (alive
but never reaching the collective) is bounded by the process-group timeout (``trainer.strategy.timeout``
in ``configs/trainer/ddp.yaml``). Two holes remain, closed here:

* rank 0 dying (SIGKILL, OOM killer) orphans its children, which then wait on a peer that is gone:
  :func:`die_with_parent` has the kernel kill a child the moment its parent dies (``PR_SET_PDEATHSIG``);
* ``kill -TERM`` / Ctrl-C reaches Python's handler only between bytecodes, never while the main thread
  waits inside a collective: :func:`exit_on_signal` watches for the signal from a thread and ends the
  process once a grace period has passed without the graceful shutdown finishing.

``mmzoo.training.train`` installs both in every rank.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from typing import Iterator, Optional

log = logging.getLogger("mmzoo")

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_installed: dict[str, object] = {}


def launched_child() -> bool:
    """Whether this process is a rank Lightning's launcher started as a child of rank 0 (``LOCAL_RANK`` set
    and non-zero, no external launcher such as torchrun or SLURM in between)."""
    if os.environ.get("LOCAL_RANK", "0") in ("", "0"):
        return False
    external = ("TORCHELASTIC_RUN_ID", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
    return not any(k in os.environ for k in external)


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Have the kernel send ``sig`` to this process when its parent exits (Linux); exit now when the
    parent is already gone. Returns whether the request was placed."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d): this rank will not end with its launcher",
                    ctypes.get_errno())
        return False
    if parent == 1 or os.getppid() != parent:  # the launcher died before the request was placed
        os._exit(128 + int(sig))
    return True


def exit_on_signal(grace_s: float = 30.0, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> bool:
    """End this process with status ``128 + signum`` if it is still alive ``grace_s`` seconds after
    receiving one of ``signals``.

    The signal still runs its Python handler (Lightning's SIGTERM handling, ``KeyboardInterrupt``) when
    the main thread gets to it; this only bounds the wait when it cannot (a collective that waits for a
    rank that is gone). Children of a rank that has ``die_with_parent`` end with it. Call from the main
    thread; a second call only updates ``grace_s``.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    _installed["grace_s"] = float(grace_s)
    if "thread" in _installed:
        return True
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        # the interpreter's C-level handler writes the signal number here at once, whatever the main
        # thread is doing (it needs a Python-level handler installed for the signal: the default ones are)
        previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except (ValueError, OSError):
        previous = None
    if previous != -1:  # failed, or someone else (an asyncio loop) relies on the wakeup fd: leave it theirs
        if previous is not None:
            signal.set_wakeup_fd(previous)
        os.close(read_fd)
        os.close(write_fd)
        return False
    wanted = {int(s) for s in signals}

    def watch() -> None:
        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            hits = [b for b in data if b in wanted]
            if not hits:
                continue
            signum = hits[0]
            deadline = time.monotonic() + float(_installed["grace_s"])  # type: ignore[arg-type]
            while time.monotonic() < deadline:
                time.sleep(0.2)
            name = signal.Signals(signum).name
            print(f"mmzoo: {name} received {_installed['grace_s']:.0f} s ago and the process is still running "
                  f"(a collective waiting for a rank that is gone?): exiting", file=sys.stderr, flush=True)
            os._exit(128 + signum)

    thread = threading.Thread(target=watch, name="mmzoo-signal-watch", daemon=True)
    thread.start()
    _installed["thread"] = thread
    return True


@contextlib.contextmanager
def stopped_is_failure() -> Iterator[None]:
    """Turn Lightning's stop on SIGTERM (a ``SystemExit`` without a status, i.e. exit status 0) into exit
    status ``128 + SIGTERM``, so that a launcher, a scheduler or a pipeline never takes a stopped run
    for a finished one."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        yield
    except SIGTERMException as e:
        print("mmzoo: stopped by SIGTERM; the last checkpoint written is kept (resume with ckpt_path=...)",
              file=sys.stderr, flush=True)
        raise SystemExit(128 + int(signal.SIGTERM)) from e


def install(grace_s: Optional[float] = 30.0) -> None:
    """What every rank of ``train.py`` runs first: :func:`die_with_parent` in a launched child, and
    :func:`exit_on_signal` (``grace_s=None``: off)."""
    if launched_child():
        die_with_parent()
    if grace_s is not None:
        exit_on_signal(grace_s)
