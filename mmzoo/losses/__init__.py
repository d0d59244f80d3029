"""Losses: tensors in, a scalar (or a dict of scalars) out. Distributed gathering lives here too."""
from .coca import CoCaLoss
from .contrastive import ContrastiveLogits, ContrastiveLoss
from .distributed import all_gather_no_grad, all_gather_with_grad, dist_info
from .point_mix import PatchMix, PointPatchMixLoss, mix_point_patches, moco_infonce
from .wav2vec2 import Wav2Vec2Loss

__all__ = ["CoCaLoss", "ContrastiveLogits", "ContrastiveLoss", "all_gather_no_grad", "all_gather_with_grad",
           "dist_info", "PatchMix", "PointPatchMixLoss", "mix_point_patches", "moco_infonce", "Wav2Vec2Loss"]
