"""Knowledge distillation (Hinton et al. 2015): a student classifier learns from a frozen teacher's
softened outputs, optionally matching intermediate features (FitNets, Romero et al. 2015, by MSE), their
distribution (neuron selectivity transfer: a Gaussian-kernel MMD), the relations between the batch's
embeddings (RKD distances and angles, Park et al. 2019) and attention maps (KL)."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers.attention import Attention
from ..losses.distill import activation_boundary_loss, attention_map_loss, nst_loss, rkd_angle_loss, rkd_distance_loss
from .classification import ClassificationTask

FEATURE_LOSSES = ("mse", "mmd", "boundary")


def attention_probs(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """The attention probabilities ``softmax(q k^T / sqrt(d))`` (B, H, L, L) an :class:`Attention` computes
    for input ``x`` (B, L, dim), recomputed from its projections (no mask: the classifiers' case)."""
    if attn.cross_attn:
        raise ValueError("attention-map matching takes self-attention modules")
    q, k, _, _ = attn._project(x, None, None)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if attn.rope is not None:
        q, k = attn.rope(q, 0), attn.rope(k, 0)
    k = k.repeat_interleave(attn.num_heads // attn.num_kv_heads, dim=1)  # GQA: each group shares a key head
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1)


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


class _CaptureInput:
    """Forward pre-hook storing a module's first input."""

    def __init__(self) -> None:
        self.value: Optional[torch.Tensor] = None

    def __call__(self, module, args) -> None:
        self.value = args[0]


class DistillationTask(ClassificationTask):
    """Train ``model`` (the student) on labels and on a frozen teacher's soft targets.

    Args:
        model: the student.
        teacher: path of the teacher checkpoint (any file ``create_model(pretrained=...)`` reads; mmzoo
            checkpoints hold their config), or a built ``nn.Module``.
        temperature: softmax temperature T of the soft targets.
        alpha: weight of the soft-target term (``1 - alpha`` for cross-entropy).
        feature_layers: optional ``[[student_module, teacher_module], ...]`` pairs whose outputs are matched.
        feature_loss: ``"mse"`` (student features linearly projected to the teacher's width when they differ;
            token sequences of different lengths are mean-pooled first) or ``"mmd"`` (neuron selectivity
            transfer: Gaussian MMD between the channels' activation patterns over the tokens; widths may
            differ, token counts must agree) or ``"boundary"`` (the teacher's sparsity pattern: activation
            boundaries, Heo et al. 2019, on pre-activation features such as ``mlp.fc1``; projected like mse).
        feature_weight: weight of the feature-matching term.
        mmd_sigma: Gaussian kernel bandwidth of ``feature_loss="mmd"``.
        rkd_distance_weight: weight of RKD's distance term (Park et al. use 25 with angle 50; 0 = off).
        rkd_angle_weight: weight of RKD's angle term (0 = off).
        rkd_layer: the embeddings RKD compares are the inputs of this module in student and teacher (the
            pooled features, for the ``head`` of a classifier).
        attention_layers: optional ``[[student_attention, teacher_attention], ...]`` self-attention modules
            whose attention probabilities are matched (KL; averaged over heads when the counts differ).
        attention_weight: weight of the attention-map term.
        teacher_name: preset name when ``teacher`` is a foreign checkpoint without a config.
        **kwargs: see :class:`ClassificationTask`.
    """

    def __init__(self, model: nn.Module, teacher: Any, temperature: float = 4.0, alpha: float = 0.5,
                 feature_layers: Optional[Sequence[Sequence[str]]] = None, feature_weight: float = 1.0,
                 teacher_name: Optional[str] = None, feature_loss: str = "mse", mmd_sigma: float = 1.0,
                 rkd_distance_weight: float = 0.0, rkd_angle_weight: float = 0.0, rkd_layer: str = "head",
                 attention_layers: Optional[Sequence[Sequence[str]]] = None, attention_weight: float = 1.0,
                 **kwargs: Any) -> None:
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
        if feature_loss not in FEATURE_LOSSES:
            raise ValueError(f"task.feature_loss must be one of {list(FEATURE_LOSSES)}, got {feature_loss!r}")
        if mmd_sigma <= 0:
            raise ValueError(f"task.mmd_sigma must be positive, got {mmd_sigma}")
        self.feature_loss, self.mmd_sigma = feature_loss, mmd_sigma
        self.rkd_distance_weight, self.rkd_angle_weight = rkd_distance_weight, rkd_angle_weight
        self.attention_weight = attention_weight
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
            self.feature_proj.append(nn.Linear(s_w, t_w) if s_w != t_w and feature_loss != "mmd" else nn.Identity())
            cs, ct = _Capture(), _Capture()
            s_mod.register_forward_hook(cs)
            t_mod.register_forward_hook(ct)
            self._hooks.append((cs, ct))
        self._rkd: Optional[tuple[_CaptureInput, _CaptureInput]] = None
        if rkd_distance_weight or rkd_angle_weight:
            self._rkd = (_CaptureInput(), _CaptureInput())
            for net, cap, who in ((model, self._rkd[0], "student"), (t, self._rkd[1], "teacher")):
                try:
                    net.get_submodule(rkd_layer).register_forward_pre_hook(cap)
                except AttributeError:
                    raise ValueError(f"task.rkd_layer={rkd_layer!r} is not a module of the {who} "
                                     "(its input is the embedding RKD compares)") from None
        self.attention_layers = [tuple(p) for p in (attention_layers or [])]
        self._attn: list[tuple[Attention, Attention, _CaptureInput, _CaptureInput]] = []
        for s_name, t_name in self.attention_layers:
            mods = []
            for net, name, who in ((model, s_name, "student"), (t, t_name, "teacher")):
                try:
                    mod = net.get_submodule(name)
                except AttributeError:
                    mod = None
                if not isinstance(mod, Attention) or mod.cross_attn:
                    raise ValueError(f"task.attention_layers: {name!r} is not a self-attention module of the {who} "
                                     "(e.g. blocks.0.attn)")
                mods.append(mod)
            cs, ct = _CaptureInput(), _CaptureInput()
            mods[0].register_forward_pre_hook(cs)
            mods[1].register_forward_pre_hook(ct)
            self._attn.append((mods[0], mods[1], cs, ct))

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def _feature_loss(self) -> torch.Tensor:
        loss = torch.zeros((), device=self.device)
        for proj, (cs, ct) in zip(self.feature_proj, self._hooks):
            s, t = proj(cs.value), ct.value
            if self.feature_loss == "mmd":
                loss = loss + nst_loss(s.flatten(1, -2) if s.dim() > 3 else s, t.flatten(1, -2) if t.dim() > 3 else t,
                                       self.mmd_sigma)
                continue
            if s.shape != t.shape:  # different token counts: compare mean features
                s, t = s.flatten(1, -2).mean(1), t.flatten(1, -2).mean(1)
            loss = loss + (F.mse_loss(s, t) if self.feature_loss == "mse" else activation_boundary_loss(s, t))
        return loss

    def _relational_loss(self) -> torch.Tensor:
        s, t = self._rkd[0].value, self._rkd[1].value
        loss = torch.zeros((), device=self.device)
        if self.rkd_distance_weight:
            loss = loss + self.rkd_distance_weight * rkd_distance_loss(s, t)
        if self.rkd_angle_weight:
            loss = loss + self.rkd_angle_weight * rkd_angle_loss(s, t)
        return loss

    def _attention_loss(self) -> torch.Tensor:
        loss = torch.zeros((), device=self.device)
        for s_mod, t_mod, cs, ct in self._attn:
            with torch.no_grad():
                t_probs = attention_probs(t_mod, ct.value)
            loss = loss + attention_map_loss(attention_probs(s_mod, cs.value), t_probs)
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
        if self._rkd is not None:
            rel = self._relational_loss()
            self.log("train/relational_loss", rel)
            loss = loss + rel
        if self._attn:
            att = self._attention_loss()
            self.log("train/attention_loss", att)
            loss = loss + self.attention_weight * att
        self.train_metrics(logits.detach(), y)
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return self.check_loss(loss)
