"""Shared fixtures: the real Hydra config of train.py, composed with tiny limits."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"

# keep CPU tests reproducible and light on the 2-core CI machines
torch.set_num_threads(min(2, os.cpu_count() or 1))

# overrides every test run gets: CPU, no progress bar, nothing outside the run directory
BASE_OVERRIDES = [
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
]


def compose_train_cfg(out_dir: Path, *overrides: str) -> DictConfig:
    """The config `python train.py <overrides>` would run, with the run directory at ``out_dir``."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=[*BASE_OVERRIDES, f"paths.output_dir={out_dir}", *overrides])


@pytest.fixture
def train_cfg(tmp_path):
    """Factory: ``train_cfg(*overrides, run="run")`` -> composed config writing under tmp_path/run."""

    def make(*overrides: str, run: str = "run") -> DictConfig:
        return compose_train_cfg(tmp_path / run, *overrides)

    return make
