"""Preprocessing travels with the model: checkpoints record the data config, ``create_model`` exposes it as
``model.pretrained_cfg`` and ``mmzoo.zeroshot`` uses it on a user's image folder without any data flag."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mmzoo
from mmzoo.checkpoint import MMZOO_KEY, PRETRAINED_CFG_KEY, load, read_checkpoint
from mmzoo.preprocessing import data_config, data_kwargs, pretrained_cfg
from mmzoo.training import train

ROOT = Path(__file__).resolve().parents[1]
SHAPES_MEAN, SHAPES_STD = [0.5] * 3, [0.29] * 3  # mmzoo/data/shapes.py's fixed normalisation


def test_data_config_of_an_image_text_module():
    from mmzoo.data.shapes_captions import CLASS_NAMES, ZEROSHOT_TEMPLATES, ShapesCaptionsDataModule

    dm = ShapesCaptionsDataModule(image_size=40, context_length=20, num_train=8, num_val=8, num_test=8)
    cfg = data_config(dm)
    assert cfg["input_size"] == [3, 40, 40]
    assert cfg["mean"] == SHAPES_MEAN and cfg["std"] == SHAPES_STD
    assert cfg["interpolation"] == "bilinear" and cfg["crop_pct"] == 1.0 and cfg["crop_mode"] == "center"
    assert cfg["context_length"] == 20 and cfg["tokenizer"] == "clip"
    assert cfg["class_names"] == list(CLASS_NAMES) and cfg["num_classes"] == len(CLASS_NAMES)
    assert cfg["zeroshot_templates"] == list(ZEROSHOT_TEMPLATES)
    assert cfg["data_module"] == "mmzoo.data.shapes_captions.ShapesCaptionsDataModule"
    assert json.loads(json.dumps(cfg)) == cfg  # plain containers
    assert data_kwargs(cfg) == {"in_chans": 3, "image_size": 40, "mean": SHAPES_MEAN, "std": SHAPES_STD}


def test_data_config_of_point_and_video_modules():
    from mmzoo.data.moving_shapes import MovingShapesDataModule
    from mmzoo.data.points import ProceduralShapesDataModule

    cfg = data_config(ProceduralShapesDataModule(num_points=96))
    assert cfg["num_points"] == 96 and cfg["num_classes"] == len(cfg["class_names"]) > 1
    assert "input_size" not in cfg and data_kwargs(cfg) == {}
    video = data_config(MovingShapesDataModule(num_frames=4, image_size=16))
    assert video["num_frames"] == 4 and video["input_size"] == [3, 16, 16]


def test_preset_pretrained_cfg_comes_from_its_config():
    vit = mmzoo.create_model("vit_nano_patch4_32", num_classes=7)
    assert vit.pretrained_cfg["input_size"] == [vit.cfg.in_chans, vit.cfg.img_size, vit.cfg.img_size]
    assert vit.pretrained_cfg["num_classes"] == 7
    clip = mmzoo.create_model("clip_nano")
    assert clip.pretrained_cfg["input_size"] == [3, 32, 32]
    # stored values win, the head's class count is the model's
    assert pretrained_cfg(vit, {"input_size": [3, 9, 9], "num_classes": 3})["input_size"] == [3, 9, 9]
    assert pretrained_cfg(vit, {"num_classes": 3})["num_classes"] == 7


def _image_folder(root: Path) -> None:
    """train/ and test/ with two colour classes of 20x20 PNGs (sizes other than the model's on purpose)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                img = np.clip(np.array(colour)[None, None] + rng.integers(-20, 20, (20, 26, 3)), 0, 255)
                Image.fromarray(img.astype(np.uint8)).save(folder / f"{i}.png")


def _zeroshot(ckpt: Path, out: Path, *overrides: str):
    from hydra import compose, initialize_config_dir

    from mmzoo.zeroshot import run

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("zeroshot", overrides=[f"ckpt_path={ckpt}", f"paths.output_dir={out}", "device=cpu",
                                             *overrides])
    given = [o for o in overrides if o.lstrip("+").startswith("data.")]  # what a command line would give
    run(cfg, overrides=given)
    return json.loads((out / "zeroshot.json").read_text())


def test_clip_checkpoint_carries_its_preprocessing_to_zeroshot(train_cfg, tmp_path, caplog, capsys):
    cfg = train_cfg("model=clip", "model.name=clip_nano", "debug=limit", "trainer.max_epochs=1", "test=false",
                    "data.num_train=64", "data.num_val=32", "data.num_test=32", "data.num_zeroshot=32",
                    "data.batch_size=32", "data.image_size=40", "data.context_length=16")
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"

    stored = load(ckpt)[MMZOO_KEY][PRETRAINED_CFG_KEY]  # weights_only=True
    assert stored["input_size"] == [3, 40, 40] and stored["mean"] == SHAPES_MEAN and stored["std"] == SHAPES_STD
    assert stored["context_length"] == 16 and stored["num_classes"] == len(stored["class_names"])
    assert stored["zeroshot_templates"]

    model = mmzoo.create_model(pretrained=ckpt)
    assert model.cfg.vision.img_size == 40
    for key in ("input_size", "mean", "std", "interpolation", "crop_pct", "class_names", "zeroshot_templates"):
        assert model.pretrained_cfg[key] == stored[key], key

    # the exported safetensors keeps it
    from mmzoo.convert import export_safetensors

    exported = export_safetensors(ckpt, tmp_path / "clip.safetensors")
    assert read_checkpoint(exported).pretrained_cfg == stored
    assert mmzoo.create_model(pretrained=exported).pretrained_cfg["input_size"] == [3, 40, 40]

    # and the save_pretrained folder written from the run: preprocessing, the run's settings and metrics
    from mmzoo.hub import save_checkpoint_pretrained

    folder = save_checkpoint_pretrained(ckpt, tmp_path / "folder")
    assert mmzoo.from_pretrained(folder).pretrained_cfg["input_size"] == [3, 40, 40]
    card = (folder / "README.md").read_text()
    run_metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    val = sorted(k for k in run_metrics if k.startswith("val/"))[0]
    assert f"| {val} | {run_metrics[val]:.4g} |" in card and "- seed: 42" in card
    assert "mmzoo.data.shapes_captions.ShapesCaptionsDataModule" in card and "40x40 pixels" in card
    # the same from the command line, and `mmzoo info` shows the preprocessing
    from mmzoo.cli import main as mmzoo_cli

    assert mmzoo_cli(["export", str(ckpt), str(tmp_path / "cli_folder")]) == 0
    assert mmzoo.from_pretrained(tmp_path / "cli_folder").pretrained_cfg == mmzoo.from_pretrained(folder).pretrained_cfg
    capsys.readouterr()
    assert mmzoo_cli(["info", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "preprocessing:\n" in out and "  input_size: [3, 40, 40]\n" in out

    # the user's folder of photos (data default: 32 px, ImageNet mean/std): the model's preprocessing, no flag
    photos = tmp_path / "photos"
    _image_folder(photos)
    caplog.set_level(logging.INFO, logger="mmzoo")
    res = _zeroshot(ckpt, tmp_path / "zs", "data=image_folder", f"data.root={photos}", "data.num_workers=0")
    assert res["preprocessing"] == {"input_size": [3, 40, 40], "mean": SHAPES_MEAN, "std": SHAPES_STD}
    assert res["num_samples"] == 4 and res["num_classes"] == 2
    assert "preprocessing from the model's pretrained_cfg" in caplog.text
    assert res["templates"] == stored["zeroshot_templates"]  # image_folder has none: the model's
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "trained with" in r.getMessage()]

    # an explicit setting that differs is used as given, with a warning naming both values
    caplog.clear()
    res = _zeroshot(ckpt, tmp_path / "zs2", "data=image_folder", f"data.root={photos}", "data.num_workers=0",
                    "+data.mean=[0.4,0.4,0.4]")
    assert res["preprocessing"]["mean"] == pytest.approx([0.4] * 3)
    assert res["preprocessing"]["input_size"] == [3, 40, 40] and res["preprocessing"]["std"] == SHAPES_STD
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "trained with" in r.getMessage()]
    assert len(warned) == 1 and "data.mean=[0.4, 0.4, 0.4]" in warned[0] and "[0.5, 0.5, 0.5]" in warned[0]


def test_timm_resolves_the_data_config_of_an_mmzoo_model():
    timm_data = pytest.importorskip("timm.data")
    model = mmzoo.create_model("clip_nano")
    model.pretrained_cfg = pretrained_cfg(model, {"input_size": [3, 40, 40], "mean": SHAPES_MEAN, "std": SHAPES_STD,
                                                  "interpolation": "bilinear", "crop_pct": 1.0})
    resolved = timm_data.resolve_model_data_config(model)
    assert tuple(resolved["input_size"]) == (3, 40, 40)
    assert tuple(resolved["mean"]) == tuple(SHAPES_MEAN) and tuple(resolved["std"]) == tuple(SHAPES_STD)
    assert resolved["interpolation"] == "bilinear" and resolved["crop_pct"] == 1.0


def test_explicit_image_size_differing_from_the_model_warns_naming_both(caplog):
    from omegaconf import OmegaConf

    from mmzoo.zeroshot import apply_model_preprocessing, command_line_data_keys

    data = OmegaConf.create({"_target_": "mmzoo.data.ImageFolderDataModule", "root": "x", "image_size": 64})
    given = command_line_data_keys(["data=image_folder", "data.image_size=64", "ckpt_path=a.ckpt"])
    assert given == {"image_size"}
    applied = apply_model_preprocessing(data, {"input_size": [3, 40, 40], "mean": [0.5] * 3, "std": [0.29] * 3},
                                        given)
    assert data.image_size == 64 and list(data.mean) == [0.5] * 3 and data.in_chans == 3
    assert set(applied) == {"in_chans", "mean", "std"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "data.image_size=64" in warnings[0] and "image_size=40" in warnings[0]


def test_a_data_module_with_a_fixed_other_normalisation_is_named_in_a_warning(caplog):
    from mmzoo.zeroshot import _used_preprocessing

    class FixedNormalisation:  # as shapes / digits: mean and std are not arguments
        image_size, in_chans, mean, std = 40, 3, (0.5,) * 3, (0.29,) * 3

    model_cfg = {"input_size": [3, 40, 40], "mean": [0.48] * 3, "std": [0.29] * 3}
    used = _used_preprocessing(FixedNormalisation(), model_cfg, set())
    assert used == {"input_size": [3, 40, 40], "mean": [0.5] * 3, "std": [0.29] * 3}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "mean=[0.5, 0.5, 0.5]" in warnings[0] and "[0.48, 0.48, 0.48]" in warnings[0]
    caplog.clear()
    _used_preprocessing(FixedNormalisation(), model_cfg, {"mean"})  # given on the command line: warned already
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
