"""Dashboard monitors: norms and throughput, the confusion matrix, text-sample tables."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from mmzoo.monitoring import ConfusionMatrix, LogTextSamples, TrainingMonitor, confusion_figure
from mmzoo.training import train

TINY = ["model=vit", "model.name=vit_nano_patch4_32", "data=digits", "data.batch_size=64"]


def test_monitor_logs_the_true_gradient_norm_and_throughput(train_cfg, monkeypatch):
    seen = {}
    original = TrainingMonitor.on_before_optimizer_step

    def spy(self, trainer, pl_module, optimizer):
        original(self, trainer, pl_module, optimizer)
        if self._due(trainer):  # reference: the norm of all gradients as one vector, in float64
            flat = torch.cat([p.grad.double().flatten() for p in pl_module.model.parameters() if p.grad is not None])
            seen[trainer.global_step + 1] = float(flat.norm())

    monkeypatch.setattr(TrainingMonitor, "on_before_optimizer_step", spy)
    cfg = train_cfg(*TINY, "trainer.max_epochs=1", "+trainer.limit_train_batches=6", "+trainer.limit_val_batches=1",
                    "callbacks.monitor.every_n_steps=3", "trainer.log_every_n_steps=1", "test=false")
    train(cfg)
    with (Path(cfg.paths.output_dir) / "csv" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    logged = {int(r["step"]): float(r["monitor/grad_norm"]) for r in rows if r.get("monitor/grad_norm")}
    assert sorted(logged) == [2, 5] and sorted(seen) == [3, 6]  # logged at the step before it increments
    assert logged[2] == pytest.approx(seen[3], rel=1e-5) and logged[5] == pytest.approx(seen[6], rel=1e-5)
    modules = {k for r in rows for k, v in r.items() if k.startswith("monitor/grad_norm/") and v}
    assert {"monitor/grad_norm/blocks", "monitor/grad_norm/head"} <= modules
    speeds = [float(r["monitor/samples_per_s"]) for r in rows if r.get("monitor/samples_per_s")]
    assert speeds and all(s > 0 for s in speeds)


def test_confusion_matrix_counts_every_validation_prediction(tmp_path):
    from types import SimpleNamespace

    cb = ConfusionMatrix()
    tb = TensorBoardLogger(str(tmp_path), name="tb", version="")
    trainer = SimpleNamespace(sanity_checking=False, loggers=[tb], is_global_zero=True, world_size=1, global_step=4)
    task = SimpleNamespace(class_names=["a", "b", "c"])
    cb.on_validation_epoch_start(trainer, task)
    logits = torch.eye(3)[[0, 1, 2, 2, 1]] * 5  # predictions 0 1 2 2 1
    target = torch.tensor([0, 1, 2, 1, 0])
    cb.on_validation_batch_end(trainer, task, logits[:3], (None, target[:3]), 0)
    cb.on_validation_batch_end(trainer, task, logits[3:], (None, target[3:]), 1)
    expected = np.zeros((3, 3), dtype=int)
    for t, p in zip(target.tolist(), [0, 1, 2, 2, 1]):
        expected[t, p] += 1
    assert (cb._counts.numpy() == expected).all()
    cb.on_validation_epoch_end(trainer, task)
    tb.experiment.flush()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    acc.Reload()
    assert acc.Images("val/confusion_matrix")[0].step == 4


def test_confusion_figure_is_an_rgb_picture():
    image = confusion_figure(np.array([[3, 1], [0, 4]]), ["x", "y"], "t")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.std() > 0


def test_text_samples_reach_tensorboard(tmp_path):
    from types import SimpleNamespace

    tb = TensorBoardLogger(str(tmp_path), name="tb", version="")
    trainer = SimpleNamespace(sanity_checking=False, loggers=[tb], is_global_zero=True, global_step=2)
    task = SimpleNamespace(text_samples=[{"hypothesis": "one", "reference": "one", "cer": 0.0},
                                         {"hypothesis": "tw|o", "reference": "two", "cer": 0.5}])
    LogTextSamples().on_validation_epoch_end(trainer, task)
    tb.experiment.flush()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    text = acc.Tensors("val/text_samples/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| hypothesis | reference | cer |" in text and "tw\\|o" in text


def test_attention_map_equals_the_reference_attention_of_the_last_layer():
    import mmzoo
    from mmzoo.monitoring import attention_rollout_last, overlay_grid

    torch.manual_seed(0)
    model = mmzoo.create_model("vit_nano_patch4_32", img_size=16, in_chans=1, num_classes=3).eval()
    x = torch.randn(2, 1, 16, 16)
    maps = attention_rollout_last(model, model.forward_features, x)
    assert maps.shape == (2, 4, 4) and float(maps.min()) == 0.0 and float(maps.max()) == pytest.approx(1.0)

    # reference: run the blocks by hand in float64 and take the last block's attention probabilities
    m = model.double()
    with torch.no_grad():
        captured = {}
        last = m.blocks[-1].attn
        h = last.register_forward_hook(lambda mod, a, o: captured.setdefault("x", a[0]))
        m.forward_features(x.double())
        h.remove()
        xin = captured["x"]
        B, L, C = xin.shape
        qkv = last.qkv(xin).view(B, L, 3, last.num_heads, C // last.num_heads).permute(2, 0, 3, 1, 4)
        probs = (qkv[0] @ qkv[1].transpose(-2, -1) / (C // last.num_heads) ** 0.5).softmax(-1)
        ref = probs[:, :, 0, 1:].mean(1).view(2, 4, 4)
        ref = (ref - ref.amin((1, 2), keepdim=True)) / (ref.amax((1, 2), keepdim=True) - ref.amin((1, 2), keepdim=True))
    assert torch.allclose(maps.double(), ref, atol=1e-5)
    grid = overlay_grid(x, maps)
    assert grid.shape == (16, 32, 3) and grid.dtype == np.uint8
