"""ContrastiveLoss: value against a plain formula and open_clip's ClipLoss, and 2-rank gloo runs against
the single-process loss on the concatenated batch.

The distributed test runs this file as a script (``python test_contrastive.py OUT_DIR``), which spawns the
two ranks with ``torch.multiprocessing.spawn``; spawned children re-import the script by path, which works
whatever name pytest's importlib mode gives this module. Each rank saves its loss and gradients to OUT_DIR.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmzoo.losses import ContrastiveLoss

WORLD_SIZE = 2
LOCAL_BATCH = 4
DIM = 8
SCALE = 14.3  # the multiplier exp(s), as CLIPOutput.logit_scale carries it
# (local_loss, gather_with_grad) combinations run on two ranks
COMBOS = [(False, True), (True, True), (False, False), (True, False)]


def _features(n: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, dim, generator=g), dim=-1)
    text = F.normalize(torch.randn(n, dim, generator=g), dim=-1)
    return image, text


def _reference_loss(image: torch.Tensor, text: torch.Tensor, scale, bias=None) -> torch.Tensor:
    """CLIP fig. 3 spelled out: mean of -log p(positive) over image rows and over text rows."""
    logits = scale * image @ text.T  # (N, N), row i: image i against every text
    if bias is not None:
        logits = logits + bias
    i2t = -logits.log_softmax(dim=1).diagonal().mean()
    t2i = -logits.log_softmax(dim=0).diagonal().mean()  # columns: text j against every image
    return (i2t + t2i) / 2


# ---------------------------------------------------------------- single process


@pytest.mark.parametrize("bias", [None, -2.5])
def test_matches_reference_formula(bias):
    torch.manual_seed(0)
    image, text = _features(16, 32, seed=1)
    loss = ContrastiveLoss()(image, text, torch.tensor(SCALE), None if bias is None else torch.tensor(bias))
    assert loss.ndim == 0
    torch.testing.assert_close(loss, _reference_loss(image, text, SCALE, bias), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("local_loss", [False, True])
def test_matches_open_clip(local_loss):
    open_clip_loss = pytest.importorskip("open_clip.loss")
    image, text = _features(16, 32, seed=2)
    scale = torch.tensor(SCALE)
    ours = ContrastiveLoss(local_loss=local_loss)(image, text, scale)
    theirs = open_clip_loss.ClipLoss(local_loss=local_loss)(image, text, scale)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)


def test_logits_and_labels():
    image, text = _features(6, 16, seed=3)
    loss_fn = ContrastiveLoss()
    out = loss_fn.logits_and_labels(image, text, SCALE)
    assert out.logits_per_image.shape == out.logits_per_text.shape == (6, 6)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.T)
    assert out.labels.tolist() == list(range(6))
    # identical towers: every row's best match is its own pair
    same = loss_fn.logits_and_labels(image, image, SCALE)
    assert (same.logits_per_image.argmax(-1) == same.labels).all()
    # labels are cached per (device, rows, offset)
    assert loss_fn.logits_and_labels(image, text, SCALE).labels is out.labels
    assert ContrastiveLoss(cache_labels=False).logits_and_labels(image, text, SCALE).labels is not None


def test_gradients_reach_features_and_scale():
    image, text = _features(8, 16, seed=4)
    image.requires_grad_(True)
    text.requires_grad_(True)
    scale = torch.tensor(SCALE, requires_grad=True)
    ContrastiveLoss()(image, text, scale).backward()
    for t in (image, text, scale):
        assert t.grad is not None and torch.isfinite(t.grad).all()


def test_mismatched_shapes_are_named():
    image, _ = _features(4, 8, seed=5)
    _, text = _features(3, 8, seed=5)
    with pytest.raises(ValueError, match=r"image_features \(4, 8\) and text_features \(3, 8\)"):
        ContrastiveLoss()(image, text, SCALE)


# ---------------------------------------------------------------- two ranks on gloo


def _global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    return _features(WORLD_SIZE * LOCAL_BATCH, DIM, seed=7)


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size,
                                         timeout=timedelta(seconds=60))
    try:
        image, text = _global_batch()
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        results = {}
        for local_loss, gather_with_grad in COMBOS:
            img = image[rows].clone().requires_grad_(True)
            txt = text[rows].clone().requires_grad_(True)
            scale = torch.tensor(SCALE, requires_grad=True)
            loss = ContrastiveLoss(local_loss=local_loss, gather_with_grad=gather_with_grad)(img, txt, scale)
            loss.backward()
            results[(local_loss, gather_with_grad)] = dict(
                loss=loss.detach(), image_grad=img.grad, text_grad=txt.grad, scale_grad=scale.grad)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def _launch(out_dir: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_worker, args=(WORLD_SIZE, port, out_dir), nprocs=WORLD_SIZE, join=True)


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("contrastive_gloo")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__, str(out_dir)], env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, f"2-rank gloo run failed:\n{proc.stdout}\n{proc.stderr}"
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]


@pytest.fixture(scope="module")
def single_process_reference():
    image, text = _global_batch()
    image.requires_grad_(True)
    text.requires_grad_(True)
    scale = torch.tensor(SCALE, requires_grad=True)
    loss = ContrastiveLoss()(image, text, scale)
    loss.backward()
    return dict(loss=loss.detach(), image_grad=image.grad, text_grad=text.grad, scale_grad=scale.grad)


def _rows(t: torch.Tensor, rank: int) -> torch.Tensor:
    return t[rank * LOCAL_BATCH:(rank + 1) * LOCAL_BATCH]


@pytest.mark.parametrize("local_loss", [False, True])
def test_two_ranks_gather_with_grad(two_rank_results, single_process_reference, local_loss):
    """Convention asserted (what DDP optimises): the objective is the mean over ranks of the per-rank
    losses, and the gradient that counts is the one DDP applies, i.e. the mean over ranks. Per rank:

    * loss: ``local_loss=False`` -> every rank's loss is the global loss; ``local_loss=True`` -> each rank's
      loss is the mean over its own rows, and the mean over ranks is the global loss.
    * features: the gradient autograd leaves on rank r's local features sums every rank's loss's terms
      (the gather's backward all-reduces), so ``grad_r / world_size`` is rank r's share of the DDP-averaged
      gradient and must equal rows r of the single-process gradient.
    * logit_scale (replicated, like a parameter): the mean over ranks of its gradients is the
      single-process gradient.
    """
    ref = single_process_reference
    results = [res[(local_loss, True)] for res in two_rank_results]
    losses = torch.stack([r["loss"] for r in results])
    if local_loss:
        assert not torch.allclose(losses[0], losses[1])  # really per-rank partial losses
        torch.testing.assert_close(losses.mean(), ref["loss"], atol=1e-5, rtol=0)
    else:
        for loss in losses:
            torch.testing.assert_close(loss, ref["loss"], atol=1e-5, rtol=0)
    for rank, r in enumerate(results):
        torch.testing.assert_close(r["image_grad"] / WORLD_SIZE, _rows(ref["image_grad"], rank), atol=1e-5, rtol=0)
        torch.testing.assert_close(r["text_grad"] / WORLD_SIZE, _rows(ref["text_grad"], rank), atol=1e-5, rtol=0)
    scale_grad = torch.stack([r["scale_grad"] for r in results]).mean()
    torch.testing.assert_close(scale_grad, ref["scale_grad"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("local_loss", [False, True])
def test_two_ranks_gather_without_grad(two_rank_results, single_process_reference, local_loss):
    """The loss value is the same as with the differentiable gather. For ``local_loss=False`` each rank
    holds the whole global loss, so its local features get exactly the global-loss gradient (no cross-rank
    sum, so DDP's averaging scales the update by 1/world_size)."""
    ref = single_process_reference
    results = [res[(local_loss, False)] for res in two_rank_results]
    losses = torch.stack([r["loss"] for r in results])
    torch.testing.assert_close(losses.mean(), ref["loss"], atol=1e-5, rtol=0)
    if not local_loss:
        for rank, r in enumerate(results):
            torch.testing.assert_close(r["loss"], ref["loss"], atol=1e-5, rtol=0)
            torch.testing.assert_close(r["image_grad"], _rows(ref["image_grad"], rank), atol=1e-5, rtol=0)
            torch.testing.assert_close(r["text_grad"], _rows(ref["text_grad"], rank), atol=1e-5, rtol=0)


if __name__ == "__main__":
    _launch(sys.argv[1])
