"""Multi-stage recipes as pipelines of ordinary runs (mmzoo/pipeline.py): stage order and checkpoint hand-off
for Point-BERT (tokenizer -> masked point modeling) and TimeSformer (image ViT -> video), resume after a
failure in the second stage without rerunning the first, and clear errors for bad pipelines."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import mmzoo
from mmzoo import training
from mmzoo.pipeline import carried_overrides, override_key, parse_stages, plan, run_pipeline
from tests.conftest import BASE_OVERRIDES, compose_train_cfg

# the tokenizer stage's dVAE groups clouds as the tiny Point-BERT below does (8 x 8 patches)
PB = ["model=point_bert", "data.num_train=32", "data.num_val=16", "data.num_test=16", "data.batch_size=8",
      "data.num_points=128", "+model.num_groups=8", "+model.group_size=8", "+model.depth=1",
      "trainer.max_steps=2", "trainer.max_epochs=-1", "test=false",
      'pipeline.stages.tokenizer.overrides=["experiment=point_bert_tokenizer","data.labels_per_class=null",'
      '"+model.num_groups=8","+model.group_size=8","+model.num_tokens=32"]']
# the video run does no step (max_epochs=0): its last.ckpt is the model as built from the image stage
TS = ["model=timesformer", "data.num_train=12", "data.num_val=6", "data.num_test=6", "data.batch_size=6",
      "data.num_frames=4", "trainer.max_epochs=0", "test=false",
      'pipeline.stages.image.overrides=["experiment=timesformer_image","data.num_train=16","data.num_val=8",'
      '"data.num_test=8","data.batch_size=8","trainer.max_steps=3","trainer.max_epochs=-1"]']


def run(tmp_path: Path, *overrides: str, name: str = "run") -> tuple[Path, dict]:
    """``python train.py <overrides> hydra.run.dir=tmp_path/name``, as the pipeline sees it."""
    cfg = compose_train_cfg(tmp_path / name, *overrides)
    return tmp_path / name, run_pipeline(cfg, overrides=[*BASE_OVERRIDES, *overrides])


def state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_point_bert_stages_run_in_order_and_hand_on_the_tokenizer(tmp_path, capsys):
    run_dir, metrics = run(tmp_path, *PB)
    tok_ckpt = run_dir / "tokenizer" / "checkpoints" / "last.ckpt"
    pre_ckpt = run_dir / "pretrain" / "checkpoints" / "last.ckpt"
    record = json.loads((run_dir / "pipeline.json").read_text())
    assert [s["stage"] for s in record["stages"]] == ["tokenizer", "pretrain"]
    assert [s["status"] for s in record["stages"]] == ["trained", "trained"]
    # each stage is an ordinary run in its own folder: checkpoints, metrics, CSV log
    for stage in ("tokenizer", "pretrain"):
        assert (run_dir / stage / "metrics.json").is_file() and (run_dir / stage / "csv" / "hparams.yaml").is_file()
        assert (run_dir / stage / "stage.json").is_file()
    assert json.loads((run_dir / "tokenizer" / "metrics.json").read_text())["global_step"] == 2
    assert metrics == json.loads((run_dir / "metrics.json").read_text()) and metrics["global_step"] == 2
    assert torch.isfinite(torch.tensor(metrics["train/mpm_loss"]))
    # hand-off: the pre-training run's frozen tokenizer is the tokenizer stage's final weights
    assert isinstance(mmzoo.create_model(pretrained=tok_ckpt), mmzoo.models.PointDVAE)
    tok, pre = state(tok_ckpt), state(pre_ckpt)
    dvae = {k[len("dvae."):]: v for k, v in pre.items() if k.startswith("dvae.")}
    assert dvae and dvae.keys() == {k[len("model."):] for k in tok}
    assert all(torch.equal(v, tok[f"model.{k}"]) for k, v in dvae.items())
    assert str(tok_ckpt) in capsys.readouterr().out  # where each stage went is printed
    assert OmegaConf.load(run_dir / "pretrain" / "config.yaml").task.dvae_checkpoint == str(tok_ckpt)


def test_resume_after_failure_in_second_stage_does_not_rerun_the_first(tmp_path, monkeypatch):
    real_train = training.train
    calls: list[str] = []

    def killed_after_pretrain_fit(cfg):
        calls.append(Path(cfg.paths.output_dir).name)
        metrics = real_train(cfg)
        if Path(cfg.paths.output_dir).name == "pretrain":  # its last.ckpt is written, stage.json is not
            raise RuntimeError("killed")
        return metrics

    monkeypatch.setattr(training, "train", killed_after_pretrain_fit)
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path, *PB)
    assert calls == ["tokenizer", "pretrain"]
    tok_dir = tmp_path / "run" / "tokenizer"
    before = {p: p.stat().st_mtime_ns for p in (tok_dir / "stage.json", tok_dir / "checkpoints" / "last.ckpt")}
    assert not (tmp_path / "run" / "pretrain" / "stage.json").exists()

    calls.clear()

    def counted(cfg):
        calls.append(Path(cfg.paths.output_dir).name)
        return real_train(cfg)

    monkeypatch.setattr(training, "train", counted)
    run_dir, metrics = run(tmp_path, *PB)  # the same command and run directory again
    assert calls == ["pretrain"]
    assert {p: p.stat().st_mtime_ns for p in before} == before
    stages = json.loads((run_dir / "pipeline.json").read_text())["stages"]
    assert [s["status"] for s in stages] == ["finished before", "resumed"]
    assert metrics["global_step"] == 2  # continued from its own last.ckpt, not trained again

    calls.clear()
    run(tmp_path, *PB)  # everything finished: nothing trains
    assert calls == []


def test_timesformer_image_stage_builds_the_video_model(tmp_path):
    run_dir, _ = run(tmp_path, *TS)
    vit = mmzoo.create_model(pretrained=run_dir / "image" / "checkpoints" / "last.ckpt")
    assert vit.arch_name == "vit" and vit.num_classes == 8  # the shapes classes
    assert json.loads((run_dir / "image" / "metrics.json").read_text())["global_step"] == 3
    video = state(run_dir / "video" / "checkpoints" / "last.ckpt")
    img = vit.state_dict()
    for k in ("patch_embed.proj.weight", "pos_embed", "blocks.0.attn.qkv.weight", "blocks.3.mlp.fc2.weight"):
        assert torch.equal(video[f"model.{k}"], img[k]), k
    assert torch.equal(video["model.blocks.0.temporal_attn.qkv.weight"], img["blocks.0.attn.qkv.weight"])
    assert torch.count_nonzero(video["model.blocks.0.temporal_fc.weight"]) == 0
    assert video["model.head.weight"].shape[0] == 6  # the video classes, not the image ones


def test_stages_given_on_the_command_line_are_not_run(tmp_path):
    def verdicts(*overrides):
        cfg = compose_train_cfg(tmp_path, *overrides)
        return plan(cfg, parse_stages(cfg.pipeline))

    assert verdicts("model=point_bert") == {"tokenizer": "run"}
    assert verdicts("model=point_bert", "task.dvae_checkpoint=tok.ckpt")["tokenizer"].startswith("not needed")
    assert verdicts("model=timesformer") == {"image": "run"}
    assert "model.pretrained is given" in verdicts("model=timesformer", "model.pretrained=v.ckpt")["image"]
    assert verdicts("model=timesformer", "model.pretrained_image=i.ckpt")["image"].startswith("not needed")
    # the whole recipe: a given pre-trained model needs neither pre-training nor its tokenizer
    assert verdicts("experiment=point_bert_shapes") == {"tokenizer": "run", "pretrain": "run"}
    assert set(verdicts("experiment=point_bert_shapes", "model.pretrained=p.ckpt").values()) != {"run"}
    assert compose_train_cfg(tmp_path, "model=point_bert", "task=point_classification").pipeline.stages == {}


def test_carried_overrides_by_group():
    ov = ["model=point_bert", "trainer.devices=2", "trainer=ddp", "+data.x=1", "debug=limit", "seed=3",
          "task.lr=1", "hydra.run.dir=/r"]
    assert carried_overrides(ov, ["trainer", "data", "debug", "seed"]) == \
        ["trainer.devices=2", "trainer=ddp", "+data.x=1", "debug=limit", "seed=3"]
    assert override_key("++a.b=1") == "a.b" and override_key("~x") == "x"


@pytest.mark.parametrize("stages, match", [
    ({"a": {}, "b": {"inputs": {"task.x": "c"}}}, r"pipeline.stages.b.inputs.task.x: unknown stage 'c'.*\['a'\]"),
    ({"a": {"inputs": {"task.x": "b"}}, "b": {}}, r"unknown stage 'b'; .*none \(it is the first\)"),
    ({"a/b": {}, "c": {}}, "a stage name is a folder name"),
    ({"a": {"overides": []}, "b": {}}, r"unknown keys \['overides'\]"),
    ({"a": {"overrides": "model=vit"}, "b": {}}, "pipeline.stages.a.overrides must be a list of strings"),
    ({"a": {}, "b": {"overrides": ["model=vit"]}}, "the last stage is the command itself"),
])
def test_bad_pipelines_fail_naming_the_key(stages, match):
    with pytest.raises(ValueError, match=match):
        parse_stages({"stages": stages})


def test_input_key_missing_from_the_stage_config_fails_before_training(tmp_path):
    cfg = compose_train_cfg(tmp_path / "run", *PB)
    cfg.pipeline.stages.pretrain.inputs = {"task.dvae_ckpt": "tokenizer"}
    with pytest.raises(ValueError, match=r"pipeline.stages.pretrain.inputs: the stage's config has no key "
                                         r"'task.dvae_ckpt'"):
        run_pipeline(cfg, overrides=[*BASE_OVERRIDES, *PB])
    assert not (tmp_path / "run" / "tokenizer").exists()


def test_ckpt_path_with_stages_points_at_the_run_directory(tmp_path):
    with pytest.raises(ValueError, match="hydra.run.dir="):
        run(tmp_path, *PB, f"ckpt_path={__file__}")


# -- the command line (slow: whole processes) -----------------------------------------------------
CLI = ["model=point_bert", "debug=limit", "data.num_train=64", "data.num_val=16", "data.num_test=16",
       "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "callbacks.progress_bar=null"]


def _train_py(run_dir: Path, *overrides: str) -> list[str]:
    import sys

    return [sys.executable, str(Path(__file__).resolve().parents[1] / "train.py"), *overrides,
            f"hydra.run.dir={run_dir}"]


@pytest.mark.slow
def test_ddp_runs_every_stage_once_on_both_ranks(tmp_path):
    """trainer=ddp on 2 CPU processes: each stage is one trainer.fit over both ranks, decided and reported
    once (rank 0)."""
    import subprocess

    out = subprocess.run(_train_py(tmp_path / "run", *CLI, "trainer=ddp", "trainer.devices=2"),
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert log.count("stage 1/2 tokenizer: done") == 1 and log.count("pipeline in ") == 1
    stages = json.loads((tmp_path / "run" / "pipeline.json").read_text())["stages"]
    assert [s["status"] for s in stages] == ["trained", "trained"]
    # 64 clouds / 2 ranks / batch 32 = one step per epoch, 2 epochs (debug=limit): each rank trained its
    # shard of every stage once, in step with the other
    assert [s["metrics"]["global_step"] for s in stages] == [2, 2]


@pytest.mark.slow
def test_sigkill_in_second_stage_then_resume_keeps_the_first(tmp_path):
    import os
    import signal
    import subprocess
    import time

    run_dir = tmp_path / "run"
    cmd = _train_py(run_dir, *CLI)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    marker = run_dir / "tokenizer" / "stage.json"
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists() and proc.poll() is None, "the first stage did not finish before the command ended"
    time.sleep(3.0)  # inside the second stage
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "pretrain" / "stage.json").exists()
    first = {p: p.stat().st_mtime_ns for p in (marker, run_dir / "tokenizer" / "checkpoints" / "last.ckpt")}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in first} == first
    stages = json.loads((run_dir / "pipeline.json").read_text())["stages"]
    assert stages[0]["status"] == "finished before" and stages[1]["status"] in ("trained", "resumed")
