"""Training monitors for dashboards: gradient / parameter norms and histograms, throughput, a validation
confusion matrix, and tables of text samples (generations, transcripts).

Every monitor works on the rank it runs on and never issues a collective (STYLE.md habit 11): norms are
those of the synchronised gradients every rank holds after DDP's all-reduce, throughput is per rank
(multiplied by the world size for the global figure), and the confusion matrix counts rank 0's share of the
validation set under DDP, which it says in its title.
"""
from __future__ import annotations

import io
import time
from typing import Any

import lightning as L
import numpy as np
import torch


def _log_scalars(trainer: L.Trainer, values: dict[str, Any]) -> None:
    """Straight to the loggers at the current step (rank 0), not through ``LightningModule.log``: the
    values belong to this step only and must not be re-logged, nor reduced across ranks."""
    if not trainer.is_global_zero:
        return
    scalars = {k: float(v) for k, v in values.items()}
    for lg in trainer.loggers:
        lg.log_metrics(scalars, step=trainer.global_step)


def _loggers(trainer: L.Trainer, kind: str) -> list:
    return [lg for lg in trainer.loggers if type(lg).__name__ == kind]


def _batch_size_and_tokens(batch: Any) -> tuple[int, int]:
    """Samples in a batch (the leading dimension of its first tensor) and, for token batches (integer
    tensors of shape ``(B, T)``), tokens."""
    first = batch
    while isinstance(first, (list, tuple)) and first:
        first = first[0]
    if isinstance(first, dict):
        first = next((v for v in first.values() if torch.is_tensor(v)), None)
    if not torch.is_tensor(first) or first.dim() == 0:
        return 0, 0
    tokens = first.numel() if first.dim() == 2 and not first.is_floating_point() else 0
    return int(first.shape[0]), int(tokens)


class TrainingMonitor(L.Callback):
    """Every ``every_n_steps`` optimizer steps log ``monitor/grad_norm`` (total L2 norm of the gradients,
    before clipping), ``monitor/param_norm``, per top-level submodule ``monitor/grad_norm/NAME``, and
    throughput ``monitor/samples_per_s`` (and ``monitor/tokens_per_s`` for token batches) per rank;
    with ``histograms`` also a histogram of each parameter tensor and its gradient to W&B / TensorBoard.

    Args:
        every_n_steps: logging interval in optimizer steps.
        per_module: also log the gradient norm of each top-level child of the model.
        histograms: log weight and gradient histograms (costly on large models).
    """

    def __init__(self, every_n_steps: int = 50, per_module: bool = True, histograms: bool = False) -> None:
        if every_n_steps < 1:
            raise ValueError(f"callbacks.monitor.every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.per_module = per_module
        self.histograms = histograms
        self._t0: float | None = None
        self._samples = 0
        self._tokens = 0

    def _due(self, trainer: L.Trainer) -> bool:
        return (trainer.global_step + 1) % self.every_n_steps == 0

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if not self._due(trainer):
            return
        model = getattr(pl_module, "model", pl_module)
        grads = {n: p.grad.detach() for n, p in model.named_parameters() if p.grad is not None}
        if not grads:
            return
        values = {"monitor/grad_norm": torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g.float()) for g in grads.values()]))}
        values["monitor/param_norm"] = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.detach().float()) for p in model.parameters()]))
        if self.per_module:
            for child, _ in model.named_children():
                sub = [g for n, g in grads.items() if n.startswith(child + ".")]
                if sub:
                    values[f"monitor/grad_norm/{child}"] = torch.linalg.vector_norm(
                        torch.stack([torch.linalg.vector_norm(g.float()) for g in sub]))
        # identical on every DDP rank after the gradient all-reduce: rank 0 logs them, no sync
        _log_scalars(trainer, values)
        if self.histograms and trainer.is_global_zero:
            self._log_histograms(trainer, model, grads)

    def _log_histograms(self, trainer: L.Trainer, model: torch.nn.Module, grads: dict[str, torch.Tensor]) -> None:
        step = trainer.global_step
        for lg in _loggers(trainer, "WandbLogger"):
            import wandb

            data = {f"weights/{n}": wandb.Histogram(p.detach().float().cpu().numpy()) for n, p in model.named_parameters()}
            data.update({f"grads/{n}": wandb.Histogram(g.float().cpu().numpy()) for n, g in grads.items()})
            lg.experiment.log({**data, "trainer/global_step": step})
        for lg in _loggers(trainer, "TensorBoardLogger"):
            for n, p in model.named_parameters():
                lg.experiment.add_histogram(f"weights/{n}", p.detach().float().cpu(), step)
            for n, g in grads.items():
                lg.experiment.add_histogram(f"grads/{n}", g.float().cpu(), step)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        n, tokens = _batch_size_and_tokens(batch)
        self._samples += n
        self._tokens += tokens
        if trainer.global_step % self.every_n_steps or self._t0 is None:
            return
        elapsed = time.perf_counter() - self._t0
        if elapsed > 0 and self._samples:
            values = {"monitor/samples_per_s": torch.tensor(self._samples / elapsed)}
            if self._tokens:
                values["monitor/tokens_per_s"] = torch.tensor(self._tokens / elapsed)
            _log_scalars(trainer, values)
        self._t0, self._samples, self._tokens = time.perf_counter(), 0, 0

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = None  # validation time is not training throughput
        self._samples = self._tokens = 0


def confusion_figure(counts: np.ndarray, names: list[str], title: str) -> np.ndarray:
    """An RGB picture (H, W, 3, uint8) of a confusion matrix: rows true classes, columns predictions,
    each row normalised to recall, with the counts written in the cells when there are few classes.

    Args:
        counts: (C, C) integer counts, ``counts[true, predicted]``.
        names: class names (C of them).
        title: the picture's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = counts.shape[0]
    rows = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = min(3 + 0.35 * c, 14)
    fig, ax = plt.subplots(figsize=(size, size), dpi=80)
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(c), names, rotation=90, fontsize=7)
    ax.set_yticks(range(c), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    if c <= 20:
        for i in range(c):
            for j in range(c):
                if counts[i, j]:
                    ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=6,
                            color="white" if rows[i, j] > 0.5 else "black")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="raw")
    w, h = fig.canvas.get_width_height()
    plt.close(fig)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8).reshape(h, w, 4)[..., :3].copy()


class ConfusionMatrix(L.Callback):
    """At each validation end, a confusion matrix of the classifier's predictions as an image
    (``val/confusion_matrix``) in W&B and TensorBoard. Reads the logits ``validation_step`` returns and the
    targets of the batch (``batch[1]``, or ``batch["answer"]`` for VQA).

    Args:
        max_classes: tasks with more classes are skipped (the picture would be unreadable).
    """

    def __init__(self, max_classes: int = 50) -> None:
        self.max_classes = max_classes
        self._counts: torch.Tensor | None = None

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._counts = None

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or not torch.is_tensor(outputs) or outputs.dim() != 2:
            return
        target = batch.get("answer") if isinstance(batch, dict) else batch[1] if isinstance(batch, (list, tuple)) else None
        if not torch.is_tensor(target) or target.dim() != 1 or target.shape[0] != outputs.shape[0]:
            return
        c = outputs.shape[1]
        if c > self.max_classes:
            return
        if self._counts is None:
            self._counts = torch.zeros(c, c, dtype=torch.long)
        pred = outputs.detach().argmax(-1).cpu()
        idx = target.cpu().long() * c + pred
        self._counts += torch.bincount(idx, minlength=c * c).view(c, c)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._counts is None or not trainer.is_global_zero or trainer.sanity_checking:
            return
        counts = self._counts.numpy()
        names = list(getattr(pl_module, "class_names", None) or getattr(pl_module, "answers", None) or [])
        if len(names) != counts.shape[0]:
            names = [str(i) for i in range(counts.shape[0])]
        share = " (rank 0's share)" if trainer.world_size > 1 else ""
        acc = np.trace(counts) / max(counts.sum(), 1)
        image = confusion_figure(counts, names, f"validation, step {trainer.global_step}{share}: "
                                                f"accuracy {acc:.3f} over {int(counts.sum())}")
        for lg in _loggers(trainer, "WandbLogger"):
            import wandb

            lg.experiment.log({"val/confusion_matrix": wandb.Image(image), "trainer/global_step": trainer.global_step})
        for lg in _loggers(trainer, "TensorBoardLogger"):
            lg.experiment.add_image("val/confusion_matrix", image, trainer.global_step, dataformats="HWC")


class LogTextSamples(L.Callback):
    """After each validation, the task's ``text_samples`` (a list of rows: dicts of column -> text or
    number, e.g. a language model's prompt and generation, a CTC model's hypothesis, reference and CER) as a
    W&B table ``val/text_samples`` and TensorBoard text."""

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rows = getattr(pl_module, "text_samples", None)
        if not rows or not trainer.is_global_zero or trainer.sanity_checking:
            return
        columns = list(rows[0])
        for lg in _loggers(trainer, "WandbLogger"):
            import wandb

            table = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
            lg.experiment.log({"val/text_samples": table, "trainer/global_step": trainer.global_step})
        for lg in _loggers(trainer, "TensorBoardLogger"):
            header = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
            body = "".join("| " + " | ".join(str(r.get(c, "")).replace("|", "\\|") for c in columns) + " |\n"
                           for r in rows)
            lg.experiment.add_text("val/text_samples", header + body, trainer.global_step)


def _vision_encoder(model: torch.nn.Module) -> tuple[torch.nn.Module, Any] | None:
    """The image encoder of a ViT or a CLIP-like model and the call that runs it on images (B, C, H, W)."""
    tower = getattr(model, "visual", None) or model
    if hasattr(tower, "forward_features") and hasattr(tower, "patch_embed"):
        return tower, tower.forward_features
    return None


def attention_rollout_last(encoder: torch.nn.Module, run: Any, images: torch.Tensor) -> torch.Tensor | None:
    """The last self-attention layer's attention from the first (class) token to every patch, averaged
    over heads: (B, grid_h, grid_w) in [0, 1]. Recomputed from the layer's input in float32 with the
    reference formula softmax(q k^T / sqrt(d)), so it is exact whichever attention kernel the model uses.

    Args:
        encoder: a ViT-style encoder with ``patch_embed`` and ``num_prefix_tokens``.
        run: the function that runs the encoder on images.
        images: (B, C, H, W).
    """
    from .layers.attention import Attention

    attns = [m for m in encoder.modules() if isinstance(m, Attention) and not m.cross_attn]
    if not attns or getattr(encoder, "num_prefix_tokens", 0) < 1:
        return None
    last = attns[-1]
    captured: dict[str, torch.Tensor] = {}
    handle = last.register_forward_hook(lambda mod, args, out: captured.setdefault("x", args[0].detach()))
    try:
        with torch.no_grad():
            run(images)
            x = captured["x"]
            q, k, _, _ = last._project(x, None, None)
            q, k = last.q_norm(q).float(), last.k_norm(k).float()
            if last.num_kv_heads != last.num_heads:
                k = k.repeat_interleave(last.num_heads // last.num_kv_heads, dim=1)
            attn = ((q @ k.transpose(-2, -1)) * last.scale).softmax(-1)  # (B, H, L, L)
    finally:
        handle.remove()
    prefix = encoder.num_prefix_tokens
    cls = attn[:, :, 0, prefix:].mean(1)  # (B, N) from the class token to the patches
    gh, gw = encoder.patch_embed.grid_size
    if cls.shape[1] != gh * gw:
        return None
    cls = cls.view(-1, gh, gw)
    lo = cls.flatten(1).min(1).values[:, None, None]
    hi = cls.flatten(1).max(1).values[:, None, None]
    return (cls - lo) / (hi - lo).clamp_min(1e-12)


class AttentionMaps(L.Callback):
    """After each validation, the class token's attention over the patches in the last layer of a ViT or
    CLIP image encoder, overlaid on the first validation images (``val/attention_maps``, W&B and
    TensorBoard). Reads ``task.val_samples`` (the images the sample-prediction callback logs).

    Args:
        max_samples: images per grid.
    """

    def __init__(self, max_samples: int = 8) -> None:
        self.max_samples = max_samples

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        samples = getattr(pl_module, "val_samples", None)
        if samples is None or not trainer.is_global_zero or trainer.sanity_checking:
            return
        images = samples[0][: self.max_samples]
        found = _vision_encoder(getattr(pl_module, "model", pl_module))
        if images.dim() != 4 or found is None:
            return
        encoder, run = found
        device = next(encoder.parameters()).device
        was_training = encoder.training
        encoder.eval()
        try:
            maps = attention_rollout_last(encoder, run, images.to(device))
        finally:
            encoder.train(was_training)
        if maps is None:
            return
        grid = overlay_grid(images.float(), maps.cpu())
        for lg in _loggers(trainer, "WandbLogger"):
            import wandb

            lg.experiment.log({"val/attention_maps": wandb.Image(grid), "trainer/global_step": trainer.global_step})
        for lg in _loggers(trainer, "TensorBoardLogger"):
            lg.experiment.add_image("val/attention_maps", grid, trainer.global_step, dataformats="HWC")


def overlay_grid(images: torch.Tensor, maps: torch.Tensor) -> np.ndarray:
    """A row of images (each min-max scaled for display) with their attention maps in red on top:
    (H, W * B, 3) uint8.

    Args:
        images: (B, C, H, W) with C 1 or 3.
        maps: (B, h, w) in [0, 1].
    """
    b, c, h, w = images.shape
    lo = images.flatten(1).min(1).values[:, None, None, None]
    hi = images.flatten(1).max(1).values[:, None, None, None]
    img = ((images - lo) / (hi - lo).clamp_min(1e-12)).expand(b, 3, h, w) if c == 1 else \
        (images - lo) / (hi - lo).clamp_min(1e-12)
    heat = torch.nn.functional.interpolate(maps[:, None], size=(h, w), mode="nearest")[:, 0]  # (B, H, W)
    out = img * 0.5
    out[:, 0] += 0.5 * heat
    out = out.clamp(0, 1).permute(2, 0, 3, 1).reshape(h, b * w, 3)  # (H, B*W, 3)
    return (out.numpy() * 255).astype(np.uint8)
