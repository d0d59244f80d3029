"""Multi-process training on CPU (gloo): DDP and FSDP on a tiny CLIP with gradient accumulation and the
gathered contrastive loss; FSDP's config and its sharded checkpoint consolidated and reloaded in one
process (Lightning runs FSDP on CUDA only)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

import mmzoo
from mmzoo.distributed import consolidate_checkpoint, transformer_wrap_policy
from mmzoo.layers.block import Block

ROOT = Path(__file__).resolve().parents[1]
CLIP = ["model=clip", "model.name=clip_nano", "data.num_train=64", "data.batch_size=8", "trainer.max_steps=2", "trainer.accumulate_grad_batches=2",
        "trainer.accelerator=cpu", "trainer.precision=32-true", "test=false", "task.eps=1e-6",
        "trainer.enable_progress_bar=false", "callbacks.progress_bar=null", "trainer.enable_model_summary=false",
        "trainer.check_val_every_n_epoch=100", "callbacks.model_checkpoint=null", "trainer.max_epochs=1"]


def _train(run_dir: Path, *overrides: str) -> None:
    proc = subprocess.run([sys.executable, "train.py", *CLIP, *overrides, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_fsdp_config_composes_with_block_wrapping(train_cfg):
    cfg = train_cfg("model=clip", "model.name=clip_nano", "trainer=fsdp")
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.strategy.state_dict_type == "sharded"
    strategy = instantiate(cfg.trainer.strategy)
    assert type(strategy).__name__ == "FSDPStrategy"
    assert transformer_wrap_policy() == {Block}
    with pytest.raises(FileNotFoundError, match="not a sharded checkpoint directory"):
        consolidate_checkpoint(ROOT / "README.md", "/tmp/never.ckpt")


def test_submitit_launcher_config_composes(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=submitit_slurm", "trainer=ddp", "trainer.devices=8",
                                          "trainer.num_nodes=2", f"paths.output_dir={tmp_path}"],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["nodes"] == 2 and launcher["tasks_per_node"] == 8 and launcher["gpus_per_node"] == 8
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    import dataclasses
    assert set(launcher) == {f.name for f in dataclasses.fields(SlurmQueueConf)}  # every field of the plugin


def test_ddp_clip_with_accumulation_matches_one_process(tmp_path):
    """Two gloo processes, per-rank batch B, 2 accumulated micro-batches, train the same weights as one
    process with batch 2B: the gathered CLIP loss sees the global batch in both."""
    _train(tmp_path / "single", "data.batch_size=16")
    _train(tmp_path / "ddp", "trainer=ddp", "trainer.devices=2")
    load = lambda p: torch.load(p, map_location="cpu", weights_only=True)["state_dict"]  # noqa: E731
    single, ddp = load(tmp_path / "single/checkpoints/last.ckpt"), load(tmp_path / "ddp/checkpoints/last.ckpt")
    assert ddp.keys() == single.keys()
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], atol=1e-5, rtol=0, msg=key)


def test_sharded_checkpoint_consolidates_into_a_single_process_model(train_cfg, tmp_path):
    """Lightning's FSDP runs on CUDA only; its sharded checkpoint layout (torch.distributed.checkpoint
    files of {"model", "optimizer_<i>"} + ``meta.pt`` with everything else) is written here with
    Lightning's own writer from a real CPU checkpoint, then consolidated and loaded in one process."""
    from lightning.fabric.strategies.fsdp import _METADATA_FILENAME, _distributed_checkpoint_save

    from mmzoo.training import train
    train(train_cfg("model=clip", "model.name=clip_nano", "debug=fdr", "test=false", run="run"))
    full = torch.load(tmp_path / "run/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    ckpt = dict(full)
    sharded = tmp_path / "sharded.ckpt"
    converted = {"model": ckpt.pop("state_dict")}
    converted.update({f"optimizer_{i}": s for i, s in enumerate(ckpt.pop("optimizer_states", []))})
    _distributed_checkpoint_save(converted, sharded)  # what FSDPStrategy.save_checkpoint does per rank
    torch.save(ckpt, sharded / _METADATA_FILENAME)

    out = consolidate_checkpoint(sharded, tmp_path / "full.ckpt")
    merged = torch.load(out, map_location="cpu", weights_only=True)
    assert merged["state_dict"].keys() == full["state_dict"].keys()
    for key, value in full["state_dict"].items():
        assert torch.equal(merged["state_dict"][key], value), key
    assert merged["global_step"] == full["global_step"] and "optimizer_states" in merged
    model = mmzoo.create_model(pretrained=out)
    for key, value in model.state_dict().items():
        assert torch.equal(value, full["state_dict"]["model." + key]), key
    assert subprocess.run([sys.executable, "-m", "mmzoo.distributed", "consolidate", str(sharded),
                           str(tmp_path / "cli.ckpt")], cwd=ROOT, capture_output=True).returncode == 0
