"""Point-BERT's stages: the dVAE tokenizer, masked point modeling, and point-cloud classification.

* :class:`PointDVAETask` trains the tokenizer (``model=point_bert_dvae``).
* :class:`PointBERTPretrainTask` pre-trains Point-BERT by masked point modeling against the tokens of
  a frozen dVAE (``model=point_bert``); with no dVAE checkpoint it first trains one, saying so.
* :class:`PointClassificationTask` fine-tunes (``task=point_classification``), with optional test-time
  voting; ``pretrain_steps > 0`` first runs the tokenizer and pre-training stages itself, so one command
  runs the whole pipeline.

The earlier stages run inside a task's ``setup`` as plain loops (:func:`fit_dvae`, :func:`fit_mpm`, on
:func:`mmzoo.tasks.stages.fit_plain`)
sharing their step functions with the Lightning tasks; each writes an mmzoo checkpoint
(``RUN/tokenizer/last.ckpt``, ``RUN/pretrain/last.ckpt``) that ``create_model(pretrained=...)`` reads and
that a resumed run reuses instead of training again.
"""
from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import chamfer_distance
from ..losses.distributed import all_gather_no_grad
from ..models import create_model
from ..models.point_bert import PointBERT, PointDVAE, block_mask
from .base import BaseTask
from .classification import ClassificationTask
from .stages import fit_plain, run_dir as _run_dir, save_model_checkpoint, stage_device

log = logging.getLogger("mmzoo")


# --------------------------------------------------------------------------------------------------
# step functions shared by the Lightning tasks and the plain-loop stages
# --------------------------------------------------------------------------------------------------
def cosine_anneal(start: float, end: float, progress: float) -> float:
    """``start`` at progress 0 to ``end`` at progress 1 along a half cosine."""
    progress = min(max(progress, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def token_usage_kl(logits: torch.Tensor) -> torch.Tensor:
    """KL(uniform || q̄) of token logits (B, G, T), q̄ = the softmax averaged over each cloud's G patches,
    averaged over clouds (Point-BERT's ``F.kl_div(log q̄, log U, 'batchmean', log_target=True)``)."""
    num_groups, num_tokens = logits.shape[1:]
    # log q̄ (B, T) from log-softmaxes, without underflow: log mean_g q_g = logsumexp_g log q_g - log G
    log_q_mean = torch.logsumexp(F.log_softmax(logits.float(), dim=-1), dim=1) - math.log(num_groups)
    # KL(U || q̄) = sum_t (1 / T) (log(1 / T) - log q̄_t)
    return (-math.log(num_tokens) - log_q_mean).mean(-1).mean()


def gumbel_noise_scale(noise_ramp: float, progress: float) -> float:
    """Scale of the Gumbel noise at ``progress`` (0 -> 1) of the anneal: rises linearly from 0 to 1 over the
    first ``noise_ramp`` of it (0: full noise from the start, Point-BERT's recipe)."""
    return 1.0 if noise_ramp <= 0 else min(1.0, max(progress, 0.0) / noise_ramp)


def dvae_losses(dvae: PointDVAE, points: torch.Tensor, temperature: float, kl_weight: float,
                noise: float = 1.0) -> dict[str, torch.Tensor]:
    """Point-BERT's dVAE objective: Chamfer-L1 of the coarse and fine rebuilt patches against the input
    patches, plus ``kl_weight`` x KL(uniform || q̄), q̄ the token distribution averaged over each cloud's
    patches (Point-BERT's term: it spreads a cloud's patches over the codebook without pushing any one
    patch's distribution toward uniform, which would erase what the token says about its patch)."""
    out = dvae(points, temperature, noise)
    gt = out.neighborhood.flatten(0, 1)  # (B * G, K, 3)
    coarse = chamfer_distance(out.coarse.flatten(0, 1), gt, "l1")
    fine = chamfer_distance(out.fine.flatten(0, 1), gt, "l1")
    kl = token_usage_kl(out.logits)
    return {"loss": coarse + fine + kl_weight * kl, "chamfer_l1_coarse": coarse, "chamfer_l1": fine, "kl": kl}


def mpm_losses(model: PointBERT, lm_head: nn.Module, dvae: PointDVAE, points: torch.Tensor,
               mask_ratio: Sequence[float]) -> dict[str, torch.Tensor]:
    """Masked point modeling: block-mask 25-45% of the patches, predict their dVAE token ids."""
    neighborhood, centers = model.group(points)
    dvae.eval()  # frozen tokenizer: BatchNorm statistics stay those it was trained with
    targets = dvae.tokenize(neighborhood, centers)  # (B, G)
    lo, hi = mask_ratio
    ratio = lo + (hi - lo) * torch.rand(points.shape[0], device=points.device)
    mask = block_mask(centers, ratio)  # (B, G)
    x = model.forward_groups(neighborhood, centers, mask)  # (B, 1 + G, dim)
    logits = lm_head(x[:, 1:][mask])  # (num_masked, num_tokens)
    loss = F.cross_entropy(logits, targets[mask])
    acc = (logits.argmax(-1) == targets[mask]).float().mean()
    return {"loss": loss, "mpm_acc": acc, "tokens": targets, "features": x}


def _check_compatible(model: PointBERT, dvae: PointDVAE) -> None:
    m, d = model.cfg, dvae.cfg
    if (m.num_groups, m.group_size) != (d.num_groups, d.group_size):
        raise ValueError(f"Point-BERT groups clouds into {m.num_groups} x {m.group_size} patches but the dVAE "
                         f"into {d.num_groups} x {d.group_size}; use a dVAE with the same model.num_groups / "
                         "model.group_size (or change them to match)")


def fit_dvae(dvae: PointDVAE, loader, steps: int, lr: float = 1e-3, temperature: Sequence[float] = (1.0, 0.0625),
             kl_weight: Sequence[float] = (0.0, 0.1), noise_ramp: float = 0.0,
             device: Optional[torch.device] = None) -> dict[str, float]:
    """Train the tokenizer for ``steps`` steps on ``loader`` batches ``(points, ...)`` (plain loop; the
    schedules of :class:`PointDVAETask`)."""
    device = device or next(dvae.parameters()).device
    dvae.train()

    def step(batch, progress):
        return dvae_losses(dvae, batch[0].to(device), cosine_anneal(*temperature, progress),
                           cosine_anneal(*kl_weight, progress), gumbel_noise_scale(noise_ramp, progress))

    out = fit_plain(dvae, loader, steps, lr, step, "dVAE tokenizer")
    dvae.eval()
    return out


def fit_mpm(model: PointBERT, dvae: PointDVAE, loader, steps: int, lr: float = 1e-3,
            mask_ratio: Sequence[float] = (0.25, 0.45), device: Optional[torch.device] = None) -> dict[str, float]:
    """Masked point modeling pre-training of ``model`` for ``steps`` steps (plain loop); the prediction
    head is discarded afterwards, as in the paper."""
    _check_compatible(model, dvae)
    device = device or next(model.parameters()).device
    lm_head = nn.Linear(model.cfg.dim, dvae.cfg.num_tokens).to(device)
    model.train()

    def step(batch, progress):
        return mpm_losses(model, lm_head, dvae, batch[0].to(device), mask_ratio)

    return fit_plain(nn.ModuleList([model, lm_head]), loader, steps, lr, step,
                     "Point-BERT masked point modeling")


def ensure_tokenizer(dvae_checkpoint: Optional[str], tokenizer_model: str, tokenizer_steps: int, tokenizer_lr: float,
                     datamodule: Any, out_dir: Path, device: torch.device, model: PointBERT,
                     tokenizer_noise_ramp: float = 0.0) -> PointDVAE:
    """The dVAE of ``dvae_checkpoint``; without one, the dVAE this run trained before (resume) or a new
    ``tokenizer_model`` (grouping clouds as ``model`` does) trained now for ``tokenizer_steps`` steps on
    the data's training split."""
    if dvae_checkpoint:
        dvae = create_model(pretrained=dvae_checkpoint)
        if not isinstance(dvae, PointDVAE):
            raise ValueError(f"dvae_checkpoint={dvae_checkpoint} holds a {type(dvae).__name__}, not a Point-BERT "
                             "dVAE (train one with `python train.py model=point_bert_dvae`)")
        return dvae.to(device).eval().requires_grad_(False)
    path = out_dir / "tokenizer" / "last.ckpt"
    if path.is_file():
        log.info("no dVAE checkpoint given: reusing the tokenizer this run trained before, %s", path)
        return create_model(pretrained=path).to(device).eval().requires_grad_(False)
    log.warning("no dVAE checkpoint given (task.dvae_checkpoint=null): training the tokenizer first: %s for %d "
                "steps, saved to %s. Pass task.dvae_checkpoint=PATH to use a trained one "
                "(`python train.py model=point_bert_dvae`).", tokenizer_model, tokenizer_steps, path)
    dvae = create_model(tokenizer_model, num_groups=model.cfg.num_groups, group_size=model.cfg.group_size).to(device)
    fit_dvae(dvae, datamodule.unlabeled_dataloader(), tokenizer_steps, tokenizer_lr,
             noise_ramp=tokenizer_noise_ramp, device=device)
    save_model_checkpoint(dvae, path)
    return dvae.eval().requires_grad_(False)


def _datamodule(task: BaseTask) -> Any:
    dm = getattr(task.trainer, "datamodule", None)
    if dm is None or not hasattr(dm, "unlabeled_dataloader"):
        raise ValueError("training a tokenizer or pre-training inside this run needs a point-cloud data module "
                         "(data=procedural_shapes, modelnet40, shapenet55, point_folder)")
    dm.setup("fit")
    return dm


# --------------------------------------------------------------------------------------------------
# Lightning tasks
# --------------------------------------------------------------------------------------------------
def _token_stats(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Codebook usage (fraction of entries used) and perplexity of the token histogram."""
    p = counts.float() / counts.sum().clamp_min(1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"codebook_usage": (counts > 0).float().mean(), "token_perplexity": entropy.exp()}


class PointDVAETask(BaseTask):
    """Trains the Point-BERT tokenizer.

    Args:
        model: a :class:`PointDVAE`.
        temperature: Gumbel-softmax temperature, cosine-annealed from the first to the second value.
        kl_weight: weight of the KL term, cosine-annealed from the first to the second value.
        anneal_steps: steps of the annealings (default: the whole run).
        noise_ramp: fraction of the anneal over which the Gumbel noise grows from 0 to its full scale
            (0: full noise from the first step, Point-BERT's recipe). Small tokenizers need it: under full
            noise their O(1) logits decide almost no sample, the decoder learns one mean patch and the
            tokens stay uninformative (docs/models/point_bert.md).
        **kwargs: optimisation options of :class:`BaseTask`.
    """

    def __init__(self, model: PointDVAE, temperature: Sequence[float] = (1.0, 0.0625),
                 kl_weight: Sequence[float] = (0.0, 0.1), anneal_steps: Optional[int] = None,
                 noise_ramp: float = 0.0, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        if not isinstance(model, PointDVAE):
            raise ValueError(f"task=dvae trains a Point-BERT dVAE, got {type(model).__name__}; use model=point_bert_dvae")
        self.temperature, self.kl_weight = tuple(temperature), tuple(kl_weight)
        self.anneal_steps = anneal_steps
        if not 0.0 <= noise_ramp <= 1.0:
            raise ValueError(f"task.noise_ramp={noise_ramp}: expected a fraction of the anneal in [0, 1]")
        self.noise_ramp = noise_ramp
        self.token_counts = torch.zeros(model.cfg.num_tokens, dtype=torch.long)
        self.val_point_samples: Optional[dict[str, torch.Tensor]] = None

    def _progress(self) -> float:
        total = self.anneal_steps or (self.trainer.estimated_stepping_batches if self.trainer else 1)
        return self.global_step / max(int(total), 1)

    def training_step(self, batch, batch_idx: int):
        p = self._progress()
        tau, klw = cosine_anneal(*self.temperature, p), cosine_anneal(*self.kl_weight, p)
        noise = gumbel_noise_scale(self.noise_ramp, p)
        out = dvae_losses(self.model, batch[0], tau, klw, noise)
        self.log_dict({f"train/{k}": v for k, v in out.items()}, prog_bar=False)
        self.log_dict({"train/temperature": tau, "train/kl_weight": klw, "train/gumbel_noise": noise})
        return self.check_loss(out["loss"])

    def on_validation_epoch_start(self) -> None:
        self.token_counts = torch.zeros(self.model.cfg.num_tokens, dtype=torch.long)

    def _eval_step(self, batch, prefix: str, batch_idx: int) -> None:
        out = self.model(batch[0])  # eval: arg-max tokens, as handed to Point-BERT
        gt = out.neighborhood.flatten(0, 1)
        fine = chamfer_distance(out.fine.flatten(0, 1), gt, "l1")
        coarse = chamfer_distance(out.coarse.flatten(0, 1), gt, "l1")
        # the whole cloud rebuilt from the patches, against the input cloud (what the dashboard shows)
        whole = (out.fine + out.centers.unsqueeze(2)).flatten(1, 2)
        self.log_dict({f"{prefix}/chamfer_l1": fine, f"{prefix}/chamfer_l1_coarse": coarse,
                       f"{prefix}/chamfer_l1_cloud": chamfer_distance(whole, batch[0], "l1")},
                      on_epoch=True, prog_bar=prefix == "val", sync_dist=True)
        self.token_counts += torch.bincount(out.logits.argmax(-1).flatten().cpu(), minlength=self.model.cfg.num_tokens)
        if prefix == "val" and batch_idx == 0:
            self.val_point_samples = {"input": batch[0][:4].detach().cpu(), "reconstruction": whole[:4].detach().cpu()}

    def _log_tokens(self, prefix: str) -> None:
        self.token_counts = self.sum_over_ranks(self.token_counts)  # the whole split's tokens, every rank
        self.log_dict({f"{prefix}/{k}": v for k, v in _token_stats(self.token_counts).items()})

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val", batch_idx)

    def on_validation_epoch_end(self) -> None:
        self._log_tokens("val")

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test", batch_idx)

    def on_test_epoch_end(self) -> None:
        self._log_tokens("test")


class PointBERTPretrainTask(BaseTask):
    """Masked point modeling (Point-BERT section 3.2) against a frozen dVAE's tokens, with an optional
    momentum-encoder contrastive term (the paper's "Point-BERT + MoCo").

    Args:
        model: a :class:`PointBERT` (``num_classes=0``: its head is not used here).
        dvae_checkpoint: the trained tokenizer (``model=point_bert_dvae`` run); None trains
            ``tokenizer_model`` for ``tokenizer_steps`` steps first (logged) and saves it in the run.
        tokenizer_model: preset of that fallback tokenizer.
        tokenizer_steps: its training steps.
        tokenizer_lr: its learning rate.
        tokenizer_noise_ramp: its ``noise_ramp`` (see :class:`PointDVAETask`).
        mask_ratio: range of the block-masking ratio, drawn per cloud.
        moco_weight: weight of the contrastive term (0 = off).
        moco_momentum: EMA momentum of the key encoder.
        moco_queue: negatives kept in the queue.
        moco_temperature: InfoNCE temperature.
        **kwargs: optimisation options of :class:`BaseTask`.
    """

    def __init__(self, model: PointBERT, dvae_checkpoint: Optional[str] = None,
                 tokenizer_model: str = "point_bert_dvae_tiny", tokenizer_steps: int = 300, tokenizer_lr: float = 2e-3,
                 tokenizer_noise_ramp: float = 0.0, mask_ratio: Sequence[float] = (0.25, 0.45),
                 moco_weight: float = 0.0, moco_momentum: float = 0.999, moco_queue: int = 1024,
                 moco_temperature: float = 0.07, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        if not isinstance(model, PointBERT):
            raise ValueError(f"task=point_bert_pretrain pre-trains Point-BERT, got {type(model).__name__}")
        from ..models import get_model_config

        num_tokens = (create_model(pretrained=dvae_checkpoint).cfg.num_tokens if dvae_checkpoint
                      else get_model_config(tokenizer_model).num_tokens)
        self.lm_head = nn.Linear(model.cfg.dim, num_tokens)
        nn.init.trunc_normal_(self.lm_head.weight, std=0.02)
        nn.init.zeros_(self.lm_head.bias)
        # set in setup(); then a frozen submodule (no gradients, kept in eval mode by mpm_losses): it moves
        # with the task and is saved in its checkpoints, so a checkpoint carries the tokenizer its targets came from
        self.dvae: Optional[PointDVAE] = None
        self.token_counts = torch.zeros(num_tokens, dtype=torch.long)
        self.val_point_samples: Optional[dict[str, torch.Tensor]] = None
        if moco_weight > 0:
            feat = 2 * model.cfg.dim
            self.moco_proj = nn.Sequential(nn.Linear(feat, feat), nn.ReLU(), nn.Linear(feat, 256))
            self.key_model = copy.deepcopy(model).requires_grad_(False)
            self.key_proj = copy.deepcopy(self.moco_proj).requires_grad_(False)
            self.register_buffer("queue", F.normalize(torch.randn(moco_queue, 256), dim=-1))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def setup(self, stage: str) -> None:
        if self.dvae is None:
            hp = self.hparams
            dm = None if hp.dvae_checkpoint else _datamodule(self)
            self.dvae = ensure_tokenizer(hp.dvae_checkpoint, hp.tokenizer_model, hp.tokenizer_steps, hp.tokenizer_lr,
                                         dm, _run_dir(self), stage_device(self), self.model, hp.tokenizer_noise_ramp)
            _check_compatible(self.model, self.dvae)

    def _moco(self, features: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """InfoNCE between the masked view (query) and the momentum encoder's full view (key)."""
        hp = self.hparams
        with torch.no_grad():
            for k, q in zip([*self.key_model.parameters(), *self.key_proj.parameters()],
                            [*self.model.parameters(), *self.moco_proj.parameters()]):
                k.mul_(hp.moco_momentum).add_(q.detach(), alpha=1 - hp.moco_momentum)
            key = F.normalize(self.key_proj(self.key_model.forward_head(self.key_model.forward_features(points),
                                                                        pre_logits=True)), dim=-1)
        query = F.normalize(self.moco_proj(self.model.forward_head(features, pre_logits=True)), dim=-1)
        # the queue is a snapshot: it is updated in place below, after the graph has used it
        negatives = self.queue.clone()
        logits = torch.cat([(query * key).sum(-1, keepdim=True), query @ negatives.T], dim=1) / hp.moco_temperature
        loss = F.cross_entropy(logits, torch.zeros(len(query), dtype=torch.long, device=query.device))
        with torch.no_grad():  # enqueue the keys, oldest out (pointer arithmetic on the device: no host sync)
            # every rank's keys, in rank order (MoCo's concat_all_gather): the queues stay identical across
            # ranks. A collective inside training_step, where every rank is at the same batch
            key = all_gather_no_grad(key)
            n, size = key.shape[0], self.queue.shape[0]
            idx = (self.queue_ptr + torch.arange(n, device=key.device)) % size
            self.queue[idx] = key
            self.queue_ptr.copy_((self.queue_ptr + n) % size)
        return loss

    def training_step(self, batch, batch_idx: int):
        out = mpm_losses(self.model, self.lm_head, self.dvae, batch[0], self.hparams.mask_ratio)
        loss = out["loss"]
        if self.hparams.moco_weight > 0:
            moco = self._moco(out["features"], batch[0])
            self.log("train/moco_loss", moco)
            loss = loss + self.hparams.moco_weight * moco
        self.log_dict({"train/loss": loss, "train/mpm_loss": out["loss"], "train/mpm_acc": out["mpm_acc"]},
                      prog_bar=True)
        return self.check_loss(loss)

    def on_validation_epoch_start(self) -> None:
        self.token_counts = torch.zeros_like(self.token_counts)

    def _eval_step(self, batch, prefix: str, batch_idx: int) -> None:
        # fixed masks for comparable figures, without touching the training RNG stream
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(batch_idx)
            out = mpm_losses(self.model, self.lm_head, self.dvae, batch[0], self.hparams.mask_ratio)
        self.log_dict({f"{prefix}/mpm_loss": out["loss"], f"{prefix}/mpm_acc": out["mpm_acc"]}, on_epoch=True,
                      prog_bar=prefix == "val", sync_dist=True)
        self.token_counts += torch.bincount(out["tokens"].flatten().cpu(), minlength=self.token_counts.numel())
        if prefix == "val" and batch_idx == 0:
            dec = self.dvae(batch[0][:4])  # eval mode: arg-max tokens decoded
            whole = (dec.fine + dec.centers.unsqueeze(2)).flatten(1, 2)
            self.val_point_samples = {"input": batch[0][:4].detach().cpu(), "reconstruction": whole.detach().cpu()}

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val", batch_idx)

    def on_validation_epoch_end(self) -> None:
        self.token_counts = self.sum_over_ranks(self.token_counts)  # the whole split's tokens, every rank
        self.log_dict({f"val/{k}": v for k, v in _token_stats(self.token_counts).items()})

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test", batch_idx)


class PointClassificationTask(ClassificationTask):
    """Point-cloud classification / Point-BERT fine-tuning.

    Fine-tune from a pre-trained checkpoint with ``model.pretrained=RUN/checkpoints/last.ckpt`` (the
    classifier head is new when the class count differs). ``pretrain_steps > 0`` runs the earlier stages
    in this run first: a tokenizer (``dvae_checkpoint`` or trained now) and ``pretrain_steps`` steps of
    masked point modeling on the whole training split, labels unused.

    Args:
        model: a point-cloud classifier mapping (B, N, 3) to logits.
        vote_num: test-time voting: average the softmax of this many randomly scaled and shifted copies
            of each test cloud (Point-BERT votes 10 times; 1 = off).
        vote_scale: scale range of the voting augmentation (as Point-BERT's ScaleAndTranslate).
        vote_shift: largest shift of the voting augmentation.
        pretrain_steps: masked point modeling steps before fine-tuning (0 = none).
        pretrain_lr: that stage's learning rate.
        mask_ratio: that stage's masking range.
        **kwargs: optimisation options of :class:`BaseTask`.

    ``num_classes``, ``label_smoothing``, ``class_names``: see :class:`ClassificationTask`.
    ``dvae_checkpoint``, ``tokenizer_model``, ``tokenizer_steps``, ``tokenizer_lr``, ``tokenizer_noise_ramp``:
    the tokenizer of that stage (see :class:`PointBERTPretrainTask`).
    """

    def __init__(self, model: nn.Module, num_classes: int, label_smoothing: float = 0.0,
                 class_names: Optional[list[str]] = None, vote_num: int = 1,
                 vote_scale: Sequence[float] = (2 / 3, 3 / 2), vote_shift: float = 0.2, pretrain_steps: int = 0,
                 pretrain_lr: float = 1e-3, mask_ratio: Sequence[float] = (0.25, 0.45),
                 dvae_checkpoint: Optional[str] = None, tokenizer_model: str = "point_bert_dvae_tiny",
                 tokenizer_steps: int = 300, tokenizer_lr: float = 2e-3, tokenizer_noise_ramp: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(model, num_classes, label_smoothing, class_names, **kwargs)
        if vote_num < 1:
            raise ValueError(f"task.vote_num must be >= 1, got {vote_num}")
        self.save_hyperparameters(ignore=["model"])
        self._pretrained_here = False

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if stage != "fit" or hp.pretrain_steps <= 0 or self._pretrained_here:
            return
        if not isinstance(self.model, PointBERT):
            raise ValueError(f"task.pretrain_steps needs a Point-BERT model, got {type(self.model).__name__}")
        self._pretrained_here = True
        path = _run_dir(self) / "pretrain" / "last.ckpt"
        if path.is_file():
            log.info("reusing the pre-trained weights this run wrote before, %s", path)
            sd = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
            own = {k[len("model."):]: v for k, v in sd.items() if not k.startswith("model.head.")}
            self.model.load_state_dict(own, strict=False)
            return
        dm = _datamodule(self)
        device = stage_device(self)
        self.model.to(device)  # the strategy would move it after setup anyway
        dvae = ensure_tokenizer(hp.dvae_checkpoint, hp.tokenizer_model, hp.tokenizer_steps, hp.tokenizer_lr, dm,
                                _run_dir(self), device, self.model, hp.tokenizer_noise_ramp)
        log.warning("pre-training Point-BERT by masked point modeling for %d steps before fine-tuning "
                    "(task.pretrain_steps)", hp.pretrain_steps)
        fit_mpm(self.model, dvae, dm.unlabeled_dataloader(), hp.pretrain_steps, hp.pretrain_lr, hp.mask_ratio,
                device=device)
        save_model_checkpoint(self.model, path)

    def _vote(self, x: torch.Tensor) -> torch.Tensor:
        """Mean softmax over ``vote_num`` scaled / shifted copies (log-probabilities returned)."""
        hp = self.hparams
        lo, hi = hp.vote_scale
        probs = 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for _ in range(hp.vote_num):
                scale = lo + (hi - lo) * torch.rand(x.shape[0], 1, 3)
                shift = hp.vote_shift * (2 * torch.rand(x.shape[0], 1, 3) - 1)
                probs = probs + self(x * scale.to(x) + shift.to(x)).softmax(-1)
        return (probs / hp.vote_num).clamp_min(1e-12).log()

    def test_step(self, batch, batch_idx: int) -> None:
        if self.hparams.vote_num == 1:
            return super().test_step(batch, batch_idx)
        x, y = batch
        logits = self._vote(x)
        self._check_batch(logits, y)
        self.test_metrics(logits, y)
        self.log("test/loss", F.nll_loss(logits, y), on_epoch=True, sync_dist=True)
        self.log_dict(self.test_metrics, on_epoch=True)
