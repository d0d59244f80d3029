"""Runs that explain themselves: names, tags, logged config, W&B resume; debug configs; plot / compare."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from mmzoo.cli import main as mmzoo_cli
from mmzoo import runs
from mmzoo.training import train

from .conftest import compose_train_cfg

ROOT = Path(__file__).resolve().parents[1]
MODELS = sorted(p.stem for p in (ROOT / "configs" / "model").glob("*.yaml"))
TINY = ["model=vit", "model.name=vit_nano_patch4_32", "data=digits", "data.batch_size=128"]


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "csv" / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("model", MODELS)
def test_debug_limit_validates_every_epoch_for_every_model(tmp_path, model):
    # the composed trainer settings decide whether a 5-batch epoch ever validates: an integer
    # val_check_interval (the language models' 250 steps) with check_val_every_n_epoch=None never does
    cfg = compose_train_cfg(tmp_path, f"model={model}", "debug=limit")
    t = cfg.trainer
    assert t.limit_train_batches == 5 and t.max_epochs == 2
    assert isinstance(t.val_check_interval, float) and t.val_check_interval == 1.0, t.val_check_interval
    assert t.check_val_every_n_epoch == 1
    assert t.get("max_steps", -1) == -1 or t.max_steps >= 10


def test_debug_limit_language_model_really_validates(train_cfg):
    cfg = train_cfg("model=gpt", "debug=limit", "data.batch_size=4")
    train(cfg)
    rows = _rows(Path(cfg.paths.output_dir))
    val_steps = [int(r["step"]) for r in rows if r.get("val/loss")]
    assert len(val_steps) == 2, val_steps  # once per epoch end


def test_debug_overfit_repeats_the_same_few_batches(train_cfg):
    cfg = train_cfg(*TINY, "debug=overfit", "trainer.max_epochs=4", "data.batch_size=16",
                    "trainer.log_every_n_steps=1", "test=false")
    metrics = train(cfg)
    assert metrics["global_step"] == 4 * 3  # overfit_batches=3 per epoch
    losses = [float(r["train/loss"]) for r in _rows(Path(cfg.paths.output_dir)) if r.get("train/loss")]
    # the same 3 batches every epoch: the loss on them falls epoch over epoch
    assert sum(losses[-3:]) < sum(losses[:3]), losses


def test_debug_profiler_writes_its_report_into_the_run(train_cfg):
    cfg = train_cfg(*TINY, "debug=profiler", "trainer.limit_train_batches=3")
    train(cfg)
    reports = list(Path(cfg.paths.output_dir).glob("*profiler*.txt"))
    assert reports, sorted(p.name for p in Path(cfg.paths.output_dir).iterdir())
    assert "run_training_epoch" in reports[0].read_text()


def _wandb_records(run_dir: Path) -> list:
    """The records of the run's offline ``.wandb`` file (W&B's LevelDB-style log: 32 KiB blocks of
    chunks, each with a 7-byte header of CRC, length and kind), parsed as W&B's protobuf records."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    data = files[0].read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunks, partial = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            chunks.append(chunk)
        elif kind in (2, 3):
            partial += chunk
        elif kind == 4:
            chunks.append(partial + chunk)
            partial = b""
    records = []
    for chunk in chunks:
        rec = pb.Record()
        rec.ParseFromString(chunk)
        records.append(rec)
    return records


def _wandb_config(records: list) -> dict:
    out = {}
    for rec in records:
        if rec.WhichOneof("record_type") == "config":
            out.update({u.key: json.loads(u.value_json) for u in rec.config.update})
    return out


def test_wandb_run_name_tags_config_and_resume_into_the_same_run(train_cfg, monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: offline
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = train_cfg(*TINY, "logger=wandb", "tags=[baseline,nano]", "group=g1", "trainer.max_epochs=1",
                    "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "test=false")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    name = cfg.run_name
    assert name.startswith("vit_nano_patch4_32-digits-"), name

    run_records = [r.run for r in _wandb_records(run) if r.WhichOneof("record_type") == "run"]
    assert run_records[0].display_name == name
    assert list(run_records[0].tags) == ["baseline", "nano"] and run_records[0].run_group == "g1"
    logged = _wandb_config(_wandb_records(run))
    # resolved values: the data module's class count and image size instead of "auto"
    assert logged["model"]["num_classes"] == 10 and logged["model"]["img_size"] == 16
    assert logged["architecture"]["depth"] >= 1 and logged["architecture"]["num_classes"] == 10
    assert logged["parameters"]["total"] >= logged["parameters"]["trainable"] > 0
    assert logged["run_name"] == name and logged["tags"] == ["baseline", "nano"]

    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    wandb_id = ckpt["mmzoo_run"]["wandb_id"]
    assert ckpt["mmzoo_run"]["name"] == name and wandb_id == run_records[0].run_id

    # the resume continues the same W&B run under the same name
    again = train_cfg(*TINY, "logger=wandb", "trainer.max_epochs=2", "+trainer.limit_train_batches=2",
                      "+trainer.limit_val_batches=1", "test=false", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                      run="resumed")
    train(again)
    assert again.run_name == name and again.logger.wandb.id == wandb_id
    resumed = [r.run for r in _wandb_records(Path(again.paths.output_dir)) if r.WhichOneof("record_type") == "run"]
    assert resumed[0].run_id == wandb_id


def _fake_run(path: Path, losses: list[float], acc: float) -> Path:
    (path / "csv").mkdir(parents=True)
    with (path / "csv" / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", "train/loss", "val/acc1"])
        for i, loss in enumerate(losses):
            w.writerow([0, i, loss, ""])
        w.writerow([0, len(losses) - 1, "", acc])
    (path / "metrics.json").write_text(json.dumps({"val/acc1": acc, "test/acc1": acc - 0.1,
                                                   "test_checkpoint": "last", "global_step": len(losses)}))
    return path


def test_plot_and_compare_runs(tmp_path, capsys):
    a = _fake_run(tmp_path / "a" / "run", [2.0, 1.5, 1.0], 0.7)
    b = _fake_run(tmp_path / "b" / "run", [2.2, 1.2], 0.8)
    curves = runs.read_curves(a)
    assert curves["train/loss"] == [(0, 2.0), (1, 1.5), (2, 1.0)] and curves["val/acc1"] == [(2, 0.7)]

    assert mmzoo_cli(["compare", str(a), str(b), "--metrics", "acc"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["metric", "a/run", "b/run"]
    assert table[1].split() == ["test/acc1", "0.6", "0.7"]
    assert table[2].split() == ["val/acc1", "0.7", "0.8"]

    out = tmp_path / "plots"
    assert mmzoo_cli(["plot", str(a), str(b), "--out", str(out)]) == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["train_loss.png", "val_acc1.png"]
    from PIL import Image

    assert Image.open(out / "train_loss.png").size == (600, 400)


def test_plot_and_compare_name_what_is_wrong(tmp_path, capsys):
    assert mmzoo_cli(["compare", str(tmp_path / "missing")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    bad = tmp_path / "bad"
    (bad / "csv").mkdir(parents=True)
    (bad / "csv" / "metrics.csv").write_text("epoch,step,train/loss\n0,1,abc\n")
    assert mmzoo_cli(["plot", str(bad), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and "train/loss" in err


def test_optuna_sweep_runs_three_trials_and_reports_the_best(tmp_path):
    import subprocess
    import sys

    import yaml

    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "hparams_search=vit_digits_optuna",
           "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.n_startup_trials=2", f"hydra.sweep.dir={sweep}",
           "model.name=vit_nano_patch4_32", "data.batch_size=128", "trainer.max_epochs=1",
           "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "test=false",
           "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
           "callbacks.progress_bar=null", "callbacks.sample_predictions=null", "logger=csv"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in trials] == ["0", "1", "2"]
    values = [json.loads((p / "metrics.json").read_text())["val/acc1"] for p in trials]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(max(values))
    assert set(result["best_params"]) == {"task.lr", "task.weight_decay", "model.depth", "model.drop_path_rate"}


def test_optimized_metric_must_be_a_final_metric():
    from mmzoo.training import optimized_value

    assert optimized_value({"val/acc1": 0.5}, None) is None
    assert optimized_value({"val/acc1": 0.5}, "val/acc1") == 0.5
    with pytest.raises(KeyError, match="optimized_metric=val/acc5 .*val/acc1"):
        optimized_value({"val/acc1": 0.5, "test_checkpoint": "last"}, "val/acc5")
