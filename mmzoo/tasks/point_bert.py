"""Point-BERT's stages: the dVAE tokenizer, masked point modeling, and point-cloud classification.

* :class:`PointDVAETask` trains the tokenizer (``model=point_bert_dvae``).
* :class:`PointBERTPretrainTask` pre-trains Point-BERT by masked point modeling against the tokens of
  a frozen dVAE (``model=point_bert``, ``task.dvae_checkpoint=PATH``).
* :class:`PointClassificationTask` fine-tunes (``task=point_classification``), with optional test-time
  voting.

Each stage is an ordinary run; ``python train.py model=point_bert`` (tokenizer -> masked point modeling) and
``experiment=point_bert_shapes`` (-> fine-tuning) run them in order as a pipeline (:mod:`mmzoo.pipeline`,
``configs/pipeline/point_bert*.yaml``), each handed the previous one's checkpoint.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import chamfer_distance
from ..losses.point_mix import PointPatchMixLoss, mix_point_patches, moco_infonce
from ..losses.distributed import all_gather_no_grad
from ..models import create_model
from ..models.point_bert import PointBERT, PointDVAE, block_mask
from .base import BaseTask
from .classification import ClassificationTask


# --------------------------------------------------------------------------------------------------
# losses and schedules of the stages
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


def masked_patch_losses(model: PointBERT, lm_head: nn.Module, neighborhood: torch.Tensor, centers: torch.Tensor,
                        targets: torch.Tensor, mask_ratio: Sequence[float]) -> dict[str, torch.Tensor]:
    """Block-mask a fraction in ``mask_ratio`` of each cloud's grouped patches, predict their token ids
    ``targets`` (B, G); ``features`` are the transformer's tokens (B, 1 + G, dim) of the masked input."""
    lo, hi = mask_ratio
    ratio = lo + (hi - lo) * torch.rand(centers.shape[0], device=centers.device)
    mask = block_mask(centers, ratio)  # (B, G)
    x = model.forward_groups(neighborhood, centers, mask)  # (B, 1 + G, dim)
    logits = lm_head(x[:, 1:][mask])  # (num_masked, num_tokens)
    loss = F.cross_entropy(logits, targets[mask])
    acc = (logits.argmax(-1) == targets[mask]).float().mean()
    return {"loss": loss, "mpm_acc": acc, "tokens": targets, "features": x}


def mpm_losses(model: PointBERT, lm_head: nn.Module, dvae: PointDVAE, points: torch.Tensor,
               mask_ratio: Sequence[float]) -> dict[str, torch.Tensor]:
    """Masked point modeling: block-mask 25-45% of the patches, predict their dVAE token ids. Also returns
    the grouped ``neighborhood`` and ``centers`` (what point patch mixing mixes)."""
    neighborhood, centers = model.group(points)
    dvae.eval()  # frozen tokenizer: BatchNorm statistics stay those it was trained with
    targets = dvae.tokenize(neighborhood, centers)  # (B, G)
    out = masked_patch_losses(model, lm_head, neighborhood, centers, targets, mask_ratio)
    return {**out, "neighborhood": neighborhood, "centers": centers}


def _check_compatible(model: PointBERT, dvae: PointDVAE) -> None:
    m, d = model.cfg, dvae.cfg
    if (m.num_groups, m.group_size) != (d.num_groups, d.group_size):
        raise ValueError(f"Point-BERT groups clouds into {m.num_groups} x {m.group_size} patches but the dVAE "
                         f"into {d.num_groups} x {d.group_size}; use a dVAE with the same model.num_groups / "
                         "model.group_size (or change them to match)")


def load_tokenizer(dvae_checkpoint: Optional[str]) -> PointDVAE:
    """The frozen dVAE of ``dvae_checkpoint`` (any file ``create_model(pretrained=...)`` reads)."""
    if not dvae_checkpoint:
        raise ValueError("task.dvae_checkpoint is null: masked point modeling needs a trained tokenizer. "
                         "`python train.py model=point_bert` trains one first (configs/pipeline/point_bert.yaml); "
                         "otherwise pass task.dvae_checkpoint=RUN/checkpoints/last.ckpt of "
                         "`python train.py model=point_bert_dvae`")
    dvae = create_model(pretrained=dvae_checkpoint)
    if not isinstance(dvae, PointDVAE):
        raise ValueError(f"task.dvae_checkpoint={dvae_checkpoint} holds a {type(dvae).__name__}, not a Point-BERT "
                         "dVAE (train one with `python train.py model=point_bert_dvae`)")
    return dvae.eval().requires_grad_(False)


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
    momentum-encoder contrastive term (the paper's "Point-BERT + MoCo") and optional point patch mixing
    (section 3.3, :mod:`mmzoo.losses.point_mix`): each step also builds one virtual cloud per cloud from
    its patches and its partner's (the batch reversed) in a ratio ``r`` drawn from ``mix_ratio``; the
    virtual cloud is masked and predicts the tokens its patches came with (masked point modeling, weight
    1, as the paper and its code), and its feature is contrasted against both clouds' momentum-encoder
    features weighted ``r`` and ``1 - r`` (weight ``mix_weight``). The paper's recipe turns all three on
    (``configs/experiment/point_bert_paper.yaml``).

    Args:
        model: a :class:`PointBERT` (``num_classes=0``: its head is not used here).
        dvae_checkpoint: the trained tokenizer (``RUN/checkpoints/last.ckpt`` of a ``model=point_bert_dvae``
            run; the ``point_bert`` pipeline hands over its tokenizer stage's).
        mask_ratio: range of the block-masking ratio, drawn per cloud.
        moco_weight: weight of the contrastive term (0 = off).
        moco_momentum: EMA momentum of the key encoder.
        moco_queue: negatives kept in the queue.
        moco_temperature: InfoNCE temperature (also of the mixing contrast).
        mix_weight: weight of the point patch mixing contrast (0 = no mixing at all).
        mix_ratio: range of the mixing ratio ``r`` (the fraction of a virtual cloud's patches that are
            its own), drawn uniformly per cloud (the reference code: [0, 1]).
        **kwargs: optimisation options of :class:`BaseTask`.
    """

    def __init__(self, model: PointBERT, dvae_checkpoint: Optional[str] = None,
                 mask_ratio: Sequence[float] = (0.25, 0.45), moco_weight: float = 0.0, moco_momentum: float = 0.999,
                 moco_queue: int = 1024, moco_temperature: float = 0.07,
                 mix_weight: float = 0.0, mix_ratio: Sequence[float] = (0.0, 1.0), **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        if not isinstance(model, PointBERT):
            raise ValueError(f"task=point_bert_pretrain pre-trains Point-BERT, got {type(model).__name__}")
        if len(mix_ratio) != 2 or not 0.0 <= mix_ratio[0] <= mix_ratio[1] <= 1.0:
            raise ValueError(f"task.mix_ratio={list(mix_ratio)}: expected [low, high] with 0 <= low <= high <= 1")
        if mix_weight < 0 or moco_weight < 0:
            raise ValueError(f"task.moco_weight={moco_weight} and task.mix_weight={mix_weight} must be >= 0")
        # a frozen submodule (no gradients, kept in eval mode by mpm_losses): it moves with the task and is
        # saved in its checkpoints, so a checkpoint carries the tokenizer its targets came from
        self.dvae = load_tokenizer(dvae_checkpoint)
        _check_compatible(model, self.dvae)
        num_tokens = self.dvae.cfg.num_tokens
        self.lm_head = nn.Linear(model.cfg.dim, num_tokens)
        nn.init.trunc_normal_(self.lm_head.weight, std=0.02)
        nn.init.zeros_(self.lm_head.bias)
        self.token_counts = torch.zeros(num_tokens, dtype=torch.long)
        self.val_point_samples: Optional[dict[str, torch.Tensor]] = None
        if moco_weight > 0 or mix_weight > 0:  # both contrast against the momentum encoder and its queue
            feat = 2 * model.cfg.dim
            self.moco_proj = nn.Sequential(nn.Linear(feat, feat), nn.ReLU(), nn.Linear(feat, 256))
            self.key_model = copy.deepcopy(model).requires_grad_(False)
            self.key_proj = copy.deepcopy(self.moco_proj).requires_grad_(False)
            self.register_buffer("queue", F.normalize(torch.randn(moco_queue, 256), dim=-1))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def momentum_keys(self, points: torch.Tensor) -> torch.Tensor:
        """EMA-update the key encoder, then its L2-normalised features (B, 256) of the full clouds."""
        m = self.hparams.moco_momentum
        for k, q in zip([*self.key_model.parameters(), *self.key_proj.parameters()],
                        [*self.model.parameters(), *self.moco_proj.parameters()]):
            k.mul_(m).add_(q.detach(), alpha=1 - m)
        feats = self.key_model.forward_head(self.key_model.forward_features(points), pre_logits=True)
        return F.normalize(self.key_proj(feats), dim=-1)

    def query_features(self, features: torch.Tensor) -> torch.Tensor:
        """Online encoder tokens (B, 1 + G, dim) -> L2-normalised contrastive features (B, 256)."""
        return F.normalize(self.moco_proj(self.model.forward_head(features, pre_logits=True)), dim=-1)

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        """Enqueue every rank's keys, oldest out (pointer arithmetic on the device: no host sync)."""
        # every rank's keys, in rank order (MoCo's concat_all_gather): the queues stay identical across
        # ranks. A collective inside training_step, where every rank is at the same batch
        keys = all_gather_no_grad(keys)
        n, size = keys.shape[0], self.queue.shape[0]
        idx = (self.queue_ptr + torch.arange(n, device=keys.device)) % size
        self.queue[idx] = keys
        self.queue_ptr.copy_((self.queue_ptr + n) % size)

    def mix_losses(self, out: dict[str, torch.Tensor], keys: torch.Tensor,
                   negatives: torch.Tensor) -> dict[str, torch.Tensor]:
        """Point patch mixing on the clouds of ``out`` (from :func:`mpm_losses`): the virtual clouds'
        masked point modeling loss ``mpm`` against the tokens their patches came with, and their contrast
        ``contrast`` against the momentum keys of both source clouds (:class:`PointPatchMixLoss`)."""
        lo, hi = self.hparams.mix_ratio
        ratio = lo + (hi - lo) * torch.rand(keys.shape[0], device=keys.device)
        mix = mix_point_patches(out["neighborhood"], out["centers"], ratio, tokens=out["tokens"])
        mixed = masked_patch_losses(self.model, self.lm_head, mix.neighborhood, mix.centers, mix.tokens,
                                    self.hparams.mask_ratio)
        contrast = PointPatchMixLoss(self.hparams.moco_temperature)(
            self.query_features(mixed["features"]), keys, keys[mix.partner], mix.ratio, negatives)
        return {"mpm": mixed["loss"], "mpm_acc": mixed["mpm_acc"], "contrast": contrast}

    def training_step(self, batch, batch_idx: int):
        hp = self.hparams
        out = mpm_losses(self.model, self.lm_head, self.dvae, batch[0], hp.mask_ratio)
        loss = out["loss"]
        if hp.moco_weight > 0 or hp.mix_weight > 0:
            keys = self.momentum_keys(batch[0])
            # the queue is a snapshot: it is updated in place below, after the graph has used it
            negatives = self.queue.clone()
            if hp.moco_weight > 0:  # the masked view (query) against the momentum encoder's full view (key)
                moco = moco_infonce(self.query_features(out["features"]), keys, negatives, hp.moco_temperature)
                self.log("train/moco_loss", moco)
                loss = loss + hp.moco_weight * moco
            if hp.mix_weight > 0:
                mix = self.mix_losses(out, keys, negatives)
                self.log_dict({"train/mix_loss": mix["contrast"], "train/mix_mpm_loss": mix["mpm"],
                               "train/mix_mpm_acc": mix["mpm_acc"]})
                loss = loss + mix["mpm"] + hp.mix_weight * mix["contrast"]
            self._enqueue(keys)
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
    classifier head is new when the class count differs); ``experiment=point_bert_shapes`` runs the
    tokenizer and pre-training stages first (:mod:`mmzoo.pipeline`).

    Args:
        model: a point-cloud classifier mapping (B, N, 3) to logits.
        num_classes: see :class:`ClassificationTask`.
        label_smoothing: see :class:`ClassificationTask`.
        class_names: see :class:`ClassificationTask`.
        vote_num: test-time voting: average the softmax of this many randomly scaled and shifted copies
            of each test cloud (Point-BERT votes 10 times; 1 = off).
        vote_scale: scale range of the voting augmentation (as Point-BERT's ScaleAndTranslate).
        vote_shift: largest shift of the voting augmentation.
        **kwargs: optimisation options of :class:`BaseTask`.
    """

    def __init__(self, model: nn.Module, num_classes: int, label_smoothing: float = 0.0,
                 class_names: Optional[list[str]] = None, vote_num: int = 1,
                 vote_scale: Sequence[float] = (2 / 3, 3 / 2), vote_shift: float = 0.2, **kwargs: Any) -> None:
        super().__init__(model, num_classes, label_smoothing, class_names, **kwargs)
        if vote_num < 1:
            raise ValueError(f"task.vote_num must be >= 1, got {vote_num}")
        self.save_hyperparameters(ignore=["model"])

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
