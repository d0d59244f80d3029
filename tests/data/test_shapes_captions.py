import re
from collections import Counter

import pytest
import torch

from mmzoo.data.shapes import CLASS_NAMES as SHAPE_NAMES
from mmzoo.data.shapes_captions import (CLASS_NAMES, COLOURS, HELDOUT_CLASSES, HELDOUT_PAIRS, POSITIONS, SHAPES,
                                        SIZES, ZEROSHOT_TEMPLATES, ShapesCaptionsDataModule, ShapesCaptionsDataset,
                                        sample_scene)
from mmzoo.data.tokenizer import ByteBPETokenizer

torch.set_num_threads(1)
_OBJECT = re.compile(rf"a (?:({'|'.join(SIZES)}) )?({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})"
                     rf"(?: ({'|'.join(POSITIONS)}))?")


def _dm(**kw) -> ShapesCaptionsDataModule:
    args = dict(batch_size=16, num_train=64, num_val=32, num_test=32, num_zeroshot=96, image_size=32, seed=0)
    args.update(kw)
    return ShapesCaptionsDataModule(**args)


@pytest.fixture(scope="module")
def dm():
    dm = _dm()
    dm.setup("fit")
    return dm


def test_metadata_and_heldout_definition():
    dm = _dm()
    assert dm.train_set is None  # nothing built yet
    assert SHAPES == SHAPE_NAMES and len(COLOURS) == 6
    assert dm.num_classes == len(dm.class_names) == 48 and dm.class_names[0] == "red circle"
    assert (dm.image_size, dm.in_chans) == (32, 3)
    assert dm.heldout_classes == sorted(CLASS_NAMES.index(f"{c} {s}") for c, s in HELDOUT_PAIRS)
    assert len(HELDOUT_CLASSES) == 10  # ~20% of the pairs
    # the documented rule, and every colour / shape keeps several training partners
    assert {(c, s) for c, s in HELDOUT_PAIRS} == {
        (c, s) for ci, c in enumerate(COLOURS) for si, s in enumerate(SHAPES) if (ci + si) % 5 == 0}
    assert min(Counter(c for c, _ in HELDOUT_PAIRS).values()) >= 1
    assert max(Counter(c for c, _ in HELDOUT_PAIRS).values()) <= 2
    assert max(Counter(s for _, s in HELDOUT_PAIRS).values()) <= 2
    prompts = dm.zeroshot_prompts()
    assert len(prompts) == 48 and len(prompts[0]) == len(ZEROSHOT_TEMPLATES)
    assert prompts[CLASS_NAMES.index("blue star")][1] == "a photo of a blue star"


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="max_objects"):
        _dm(max_objects=10)
    with pytest.raises(ValueError, match="image_size"):
        _dm(image_size=8)
    with pytest.raises(ValueError, match="valid choices"):
        ShapesCaptionsDataset(4, split="training")
    with pytest.raises(ValueError, match="zero-shot split"):
        _dm().zeroshot_dataloader("train")


def test_determinism_and_independence_of_split_length():
    a = ShapesCaptionsDataset(12, seed=3, split="val", image_size=32)
    b = ShapesCaptionsDataset(40, seed=3, split="val", image_size=32)
    lazy = ShapesCaptionsDataset(40, seed=3, split="val", image_size=32, cache=False)
    c = ShapesCaptionsDataset(12, seed=4, split="val", image_size=32)
    for i in (0, 5, 11):
        xa, ca, la, ha = a[i]
        xb, cb, lb, hb = b[i]
        assert torch.equal(xa, xb) and (ca, la, ha) == (cb, lb, hb)
        assert torch.equal(lazy[i][0], xb)  # per-sample rendering equals the batched cache
    assert not torch.equal(a.images, c.images)
    assert [s.caption for s in a.scenes] != [s.caption for s in c.scenes]
    train = ShapesCaptionsDataset(12, seed=3, split="train", image_size=32)
    assert not torch.equal(train.images, a.images)  # splits are different streams


def test_captions_describe_the_scene():
    for split in ("train", "val"):
        for i in range(300):
            scene = sample_scene(0, split, i)
            found = _OBJECT.findall(scene.caption)
            assert [(c, s) for _, c, s, _ in found] == \
                [(COLOURS[o.colour], SHAPES[o.shape]) for o in scene.objects], scene.caption
            for (size, _, _, pos), o in zip(found, scene.objects):
                assert size in ("", SIZES[o.size]) and pos in ("", POSITIONS[o.cell]), scene.caption
            assert scene.label == CLASS_NAMES.index(f"{COLOURS[scene.objects[0].colour]} "
                                                    f"{SHAPES[scene.objects[0].shape]}")
            assert 1 <= len(scene.objects) <= 3 and len({o.cell for o in scene.objects}) == len(scene.objects)
            if " to the left of " in scene.caption:
                assert scene.objects[0].cell % 3 < scene.objects[1].cell % 3
            if " above " in scene.caption:
                assert scene.objects[0].cell // 3 < scene.objects[1].cell // 3


def test_images_show_the_objects():
    ds = ShapesCaptionsDataset(16, seed=0, split="train", image_size=32)
    img = ds.images.float()
    bg = img.flatten(2).median(dim=2).values[:, :, None, None]
    fg = ((img - bg).abs().amax(1) > 60).float().sum((1, 2))  # (N,) pixels far from the background
    for n_px, scene in zip(fg.tolist(), ds.scenes):
        assert n_px >= 4 * len(scene.objects) and n_px < 0.5 * 32 * 32
    # the object's colour is its pixels' colour: the primary object's centre pixel is close to its RGB
    for b, scene in enumerate(ds.scenes):
        o = scene.objects[0]
        if SHAPES[o.shape] in ("circle", "square"):  # solid at the centre
            x, y = int((o.cx + 1) * 16), int((o.cy + 1) * 16)
            assert (img[b, :, y, x] / 255 - torch.tensor(o.rgb)).abs().max() < 0.25


def test_heldout_pairs_never_in_training_but_in_val_test():
    heldout_names = [f"{c} {s}" for c, s in HELDOUT_PAIRS]
    seen = Counter()
    for i in range(3000):
        scene = sample_scene(0, "train", i)
        assert not scene.heldout
        assert all(o.label not in HELDOUT_CLASSES for o in scene.objects)
        assert not any(re.search(rf"\b{name}\b", scene.caption.replace("small ", "").replace("large ", ""))
                       for name in heldout_names), scene.caption
        seen.update(o.label for o in scene.objects)
    # every colour and every shape appears in training, and every seen pair too
    assert {CLASS_NAMES[k].split()[0] for k in seen} == set(COLOURS)
    assert {CLASS_NAMES[k].split()[1] for k in seen} == set(SHAPES)
    assert len(seen) == 48 - len(HELDOUT_CLASSES)
    for split in ("val", "test"):
        scenes = [sample_scene(0, split, i) for i in range(400)]
        flags = [s.heldout for s in scenes]
        assert flags == [i % 2 == 1 for i in range(400)]  # balanced, odd indices held out
        assert {s.label for s in scenes if s.heldout} == set(HELDOUT_CLASSES)  # every held-out pair
        assert all(s.label not in HELDOUT_CLASSES for s in scenes if not s.heldout)
        for s in scenes:  # a held-out scene has exactly one novel pair: the primary (label) object
            assert [o.label in HELDOUT_CLASSES for o in s.objects] == [s.heldout] + [False] * (len(s.objects) - 1)


def test_batches(dm):
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "text", "caption", "label", "heldout"}
    assert batch["image"].shape == (16, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert torch.isfinite(batch["image"]).all() and -2.5 < batch["image"].mean() < 2.5
    text = batch["text"]
    assert text.shape == (16, 32) and text.dtype == torch.long
    tok = dm.tokenizer
    assert (text[:, 0] == tok.sot_token_id).all()
    eot = (text == tok.eot_token_id).int().argmax(1)
    assert ((text == tok.eot_token_id).sum(1) == 1).all() and (eot > 1).all()  # one EOT, never cut
    for row, e in zip(text, eot.tolist()):
        assert (row[e + 1:] == tok.pad_token_id).all()
    assert torch.equal(text, dm.tokenize(batch["caption"]))
    assert dm.vocab_size == tok.vocab_size and int(text.max()) < dm.vocab_size
    assert batch["label"].dtype == torch.long and batch["heldout"].dtype == torch.bool
    assert not batch["heldout"].any()
    val = next(iter(dm.val_dataloader()))
    assert val["heldout"].tolist() == [i % 2 == 1 for i in range(16)]
    assert len(val["caption"]) == 16 and val["text"].shape == (16, 32)
    assert len(list(dm.test_dataloader())) == 2


def test_longest_captions_fit_context(dm):
    caps = [sample_scene(1, "train", i).caption for i in range(2000)]
    lengths = [len(dm.tokenizer.encode(c)) + 2 for c in caps]
    assert max(lengths) <= 32


def test_zeroshot_loader(dm):
    batches = list(dm.zeroshot_dataloader("test"))
    assert set(batches[0]) == {"image", "label", "heldout"}
    images = torch.cat([b["image"] for b in batches])
    labels = torch.cat([b["label"] for b in batches])
    heldout = torch.cat([b["heldout"] for b in batches])
    assert images.shape == (96, 3, 32, 32)
    assert labels.min() >= 0 and labels.max() < dm.num_classes
    assert torch.bincount(labels, minlength=48).tolist() == [2] * 48  # balanced classes
    assert torch.equal(heldout, torch.tensor([int(y) in HELDOUT_CLASSES for y in labels]))
    ds = dm._zeroshot_sets["test"]
    assert all(len(s.objects) == 1 for s in ds.scenes)
    val = next(iter(dm.zeroshot_dataloader("val")))["image"]
    assert not torch.equal(val, images[:16])


def test_bpe_json_tokenizer(tmp_path):
    captions = [sample_scene(0, "train", i).caption for i in range(500)]
    path = tmp_path / "bpe.json"
    ByteBPETokenizer.train(captions, vocab_size=400).save(path)
    dm = _dm(tokenizer=str(path), context_length=40, num_train=32, batch_size=8)
    batch = next(iter(dm.train_dataloader()))
    assert batch["text"].shape == (8, 40) and (batch["text"][:, 0] == dm.tokenizer.sot_token_id).all()
    assert dm.vocab_size <= 400
    assert dm.tokenizer.decode([i for i in batch["text"][0].tolist()
                                if i not in (dm.tokenizer.sot_token_id, dm.tokenizer.eot_token_id,
                                             dm.tokenizer.pad_token_id)]) == batch["caption"][0]


def test_hydra_config_instantiates():
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "configs" / "data" / "shapes_captions.yaml")
    cfg.seed = 5  # stands in for the root config's ${seed}
    dm = instantiate(cfg, num_train=16)
    assert isinstance(dm, ShapesCaptionsDataModule)
    assert (dm.batch_size, dm.seed, dm.image_size, dm.context_length) == (128, 5, 48, 32)
