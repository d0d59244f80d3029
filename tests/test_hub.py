"""``model.save_pretrained(DIR)`` / ``mmzoo.from_pretrained(DIR)``: the folder's files, the model card, and a
round trip that gives the same outputs."""
from __future__ import annotations

import json

import pytest
import torch

import mmzoo
from mmzoo.hub import CARD_NAME, CONFIG_NAME, PREPROCESSOR_NAME, WEIGHTS_NAME, from_pretrained

CARD_SECTIONS = ["## Model details", "## Intended uses", "## Limitations", "## Training details", "## Evaluation",
                 "## How to load"]


def test_vit_round_trip_gives_equal_outputs(tmp_path):
    torch.manual_seed(0)
    model = mmzoo.create_model("vit_nano_patch4_32", num_classes=5).eval()
    model.pretrained_cfg = {**model.pretrained_cfg, "mean": [0.5] * 3, "std": [0.25] * 3,
                            "class_names": list("abcde")}
    with torch.no_grad():  # weights other than the seed's init, so a reload from a fresh init would differ
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "vit")
    for name in (CONFIG_NAME, WEIGHTS_NAME, PREPROCESSOR_NAME, CARD_NAME):
        assert (tmp_path / "vit" / name).is_file(), name

    config = json.loads((tmp_path / "vit" / CONFIG_NAME).read_text())
    assert config["architecture"] == "vit_nano_patch4_32" and config["arch"] == model.arch_name
    assert config["num_classes"] == 5 and config["config"]["num_classes"] == 5
    assert json.loads((tmp_path / "vit" / PREPROCESSOR_NAME).read_text()) == model.pretrained_cfg

    loaded = mmzoo.from_pretrained(tmp_path / "vit").eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.pretrained_cfg == model.pretrained_cfg
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    # the weights file alone also rebuilds it
    alone = mmzoo.create_model(pretrained=tmp_path / "vit" / WEIGHTS_NAME).eval()
    with torch.no_grad():
        assert torch.equal(alone(x), model(x))

    card = (tmp_path / "vit" / CARD_NAME).read_text()
    positions = [card.index(s) for s in CARD_SECTIONS]
    assert positions == sorted(positions)
    assert "library_name: mmzoo" in card and "Classes (5): a, b, c, d, e" in card
    assert f"{sum(p.numel() for p in model.parameters()):,} parameters" in card


def test_clip_round_trip_gives_equal_embeddings(tmp_path):
    torch.manual_seed(1)
    model = mmzoo.create_model("clip_nano").eval()
    mmzoo.save_pretrained(model, tmp_path / "clip")
    loaded = from_pretrained(tmp_path / "clip").eval()
    images, tokens = torch.randn(2, 3, 32, 32), torch.randint(1, 1000, (2, 16))
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), model.encode_image(images))
        assert torch.equal(loaded.encode_text(tokens), model.encode_text(tokens))
    assert loaded.pretrained_cfg["input_size"] == [3, 32, 32]
    assert "mmzoo.zeroshot" in (tmp_path / "clip" / CARD_NAME).read_text()  # intended use of an image-text model


def test_from_pretrained_errors_name_the_folder_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        from_pretrained(tmp_path / "nothing")
    model = mmzoo.create_model("vit_nano_patch4_32", num_classes=3)
    folder = model.save_pretrained(tmp_path / "m")
    (folder / CONFIG_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=f"{folder}.* has no config.json"):
        from_pretrained(folder)
    model.save_pretrained(folder)
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["arch"] = "clip"
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="describes a 'clip' model"):
        from_pretrained(folder)
    (folder / CONFIG_NAME).write_text("[1, 2]")
    with pytest.raises(ValueError, match="not the JSON object"):
        from_pretrained(folder)


def test_create_model_and_transforms_from_a_folder_uses_its_preprocessing(tmp_path):
    from PIL import Image

    from mmzoo.data.transforms import build_eval_transform
    from mmzoo.preprocessing import create_transforms

    model = mmzoo.create_model("vit_nano_patch4_32", num_classes=3)
    model.pretrained_cfg = {**model.pretrained_cfg, "mean": [0.5] * 3, "std": [0.25] * 3}
    model.save_pretrained(tmp_path / "m")
    loaded, train_tf, eval_tf = mmzoo.create_model_and_transforms(tmp_path / "m")
    assert loaded.pretrained_cfg["mean"] == [0.5] * 3
    gen = torch.Generator().manual_seed(0)
    img = Image.fromarray(torch.randint(0, 256, (40, 50, 3), generator=gen, dtype=torch.uint8).numpy())
    x = eval_tf(img)
    assert x.shape == (3, 32, 32) and torch.equal(x, build_eval_transform(32, [0.5] * 3, [0.25] * 3)(img))
    assert train_tf(img).shape == (3, 32, 32)
    # the exact law of the normalisation: (pixel / 255 - mean) / std on a constant image
    flat = Image.new("RGB", (32, 32), (51, 102, 204))
    torch.testing.assert_close(eval_tf(flat)[:, 0, 0], (torch.tensor([51, 102, 204]) / 255 - 0.5) / 0.25)
    # timm's crop_pct: resize to size / crop_pct, then crop the centre
    _, tf = create_transforms({"input_size": [3, 32, 32], "crop_pct": 0.875, "interpolation": "bicubic"})
    assert tf(img).shape == (3, 32, 32) and tf.transforms[0].size == [36]
    with pytest.raises(ValueError, match="no input_size"):
        create_transforms({"num_points": 1024})
    with pytest.raises(ValueError, match="interpolation='cubic'"):
        create_transforms({"input_size": [3, 32, 32], "interpolation": "cubic"})
