"""Sample-prediction logging to W&B (offline) and TensorBoard, and the W&B offline fallback."""
from __future__ import annotations

from types import SimpleNamespace

import torch
from lightning.pytorch.loggers import TensorBoardLogger

from mmzoo.loggers import wandb_logger
from mmzoo.tasks.callbacks import LogSamplePredictions


def _fake(loggers):
    task = SimpleNamespace(val_samples=(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 1]),
                                        torch.tensor([0, 2, 2, 1])), class_names=["zero", "one", "two"])
    trainer = SimpleNamespace(loggers=loggers, sanity_checking=False, global_step=7)
    return trainer, task


def test_wandb_falls_back_to_offline_and_logs_a_table(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = wandb_logger(project="mmzoo-test", save_dir=str(tmp_path))
    assert logger._offline
    logged = []
    monkeypatch.setattr(logger.experiment, "log", lambda data, **kw: logged.append(data))
    trainer, task = _fake([logger])
    LogSamplePredictions().on_validation_epoch_end(trainer, task)
    table = logged[0]["val/samples"]
    assert table.columns == ["image", "prediction", "target", "correct"]
    assert [row[1:] for row in table.data] == [["zero", "zero", True], ["two", "one", False],
                                               ["two", "two", True], ["one", "one", True]]
    logger.experiment.finish()


def test_tensorboard_gets_an_image_grid_and_captions(tmp_path):
    logger = TensorBoardLogger(str(tmp_path), name="tb", version="")
    trainer, task = _fake([logger])
    LogSamplePredictions().on_validation_epoch_end(trainer, task)
    logger.experiment.flush()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    assert "val/samples" in acc.Tags()["images"]
    image = acc.Images("val/samples")[0]
    assert image.step == 7 and image.width > 8


def _fake_clips(loggers):
    task = SimpleNamespace(val_samples=(torch.randn(3, 3, 4, 8, 8), torch.tensor([0, 1, 2]),
                                        torch.tensor([0, 2, 2])), class_names=["steady", "bounce", "zigzag"])
    trainer = SimpleNamespace(loggers=loggers, sanity_checking=False, global_step=5)
    return trainer, task


def test_wandb_logs_sample_clips_as_videos(tmp_path, monkeypatch):
    import wandb

    from mmzoo.tasks.callbacks import LogSampleClips

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = wandb_logger(project="mmzoo-test", save_dir=str(tmp_path))
    logged = []
    monkeypatch.setattr(logger.experiment, "log", lambda data, **kw: logged.append(data))
    trainer, task = _fake_clips([logger])
    LogSampleClips(max_samples=2).on_validation_epoch_end(trainer, task)
    table = logged[0]["val/sample_clips"]
    assert table.columns == ["clip", "prediction", "target", "correct"]
    assert [row[1:] for row in table.data] == [["steady", "steady", True], ["zigzag", "bounce", False]]
    assert all(isinstance(row[0], wandb.Video) for row in table.data)
    assert logged[0]["trainer/global_step"] == 5
    logger.experiment.finish()


def test_tensorboard_gets_clip_frames(tmp_path):
    from mmzoo.tasks.callbacks import LogSampleClips

    logger = TensorBoardLogger(str(tmp_path), name="tb", version="")
    trainer, task = _fake_clips([logger])
    LogSampleClips().on_validation_epoch_end(trainer, task)
    logger.experiment.flush()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    acc.Reload()
    image = acc.Images("val/sample_clips")[0]
    assert image.step == 5 and image.width >= 4 * 8  # one row of 4 frames per clip


def test_sample_predictions_skip_samples_that_are_not_images(tmp_path, caplog):
    """A point classifier's val_samples are clouds (B, N, 3): no image is logged (TensorBoard cannot draw
    them), one warning says so, and the run goes on."""
    logger = TensorBoardLogger(str(tmp_path), name="tb", version="")
    trainer, task = _fake([logger])
    task.val_samples = (torch.randn(4, 64, 3), *task.val_samples[1:])
    callback = LogSamplePredictions()
    with caplog.at_level("WARNING"):
        callback.on_validation_epoch_end(trainer, task)
        callback.on_validation_epoch_end(trainer, task)
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "(4, 64, 3)" in caplog.records[0].getMessage()
    logger.experiment.flush()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    acc.Reload()
    assert "val/samples" not in acc.Tags()["images"]


def test_vqa_samples_carry_their_questions(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = wandb_logger(project="mmzoo-test", save_dir=str(tmp_path))
    logged = []
    monkeypatch.setattr(logger.experiment, "log", lambda data, **kw: logged.append(data))
    trainer, task = _fake([logger])
    task.val_questions = ["is there a red circle?", "how many squares?", "what colour is the star?", "left?"]
    LogSamplePredictions().on_validation_epoch_end(trainer, task)
    table = logged[0]["val/samples"]
    assert table.columns == ["image", "question", "prediction", "target", "correct"]
    assert [row[1:] for row in table.data][1] == ["how many squares?", "two", "one", False]
    logger.experiment.finish()
