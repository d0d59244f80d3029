"""Retrieval recall and zero-shot classification helpers against brute-force references."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import mmzoo
from mmzoo.tasks.retrieval import retrieval_recall
from mmzoo.tasks.zeroshot import build_zeroshot_classifier, load_templates, zeroshot_evaluate


def _brute_recall(img, txt, t2i, k):
    sim = img @ txt.T
    i2t = [any(t2i[j] == i for j in sim[i].topk(k).indices.tolist()) for i in range(len(img))]
    t2i_hits = [t2i[j].item() in sim[:, j].topk(k).indices.tolist() for j in range(len(txt))]
    return sum(i2t) / len(i2t), sum(t2i_hits) / len(t2i_hits)


def test_retrieval_recall_matches_brute_force_with_multiple_captions():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(12, 8, generator=g), dim=-1)
    t2i = torch.arange(12).repeat_interleave(3)[torch.randperm(36, generator=g)]  # 3 captions per image
    txt = F.normalize(img[t2i] + 0.9 * torch.randn(36, 8, generator=g), dim=-1)
    got = retrieval_recall(img, txt, t2i, ks=(1, 2, 5))
    for k in (1, 2, 5):
        i2t, t2i_r = _brute_recall(img, txt, t2i, k)
        assert abs(got[f"i2t_R@{k}"] - i2t) < 1e-6 and abs(got[f"t2i_R@{k}"] - t2i_r) < 1e-6
    assert 0 < got["i2t_R@1"] < 1


def test_retrieval_recall_perfect_and_paired_default():
    x = F.normalize(torch.randn(5, 4), dim=-1)
    assert retrieval_recall(x, x, ks=(1,)) == {"i2t_R@1": 1.0, "t2i_R@1": 1.0}


class _ToyCLIP(nn.Module):
    """Image = one-hot class vector in 3 channels' means; text = one-hot of the class word id."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.proj = nn.Linear(1, 1)  # gives the model a device

    def encode_image(self, images):
        return F.one_hot(images[:, 0, 0, 0].long(), self.num_classes).float()

    def encode_text(self, tokens):
        return F.one_hot(tokens[:, 1], self.num_classes).float()


def test_zeroshot_classifier_and_evaluation():
    names = ["zero", "one", "two"]
    vocab = {n: i for i, n in enumerate(names)}

    def tokenizer(texts, context_length=None):
        # token 1 = the class word's id, wherever it appears in the prompt
        return torch.tensor([[0, next(vocab[w.strip(".")] for w in t.split() if w.strip(".") in vocab)]
                             for t in texts])

    model = _ToyCLIP(3)
    model.visual = None
    classifier = build_zeroshot_classifier(model, tokenizer, names, ["a {}.", "the {}"])
    assert torch.allclose(classifier, torch.eye(3))
    labels = torch.tensor([0, 1, 2, 2, 1])
    preds = torch.tensor([0, 1, 2, 0, 1])
    images = preds.float()[:, None, None, None].expand(-1, 3, 4, 4)
    batch = {"image": images, "label": labels, "heldout": torch.tensor([False, False, True, True, False])}
    model.visual = type("V", (), {"patch_embed": type("P", (), {"in_chans": 3, "img_size": (4, 4),
                                                               "dynamic_img_size": False})()})()
    res = zeroshot_evaluate(model, classifier, [batch], num_classes=3)
    assert res["top1"] == 4 / 5 and res["top5"] == 1.0
    assert res["top1_heldout"] == 0.5 and res["top1_seen"] == 1.0
    assert res["per_class"] == [1.0, 1.0, 0.5]
    assert res["confusion"][2, 0] == 1 and res["confusion"].sum() == 5


def test_load_templates_validates(tmp_path):
    good = tmp_path / "t.txt"
    good.write_text("# comment\na photo of a {}.\n\nart of the {}\n")
    assert load_templates(good) == ["a photo of a {}.", "art of the {}"]
    bad = tmp_path / "bad.txt"
    bad.write_text("no placeholder\n")
    try:
        load_templates(bad)
    except ValueError as e:
        assert "placeholder" in str(e)
    else:
        raise AssertionError("expected ValueError")


def test_contrastive_task_checks_its_templates_at_construction(tmp_path):
    from mmzoo.tasks.contrastive import ContrastiveTask

    model = mmzoo.create_model("clip_nano")
    bad = tmp_path / "templates.txt"
    bad.write_bytes(b"a photo of a {}.\n# fine\nart of the {x}\n")
    with pytest.raises(ValueError, match=rf"{bad}, line 3: template 'art of the {{x}}' has the placeholder {{x}}"):
        ContrastiveTask(model, zeroshot_templates=str(bad))
    bad.write_bytes(b"a photo of a {}.\n\xff\xfe\n")
    with pytest.raises(ValueError, match=rf"{bad}, line 2: not UTF-8 text"):
        ContrastiveTask(model, zeroshot_templates=str(bad))
    with pytest.raises(ValueError, match=r"task.zeroshot_templates, template 2 'a \{': Single"):
        ContrastiveTask(model, zeroshot_templates=["a {}", "a {"])
    good = tmp_path / "good.txt"
    good.write_text("a photo of a {}.\n{{literal}} and a {}\n")
    assert ContrastiveTask(model, zeroshot_templates=str(good))._templates() == ["a photo of a {}.",
                                                                                 "{{literal}} and a {}"]
