"""Point-cloud logging to W&B (offline): 3-D objects and the token-usage histogram."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from mmzoo.loggers import wandb_logger
from mmzoo.tasks.callbacks import LogPointClouds


def test_point_clouds_and_token_histogram_logged(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = wandb_logger(project="mmzoo-test", save_dir=str(tmp_path))
    logged = []
    monkeypatch.setattr(logger.experiment, "log", lambda data, **kw: logged.append(data))
    task = SimpleNamespace(val_point_samples={"input": torch.randn(3, 50, 3), "reconstruction": torch.randn(3, 40, 3)},
                           token_counts=torch.tensor([5, 0, 2, 1]))
    trainer = SimpleNamespace(loggers=[logger], sanity_checking=False, global_step=3)
    LogPointClouds(max_samples=2).on_validation_epoch_end(trainer, task)
    import wandb

    data = logged[0]
    assert sorted(k for k in data if k.startswith("val/point_cloud")) == [
        "val/point_cloud_input_0", "val/point_cloud_input_1",
        "val/point_cloud_reconstruction_0", "val/point_cloud_reconstruction_1"]
    assert all(isinstance(data[k], wandb.Object3D) for k in data if k.startswith("val/point_cloud"))
    hist = data["val/token_usage"]
    assert isinstance(hist, wandb.Histogram) and list(hist.histogram) == [5, 0, 2, 1]
    logger.experiment.finish()
