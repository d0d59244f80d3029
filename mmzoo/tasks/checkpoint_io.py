"""Lightning's side of :mod:`mmzoo.checkpoint`: the checkpoint IO plugin every run uses (atomic saves, safe
loads whose errors say what a file is) and the callback that stores the run settings a resumed run is
compared with."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import lightning as L
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .. import checkpoint as ckpt_lib
from ..checkpoint import save as atomic_torch_save  # noqa: F401  (the name earlier code imports from here)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO: saves with :func:`mmzoo.checkpoint.save` (temporary file, fsync, rename),
    loads with :func:`mmzoo.checkpoint.load` (``weights_only=True``; a file that is not a Lightning
    checkpoint is an error saying what it is)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO takes no storage_options, got {storage_options!r}")
        ckpt_lib.save(checkpoint, Path(path))

    def load_checkpoint(self, path, map_location: Optional[Any] = None, weights_only: Optional[bool] = None):
        # mmzoo checkpoints hold only tensors and plain containers: always load them safely (on CPU;
        # Lightning moves the states where they belong)
        if Path(path).is_file() and ckpt_lib.is_safetensors(path):
            ckpt_lib.read_training_checkpoint(path)  # raises: weights only, and what to do instead
        obj = ckpt_lib.load(path)
        if not isinstance(obj, dict) or ckpt_lib.LIGHTNING_VERSION_KEY not in obj or "state_dict" not in obj:
            ckpt_lib.read_training_checkpoint(path)  # raises, saying what the file is and what to do
        return obj


class RunRecord(L.Callback):
    """Stores :func:`mmzoo.checkpoint.run_record` (seed, data config, processes, accumulation) in every
    checkpoint under ``mmzoo_run``.

    Args:
        record: the run's settings, plain containers.
    """

    def __init__(self, record: Mapping[str, Any]) -> None:
        self.record = dict(record)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, ckpt: dict[str, Any]) -> None:
        ckpt.setdefault(ckpt_lib.RUN_KEY, {}).update(self.record)  # beside mmzoo.run_info's name and W&B id
