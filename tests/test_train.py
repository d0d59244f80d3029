"""The training spine end to end: the run contract, checkpoints, exact resume, DDP equality, errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch


import mmzoo
from mmzoo.cli import main as mmzoo_cli
from mmzoo.training import train

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=vit", "model.name=vit_nano_patch4_32", "data=digits", "data.batch_size=128"]


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.parametrize("data", ["shapes", "digits"])
def test_fast_dev_run(train_cfg, data):
    metrics = train(train_cfg("model=vit", "model.name=vit_nano_patch4_32", f"data={data}", "debug=fdr"))
    assert metrics["global_step"] == 1
    assert 0.0 <= metrics["test/acc1"] <= 1.0


def test_run_contract_checkpoint_and_export(train_cfg, tmp_path):
    cfg = train_cfg(*TINY, "trainer.max_epochs=2")
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file()
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["test/acc1"] == pytest.approx(metrics["test/acc1"])
    assert on_disk["global_step"] == 2 * (1257 // 128)
    assert (run / "csv" / "metrics.csv").is_file()

    # loads with weights_only=True and rebuilds the model from the file alone
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["mmzoo"]["arch"] == "vit" and ckpt["mmzoo"]["config"]["in_chans"] == 1
    model = mmzoo.create_model(pretrained=last).eval()
    assert model.cfg.img_size == 16 and model.num_classes == 10
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["state_dict"][f"model.{k}"]), k

    # export to safetensors and rebuild from that file too
    out = tmp_path / "export" / "vit.safetensors"
    assert mmzoo_cli(["export", str(last), str(out)]) == 0
    again = mmzoo.create_model(pretrained=out).eval()
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_resume_is_bitwise_exact(train_cfg):
    """A run stopped at step k and resumed to step N equals the uninterrupted N-step run.

    Drop-path and data augmentation are on, so the RNG streams and the data order must be restored.
    9 steps per epoch: k=4 is mid-epoch 0, k=12 mid-epoch 1 (after a validation pass).
    """
    n = 16
    ckpt_every = [f"callbacks.model_checkpoint.{k}" for k in
                  ("every_n_epochs=null", "every_n_train_steps=4", "save_top_k=-1", "monitor=null")]
    common = [*TINY, "model.drop_path_rate=0.2", f"trainer.max_steps={n}", "test=false"]
    full = train_cfg(*common, *ckpt_every, run="full")
    train(full)
    full_dir = Path(full.paths.output_dir) / "checkpoints"
    reference = _weights(full_dir / "last.ckpt")
    for k, name in ((4, "epoch000-step000004.ckpt"), (12, "epoch001-step000012.ckpt")):
        resumed = train_cfg(*common, f"ckpt_path={full_dir / name}", run=f"resumed{k}")
        metrics = train(resumed)
        assert metrics["global_step"] == n
        got = _weights(Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt")
        assert got.keys() == reference.keys()
        mismatched = [key for key in reference if not torch.equal(reference[key], got[key])]
        assert not mismatched, f"resumed from step {k}: weights differ in {mismatched[:5]}"


def test_nonfinite_loss_stops_naming_the_step(train_cfg):
    with pytest.raises(FloatingPointError, match=r"non-finite loss .* at global step \d+"):
        train(train_cfg(*TINY, "task.lr=1e30", "trainer.gradient_clip_val=null", "trainer.max_steps=20"))


def test_nonfinite_loss_skip_mode_counts_and_continues(train_cfg):
    metrics = train(train_cfg(*TINY, "task.lr=1e30", "trainer.gradient_clip_val=null", "trainer.max_steps=6",
                              "task.nonfinite=skip", "test=false"))
    assert metrics["train/nonfinite_steps"] >= 1


def test_unknown_model_lists_choices(train_cfg):
    with pytest.raises(ValueError, match="unknown model 'vit_nope'.*vit_nano_patch4_32"):
        train(train_cfg("model=vit", "model.name=vit_nope", "debug=fdr"))


def test_unknown_data_group_lists_choices(tmp_path):
    proc = subprocess.run([sys.executable, "train.py", "data=nope", f"hydra.run.dir={tmp_path}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "data/nope" in proc.stderr and "digits" in proc.stderr and "shapes" in proc.stderr


def test_ddp_two_processes_equal_one_process_with_double_batch(tmp_path):
    """gloo DDP, per-rank batch B, equals one process with batch 2B (dropout off).

    The two runs' gradients agree to float rounding (~1e-7 relative). Adam divides each gradient by
    sqrt(v) + eps, which turns rounding noise on parameters whose true gradient is zero (the key bias:
    softmax ignores a shift shared by all keys) into updates of size ~lr when eps is 1e-8; eps=1e-6
    keeps that amplification below the 1e-5 comparison tolerance.
    """
    common = ["model=vit", "model.name=vit_nano_patch4_32", "model.drop_path_rate=0", "data=digits", "task.eps=1e-6",
              "trainer.max_steps=6", "test=false", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
              "callbacks.progress_bar=null"]
    runs = {"ddp": ["trainer=ddp", "trainer.devices=2", "data.batch_size=32"], "single": ["data.batch_size=64"]}
    for name, extra in runs.items():
        proc = subprocess.run([sys.executable, "train.py", *common, *extra, f"hydra.run.dir={tmp_path / name}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    ddp, single = (_weights(tmp_path / n / "checkpoints" / "last.ckpt") for n in ("ddp", "single"))
    assert ddp.keys() == single.keys()
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], atol=1e-5, rtol=0, msg=key)


def test_clip_trains_and_zeroshot_cli_classifies_any_labelled_data(train_cfg, tmp_path):
    """model=clip on the built-in captions, then `mmzoo.zeroshot` on the same and on digits."""
    from hydra import compose, initialize_config_dir

    from mmzoo.zeroshot import run as zeroshot_run

    cfg = train_cfg("model=clip", "model.name=clip_nano", "debug=limit", "data.num_train=512", "data.num_val=128",
                    "data.num_test=128", "data.num_zeroshot=96", "data.image_size=32", "data.context_length=16")
    metrics = train(cfg)
    for key in ("test/zeroshot_top1_heldout", "test/zeroshot_top1_seen", "test/i2t_R@1", "test/t2i_R@10"):
        assert 0.0 <= metrics[key] <= 1.0, key
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    conf_dir = str(ROOT / "configs")
    for data, extra in (("shapes_captions", ["data.num_zeroshot=96", "data.image_size=32", "data.num_train=128",
                                              "data.num_val=128", "data.num_test=128"]),
                        ("digits", [])):
        out = tmp_path / f"zs_{data}"
        with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
            zcfg = compose("zeroshot", overrides=[f"ckpt_path={ckpt}", f"data={data}", f"paths.output_dir={out}",
                                                  "device=cpu", *extra])
        res = zeroshot_run(zcfg)
        saved = json.loads((out / "zeroshot.json").read_text())
        assert saved["top1"] == pytest.approx(res["top1"]) and 0.0 <= saved["top1"] <= 1.0
        assert len(saved["per_class"]) == saved["num_classes"]
        assert (out / "confusion.png").stat().st_size > 1000
    assert saved["num_classes"] == 10 and saved["num_samples"] == 359  # digits test split (20% of 1,797)


def test_coca_trains_and_reports_caption_correctness(train_cfg):
    cfg = train_cfg("model=coca", "model.name=coca_nano", "debug=limit", "data.num_train=512", "data.num_val=128",
                    "data.num_test=128", "data.num_zeroshot=96", "data.image_size=32", "data.context_length=16")
    metrics = train(cfg)
    for key in ("test/caption_all_correct", "test/caption_loss", "test/zeroshot_top1_heldout", "test/i2t_R@1"):
        assert 0.0 <= metrics[key] < 20.0, key
    assert metrics["train/caption_loss"] > 0


def test_experiment_configs_compose(train_cfg):
    for path in sorted((ROOT / "configs" / "experiment").glob("*.yaml")):
        cfg = train_cfg(f"experiment={path.stem}")
        assert cfg.model.name and cfg.data._target_.startswith("mmzoo.data."), path


TS_TINY = ["model=timesformer", "data.num_train=16", "data.num_val=8", "data.num_test=8", "data.batch_size=8",
           "data.image_size=16", "+model.patch_size=8", "data.num_frames=4", "pipeline=none"]
# pipeline=none: the video run alone (its image stage: tests/test_pipeline.py)


@pytest.mark.parametrize("attention", ["divided_space_time", pytest.param("axial", marks=pytest.mark.slow)])
def test_timesformer_fast_dev_run(train_cfg, attention):
    metrics = train(train_cfg(*TS_TINY, f"model.attention={attention}", "debug=fdr"))
    assert metrics["global_step"] == 1 and 0.0 <= metrics["test/acc1"] <= 1.0


def test_timesformer_checkpoint_rebuilds(train_cfg):
    cfg = train_cfg(*TS_TINY, "trainer.max_epochs=1", "test=false")
    train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    model = mmzoo.create_model(pretrained=last).eval()
    assert model.arch_name == "timesformer" and model.cfg.num_frames == 4 and model.num_classes == 6
    with torch.no_grad():
        assert model(torch.randn(2, 3, 4, 16, 16)).shape == (2, 6)
