"""VQA task: per-type accuracy, and `python train.py model=fusion` end to end (fast_dev_run)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mmzoo
from mmzoo.tasks.vqa import PerTypeAccuracy
from mmzoo.training import build, train

SMALL = ["model=fusion", "model.name=fusion_tiny", "data.num_train=128", "data.num_val=32", "data.num_test=32",
         "data.batch_size=32"]


def test_per_type_accuracy_exact():
    m = PerTypeAccuracy(3)
    m.update(torch.tensor([1, 2, 0, 0]), torch.tensor([1, 0, 0, 1]), torch.tensor([0, 0, 1, 1]))
    m.update(torch.tensor([5]), torch.tensor([5]), torch.tensor([0]))
    overall, per_type = m.compute()
    assert overall.item() == pytest.approx(3 / 5)
    assert per_type[:2].tolist() == pytest.approx([2 / 3, 1 / 2]) and torch.isnan(per_type[2])
    with pytest.raises(ValueError, match=r"question types must be in 0..2"):
        m.update(torch.tensor([0]), torch.tensor([0]), torch.tensor([3]))


@pytest.mark.parametrize("variant", ["cross_attention", "early_sum", "text_only"])
def test_fast_dev_run_and_checkpoint(train_cfg, variant):
    model = (["model.name=fusion_tiny_text_only", "model.fusion=early_concat"] if variant == "text_only"
             else [f"model.fusion={variant}"])
    cfg = train_cfg(*SMALL, *model, "debug=fdr")
    metrics = train(cfg)
    assert metrics["global_step"] == 1
    for name in ("test/acc", "test/acc_exist", "test/acc_colour", "test/acc_count", "test/acc_position"):
        assert 0.0 <= metrics[name] <= 1.0, name
    # the checkpoint rebuilds the same model from the file alone (weights_only load)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["mmzoo"]["arch"] == "fusion"
    model = mmzoo.create_model(pretrained=last).eval()
    expected = "early_concat" if variant == "text_only" else variant
    assert model.cfg.fusion == expected and model.cfg.use_image == (variant != "text_only")
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["state_dict"][f"model.{k}"]), k


@pytest.mark.slow
def test_fusion_learns_colour_questions(train_cfg):
    """A few hundred steps of the micro model answer colour questions far above chance (1/6)."""
    cfg = train_cfg("model=fusion", "model.fusion=cross_attention_concat", "data.num_train=4000", "data.num_val=400",
                    "data.num_test=400", "data.batch_size=128", "trainer.max_epochs=6", "task.lr=2e-3")
    metrics = train(cfg)
    assert metrics["test/acc_colour"] > 0.3


def test_auto_values_come_from_the_data(train_cfg):
    dm, task = build(train_cfg(*SMALL))
    assert task.model.cfg.text.vocab_size == dm.tokenizer.vocab_size
    assert task.model.cfg.num_classes == 12 and task.class_names[:2] == ["no", "yes"]
    assert task.question_types == ["exist", "colour", "count", "position"]
