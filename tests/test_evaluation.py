"""`python eval.py ckpt_path=CKPT`: a run's checkpoint tested without training gives the run's own test metrics."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from mmzoo.checkpoint import RUN_KEY, TASK_KEY, CheckpointError
from mmzoo.evaluation import evaluate
from mmzoo.models import create_model
from mmzoo.training import train

ROOT = Path(__file__).resolve().parents[1]
EVAL_BASE = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def eval_cfg(out_dir: Path, *overrides: str):
    """The config `python eval.py <overrides>` would run, writing to ``out_dir``."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("eval", overrides=[*EVAL_BASE, f"paths.output_dir={out_dir}", *overrides])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """vit_nano on digits, one short epoch; tested on the final weights (= last.ckpt), 2 test batches."""
    from tests.conftest import compose_train_cfg

    run = tmp_path_factory.mktemp("evaluation") / "run"
    cfg = compose_train_cfg(run, "model=vit", "model.name=vit_nano_patch4_32", "data=digits", "data.batch_size=64",
                            "debug=limit", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
                            "test_ckpt=last")
    metrics = train(cfg)
    return run, metrics


def _files(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_eval_reproduces_the_runs_test_metrics(trained, tmp_path, capsys):
    run, train_metrics = trained
    last = run / "checkpoints" / "last.ckpt"
    before = _files(run / "checkpoints")
    out = tmp_path / "eval"
    capsys.readouterr()
    metrics = evaluate(eval_cfg(out, f"ckpt_path={last}", "+trainer.limit_test_batches=2"))
    assert _files(run / "checkpoints") == before  # nothing written or rewritten next to the checkpoint
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]
    for key in ("test/acc1", "test/acc5", "test/loss"):
        assert metrics[key] == pytest.approx(train_metrics[key], abs=1e-6), key
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert json.dumps(metrics, indent=2, sort_keys=True) in capsys.readouterr().out  # printed
    assert metrics["split"] == "test" and metrics["data"] == "mmzoo.data.DigitsDataModule"
    assert metrics["task"] == "mmzoo.tasks.classification.ClassificationTask"

    # reference: top-1 of the checkpoint's model recomputed by hand over the same two test batches
    from mmzoo.data import DigitsDataModule

    stored = torch.load(last, map_location="cpu", weights_only=True)[RUN_KEY]["data"]
    dm = DigitsDataModule(**{k: v for k, v in stored.items() if k != "_target_"})
    dm.setup("test")
    model = create_model(pretrained=last).eval().double()
    correct = total = 0
    with torch.no_grad():
        for i, (x, y) in enumerate(dm.test_dataloader()):
            if i == 2:
                break
            correct += int((model(x.double()).argmax(1) == y).sum())
            total += len(y)
    assert total == 128
    assert metrics["test/acc1"] == pytest.approx(correct / total, abs=1e-6)


def test_eval_other_data_and_val_split(trained, tmp_path):
    """data=NAME instead of the run's config; split=val gives the run's last validation metrics."""
    run, train_metrics = trained
    out = tmp_path / "eval"
    metrics = evaluate(eval_cfg(out, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "data=digits",
                                "data.batch_size=64", "split=val", "+trainer.limit_val_batches=2"), overrides=[])
    assert metrics["split"] == "val"
    assert metrics["val/acc1"] == pytest.approx(train_metrics["val/acc1"], abs=1e-6)
    assert metrics["val/loss"] == pytest.approx(train_metrics["val/loss"], abs=1e-6)
    # one setting of the run's own data config (no data=): more samples per batch, same samples
    full = evaluate(eval_cfg(tmp_path / "b", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                             "+data.batch_size=128", "split=val", "+trainer.limit_val_batches=1"))
    assert full["val/acc1"] == pytest.approx(train_metrics["val/acc1"], abs=1e-6)


def test_eval_adapted_model(train_cfg, tmp_path):
    """A LoRA run: the base is rebuilt with the same adaptation, and every weight loads strictly."""
    cfg = train_cfg("model=vit", "model.name=vit_nano_patch4_32", "data=digits", "debug=fdr", "peft=lora",
                    "task.lr=0.05", "task.warmup_steps=0")
    train_metrics = train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    obj = torch.load(last, map_location="cpu", weights_only=True)
    assert obj[TASK_KEY]["peft"]["method"] == "lora"
    lora_b = [v for k, v in obj["state_dict"].items() if k.endswith("lora_B")]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # trained: the adaptation changes the outputs
    metrics = evaluate(eval_cfg(tmp_path / "eval", f"ckpt_path={last}", "+trainer.limit_test_batches=1"))
    for key in ("test/acc1", "test/loss"):
        assert metrics[key] == pytest.approx(train_metrics[key], abs=1e-6), key


def test_eval_errors(trained, tmp_path):
    run, _ = trained
    last = run / "checkpoints" / "last.ckpt"
    obj = torch.load(last, map_location="cpu", weights_only=True)

    def cfg(path, *more):
        return eval_cfg(tmp_path / "out", f"ckpt_path={path}", *more)

    with pytest.raises(FileNotFoundError, match="nope.ckpt does not exist"):
        evaluate(cfg(tmp_path / "nope.ckpt"))
    bare = tmp_path / "bare.pt"
    torch.save({k[len("model."):]: v for k, v in obj["state_dict"].items()}, bare)
    with pytest.raises(CheckpointError, match="bare.pt is not a training checkpoint.*bare state dict"):
        evaluate(cfg(bare))
    with pytest.raises(ValueError, match="split='train' is invalid.*'test', 'val'"):
        evaluate(cfg(last, "split=train"))

    old = tmp_path / "old.ckpt"  # an older checkpoint: no task class, no data config
    torch.save({k: v for k, v in obj.items() if k not in (TASK_KEY, RUN_KEY)}, old)
    with pytest.raises(CheckpointError, match="no 'mmzoo_task'.*task_class=mmzoo.tasks.ClassificationTask"):
        evaluate(cfg(old))
    with pytest.raises(ValueError, match="does not hold the data config of its run; pass data=NAME"):
        evaluate(cfg(old, "task_class=mmzoo.tasks.ClassificationTask"))
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.slow
def test_eval_contrastive_run(train_cfg, tmp_path):
    """A CLIP run (contrastive task, captions tokenizer rebuilt from the run's data config): retrieval and
    zero-shot metrics equal the run's own test metrics."""
    cfg = train_cfg("model=clip", "model.name=clip_nano", "debug=fdr", "test_ckpt=last")
    train_metrics = train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    metrics = evaluate(eval_cfg(tmp_path / "eval", f"ckpt_path={last}", "+trainer.limit_test_batches=1"))
    keys = [k for k in train_metrics if k.startswith("test/")]
    assert "test/i2t_R@1" in keys and "test/zeroshot_top1" in keys
    for key in keys:
        assert metrics[key] == pytest.approx(train_metrics[key], abs=1e-6), key
