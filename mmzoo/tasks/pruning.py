"""Prune -> retrain -> prune inside ``train.py``: a Lightning callback running :func:`mmzoo.compress.prune` at
the start of chosen epochs, the masks held through every optimizer step in between.

    python train.py model=vit data=digits callbacks=pruning \\
        'callbacks.pruning.epochs=[2,4,6]' 'callbacks.pruning.sparsities=[0.5,0.7,0.8]'

Checkpoints hold plain parameter names (the masked values, zeros included) so that any mmzoo reader loads
them, plus the boolean masks under ``"pruning_masks"``; resuming re-registers those masks. At the end of
``fit`` the masks are baked into the weights (the test stage and the final ``last.ckpt`` see a plain model).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import lightning as L
import torch

from ..compress.pruning import DEFAULT_SKIP, GRANULARITIES, apply_masks, get_masks, prune, remove_masks, \
    weight_sparsity

_PARAM_KEY = ".parametrizations."


class IterativePruning(L.Callback):
    """Magnitude pruning to ``sparsities[i]`` at the start of epoch ``epochs[i]``.

    Args:
        epochs: epochs (0-based, increasing) at whose start a round runs.
        sparsities: increasing targets, one per epoch.
        granularity: ``"fine"``, ``"row"`` or ``"head"`` (see :mod:`mmzoo.compress.pruning`).
        scope: ``"layer"`` or ``"global"`` (``fine`` only).
        skip: module-name patterns of the model left alone (the classifier head by default).
    """

    def __init__(self, epochs: Sequence[int], sparsities: Sequence[float], granularity: str = "fine",
                 scope: str = "layer", skip: Sequence[str] = DEFAULT_SKIP) -> None:
        epochs, sparsities = [int(e) for e in epochs], [float(s) for s in sparsities]
        if len(epochs) != len(sparsities) or not epochs:
            raise ValueError(f"callbacks.pruning: epochs {epochs} and sparsities {sparsities} must be non-empty "
                             "lists of equal length")
        if epochs != sorted(set(epochs)) or sparsities != sorted(sparsities):
            raise ValueError(f"callbacks.pruning: epochs {epochs} and sparsities {sparsities} must increase")
        if granularity not in GRANULARITIES:
            raise ValueError(f"callbacks.pruning.granularity must be one of {list(GRANULARITIES)}, got {granularity!r}")
        self.schedule = dict(zip(epochs, sparsities))
        self.granularity, self.scope, self.skip = granularity, scope, list(skip)
        self._baked: Optional[dict[str, torch.Tensor]] = None  # masks removed at fit end, still saved

    @staticmethod
    def _model(pl_module: L.LightningModule) -> torch.nn.Module:
        return getattr(pl_module, "model", pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        target = self.schedule.get(trainer.current_epoch)
        if target is None:
            return
        # every rank prunes the same replicated weights to the same masks: no collective involved
        achieved = prune(self._model(pl_module), target, self.granularity, self.scope, self.skip)
        pl_module.log("train/weight_sparsity", achieved, on_step=False, on_epoch=True, sync_dist=False)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        masks = get_masks(pl_module) or self._baked or {}
        state = checkpoint.get("state_dict")
        if state is not None and masks:
            for name in masks:  # plain key with the masked value; drop the parametrization's own keys
                mod_name, _, pname = name.rpartition(".")
                state[name] = getattr(pl_module.get_submodule(mod_name), pname).detach().clone()
            for k in [k for k in state if _PARAM_KEY in k]:
                del state[k]
        checkpoint["pruning_masks"] = {k: v.cpu() for k, v in masks.items()}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        masks = checkpoint.get("pruning_masks")
        if masks:  # the plain weights are loaded already (zeros in place): hold them from here on
            apply_masks(pl_module, {k: v.to(pl_module.device) for k, v in masks.items()})

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._baked = get_masks(pl_module) or self._baked
        remove_masks(pl_module)
        if self._baked:
            sparsity = weight_sparsity(self._model(pl_module), self.skip)
            trainer.print(f"pruning: final weight sparsity {sparsity:.4f} ({self.granularity})")
