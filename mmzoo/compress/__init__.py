"""Model compression as taught: magnitude pruning with persistent masks and sparse export
(:mod:`mmzoo.compress.pruning`), k-means and linear (affine) quantization with integer matmuls, activation
calibration and SmoothQuant (:mod:`mmzoo.compress.quantization`). Distillation losses live in
:mod:`mmzoo.losses.distill` and are selected in ``task=distill``."""
from .pruning import (apply_masks, export_sparse, get_masks, iterative_prune, load_sparse, magnitude_masks, prune,
                      remove_masks, weight_sparsity)
from .quantization import (Int8Linear, KMeansLinear, affine_qparams, calibrate, dequantize_affine, int8_matmul,
                           kmeans_1d, model_bytes, quantize_affine, quantize_int8, quantize_kmeans, smooth_quant)

__all__ = ["apply_masks", "export_sparse", "get_masks", "iterative_prune", "load_sparse", "magnitude_masks", "prune",
           "remove_masks", "weight_sparsity", "Int8Linear", "KMeansLinear", "affine_qparams", "calibrate",
           "dequantize_affine", "int8_matmul", "kmeans_1d", "model_bytes", "quantize_affine", "quantize_int8",
           "quantize_kmeans", "smooth_quant"]
