"""Logger factories used by ``configs/logger``, and the CSV history a resumed run continues."""
from __future__ import annotations

import csv
import io
import logging
import netrc
import os
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.callbacks import Callback

from .checkpoint import atomic_write_text

log = logging.getLogger(__name__)


def wandb_api_key_available() -> bool:
    """True if W&B can authenticate: ``WANDB_API_KEY`` or a ``~/.netrc`` entry from ``wandb login``."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        rc = netrc.netrc()
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any(rc.authenticators(host) for host in ("api.wandb.ai", os.environ.get("WANDB_BASE_URL", "")) if host)


def wandb_logger(offline: bool | None = None, **kwargs: Any):
    """A Lightning ``WandbLogger`` that runs offline when no API key is configured
    (``offline=None``), so a run never blocks on a login prompt; sync later with ``wandb sync``."""
    from lightning.pytorch.loggers import WandbLogger

    if offline is None:
        offline = not wandb_api_key_available() or os.environ.get("WANDB_MODE") == "offline"
        if offline:
            log.warning("W&B: no API key found (WANDB_API_KEY / wandb login); logging offline to %s",
                        kwargs.get("save_dir", "."))
    return WandbLogger(offline=offline, **kwargs)


def read_csv_history(loggers: list[Any], out_dir: Path, ckpt_path: Optional[Path]) -> dict[str, list[dict[str, str]]]:
    """The rows already in each CSV logger's ``metrics.csv`` before a resumed run starts (Lightning's CSV
    writer deletes the file when it opens): from this run directory, or, when the checkpoint lives in
    another run directory (``DIR/checkpoints/x.ckpt``), from the same place under that one. Keyed by the
    file this run writes; read it before the loggers log anything."""
    from lightning.pytorch.loggers import CSVLogger

    history: dict[str, list[dict[str, str]]] = {}
    if ckpt_path is None:
        return history
    ckpt_run = Path(ckpt_path).resolve().parent.parent
    for lg in loggers:
        if not isinstance(lg, CSVLogger):
            continue
        target = Path(lg.log_dir) / "metrics.csv"
        source = target
        if not source.is_file():
            try:
                source = ckpt_run / target.resolve().relative_to(Path(out_dir).resolve())
            except ValueError:  # the logger writes outside the run directory
                continue
        if source.is_file():
            with open(source, newline="") as f:
                history[str(target)] = list(csv.DictReader(f))
    return history


class ContinueCSVHistory(Callback):
    """Write the history of a resumed run back into each CSV logger's ``metrics.csv`` before training
    continues: the rows logged before the checkpoint, once (rows of the killed run after it are
    dropped; the resumed run logs those steps again), followed by what this run logs.

    Args:
        history: ``read_csv_history`` of the loggers of this run.
    """

    def __init__(self, history: dict[str, list[dict[str, str]]]) -> None:
        self.history = history

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._restore(trainer)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._restore(trainer)  # a resumed run that had no batch left to train

    def _restore(self, trainer: Any) -> None:
        from lightning.pytorch.loggers import CSVLogger

        if not self.history or not trainer.is_global_zero:
            self.history = {}
            return
        # the logger step of the first batch this run trained (its metrics are logged under it after this
        # hook): everything before it was logged, once, by the run that wrote the checkpoint
        next_step = trainer.fit_loop.epoch_loop._batches_that_stepped
        for lg in trainer.loggers:
            path = str(Path(lg.log_dir) / "metrics.csv") if isinstance(lg, CSVLogger) else None
            if path not in self.history:
                continue
            rows = [r for r in self.history[path] if r.get("step") not in (None, "") and int(r["step"]) < next_step]
            writer = lg.experiment
            writer.save()  # anything buffered so far goes after the history
            keys = sorted(set(writer.metrics_keys).union(*rows))
            buffered = []
            if os.path.isfile(path):
                with open(path, newline="") as f:
                    buffered = list(csv.DictReader(f))
            text = io.StringIO(newline="")
            out = csv.DictWriter(text, fieldnames=keys)
            out.writeheader()
            out.writerows(rows + buffered)
            atomic_write_text(path, text.getvalue())
            writer.metrics_keys = keys  # later saves append under this header
        self.history = {}
