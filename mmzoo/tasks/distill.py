"""Knowledge distillation (Hinton et al. 2015): a student classifier learns from a frozen teacher's
softened outputs, optionally matching intermediate features (FitNets, Romero et al. 2015)."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .classification import ClassificationTask


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      temperature: float = 4.0, alpha: float = 0.5, label_smoothing: float = 0.0) -> torch.Tensor:
    """``alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)``.

    The ``T^2`` factor keeps the soft-target gradients on the scale of the hard-target ones when T
    changes (Hinton et al. 2015, sec. 2).
    """
    T = temperature
    kl = F.kl_div(F.log_softmax(student_logits / T, dim=-1), F.log_softmax(teacher_logits / T, dim=-1),
                  reduction="batchmean", log_target=True)
    ce = F.cross_entropy(student_logits, targets, label_smoothing=label_smoothing)
    return alpha * T * T * kl + (1.0 - alpha) * ce


def output_width(module: nn.Module) -> int:
    """Feature width a module outputs (Linear, norm, Block, or the last Linear inside it)."""
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1]
    attn = getattr(module, "attn", None)
    if attn is not None and hasattr(attn, "proj"):
        return attn.proj.out_features
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"cannot tell the output width of {type(module).__name__} for feature matching")
    return linears[-1].out_features


class _Capture:
    """Forward hook storing a module's output."""

    def __init__(self) -> None:
        self.value: Optional[torch.Tensor] = None

    def __call__(self, module, args, output) -> None:
        self.value = output


class DistillationTask(ClassificationTask):
    """Train ``model`` (the student) on labels and on a frozen teacher's soft targets.

    Args:
        model: the student.
        teacher: path of the teacher checkpoint (any file ``create_model(pretrained=...)`` reads; mmzoo
            checkpoints hold their config), or a built ``nn.Module``.
        temperature: softmax temperature T of the soft targets.
        alpha: weight of the soft-target term (``1 - alpha`` for cross-entropy).
        feature_layers: optional ``[[student_module, teacher_module], ...]`` pairs whose outputs are matched
            with MSE (student features linearly projected to the teacher's width when they differ; token
            sequences of different lengths are mean-pooled first).
        feature_weight: weight of the feature-matching term.
        teacher_name: preset name when ``teacher`` is a foreign checkpoint without a config.
        **kwargs: see :class:`ClassificationTask`.
    """

    def __init__(self, model: nn.Module, teacher: Any, temperature: float = 4.0, alpha: float = 0.5,
                 feature_layers: Optional[Sequence[Sequence[str]]] = None, feature_weight: float = 1.0,
                 teacher_name: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"task.alpha must be in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ValueError(f"task.temperature must be positive, got {temperature}")
        if isinstance(teacher, nn.Module):
            t = teacher
        else:
            if teacher is None:
                raise ValueError("task=distill needs task.teacher=PATH (a trained classifier checkpoint)")
            from ..models import create_model

            t = create_model(teacher_name, pretrained=teacher)
        t.eval().requires_grad_(False)
        # kept outside the module tree: not optimised, not saved in the student's checkpoints
        self._teacher = [t]
        self.temperature, self.alpha, self.feature_weight = temperature, alpha, feature_weight
        self.feature_layers = [tuple(p) for p in (feature_layers or [])]
        self.feature_proj = nn.ModuleList()
        self._hooks: list[tuple[_Capture, _Capture]] = []
        for s_name, t_name in self.feature_layers:
            try:
                s_mod, t_mod = model.get_submodule(s_name), t.get_submodule(t_name)
            except AttributeError as e:
                raise ValueError(f"task.feature_layers: {e}; pairs are [student_module, teacher_module] names "
                                 "as in model.named_modules()") from None
            s_w, t_w = output_width(s_mod), output_width(t_mod)
            self.feature_proj.append(nn.Linear(s_w, t_w) if s_w != t_w else nn.Identity())
            cs, ct = _Capture(), _Capture()
            s_mod.register_forward_hook(cs)
            t_mod.register_forward_hook(ct)
            self._hooks.append((cs, ct))

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def _feature_loss(self) -> torch.Tensor:
        loss = torch.zeros((), device=self.device)
        for proj, (cs, ct) in zip(self.feature_proj, self._hooks):
            s, t = proj(cs.value), ct.value
            if s.shape != t.shape:  # different token counts: compare mean features
                s, t = s.flatten(1, -2).mean(1), t.flatten(1, -2).mean(1)
            loss = loss + F.mse_loss(s, t)
        return loss

    def training_step(self, batch, batch_idx: int):
        x, y = batch
        teacher = self.teacher.to(x.device)
        with torch.no_grad():
            t_logits = teacher(x)
        logits = self(x)
        self._check_batch(logits, y)
        loss = distillation_loss(logits, t_logits, y, self.temperature, self.alpha, self.label_smoothing)
        if self.feature_layers:
            feat = self._feature_loss()
            self.log("train/feature_loss", feat)
            loss = loss + self.feature_weight * feat
        self.train_metrics(logits.detach(), y)
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return self.check_loss(loss)
