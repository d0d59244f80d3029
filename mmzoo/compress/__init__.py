"""Model compression as taught: magnitude pruning with persistent masks and sparse export
(:mod:`mmzoo.compress.pruning`), k-means and linear (affine) quantization with integer matmuls, activation
calibration and SmoothQuant (:mod:`mmzoo.compress.quantization`). Distillation losses live in
:mod:`mmzoo.losses.distill` and are selected in ``task=distill``."""
from .pruning import (apply_masks, export_sparse, get_masks, iterative_prune, load_sparse, magnitude_masks, prune,
                      remove_masks, weight_sparsity)

__all__ = ["apply_masks", "export_sparse", "get_masks", "iterative_prune", "load_sparse", "magnitude_masks", "prune",
           "remove_masks", "weight_sparsity"]
