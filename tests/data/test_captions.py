"""Image-text data from files (mmzoo/data/captions.py) and data_scripts/prepare_captions.py.

Every image is one solid colour and every caption names it ("a photo of a red square number 3"), so a
batch can be checked for image <-> caption pairing by reading the centre pixel back.
"""
import csv
import importlib.util
import io
import json
import re
import shlex
import tarfile
import warnings
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from mmzoo.data.base import SeededTransformDataset
from mmzoo.data.captions import (CLIP_MEAN, CLIP_STD, CocoCaptionsDataModule, CsvCaptionsDataModule,
                                 TarMember, WebDatasetCaptionsDataModule, expand_braces)
from mmzoo.data.image_folder import UnreadableImageError
from mmzoo.tasks.retrieval import retrieval_recall

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
RGB = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
       "cyan": (0, 255, 255), "magenta": (255, 0, 255), "white": (255, 255, 255), "black": (0, 0, 0)}
NAMES = list(RGB)
S = 16  # image_size of the data modules
MEAN, STD = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
_COLOUR = re.compile(rf"\b({'|'.join(NAMES)})\b")


def _img(path: Path, colour: str, size=(24, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, RGB[colour]).save(path, quality=95)
    return path


def _caption(colour: str, i: int, n: int = 0) -> str:
    return f"a photo of a {colour} square number {i}" + (f", take {n}" if n else "")


def _colour_of(image: torch.Tensor) -> torch.Tensor:
    return image[:, S // 2, S // 2] * STD + MEAN  # (3,) denormalised centre pixel


def _assert_paired(images, captions) -> None:
    for image, caption in zip(images, captions):
        want = torch.tensor(RGB[_COLOUR.search(caption).group(1)], dtype=torch.float32) / 255
        assert torch.allclose(_colour_of(image), want, atol=0.06), caption


def _assert_batch(dm, batch, n) -> None:
    assert set(batch) == {"image", "text", "caption"}
    assert batch["image"].shape == (n, 3, S, S) and batch["image"].dtype == torch.float32
    assert batch["text"].shape == (n, dm.context_length) and batch["text"].dtype == torch.int64
    assert isinstance(batch["caption"], list) and len(batch["caption"]) == n
    assert torch.equal(batch["text"], dm.tokenize(batch["caption"]))
    _assert_paired(batch["image"], batch["caption"])


def _write_csv(path: Path, header, rows, delimiter=",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def _images_csv(folder: Path, n: int, captions_per_image: int = 1, name="train.csv", ext="png") -> Path:
    """``folder/images/<i>.<ext>`` + ``folder/<name>`` (relative paths); rows caption-major, so the captions
    of one image are not adjacent."""
    for i in range(n):
        _img(folder / "images" / f"{i}.{ext}", NAMES[i % len(NAMES)])
    rows = [[f"images/{i}.{ext}", _caption(NAMES[i % len(NAMES)], i, c), "x"]
            for c in range(captions_per_image) for i in range(n)]
    return _write_csv(folder / name, ["filepath", "title", "other"], rows)


def _csv_dm(train_file, **kw) -> CsvCaptionsDataModule:
    args = dict(image_size=S, batch_size=4, seed=0)
    args.update(kw)
    return CsvCaptionsDataModule(train_file=train_file, **args)


def _images_of(records) -> set:
    return {str(r.image) for r in records}


def _printed_overrides(out: str) -> list[list[str]]:
    """The Hydra overrides of each "python train.py ..." line the script printed."""
    return [shlex.split(line)[2:] for line in out.splitlines() if line.strip().startswith("python train.py")]


def _load_script():
    spec = importlib.util.spec_from_file_location("prepare_captions", ROOT / "data_scripts" / "prepare_captions.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# -- CSV / TSV --------------------------------------------------------------------------------------


def test_csv_batches_pair_images_with_captions(tmp_path):
    dm = _csv_dm(_images_csv(tmp_path / "data", 16), val_fraction=0.25)
    assert (dm.class_names, dm.num_classes, dm.in_chans, dm.image_size) == ([], 0, 3, S)
    assert dm.vocab_size == 49408 and dm.context_length == 77
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (12, 4) and dm.test_set is dm.val_set
    assert all(Path(r.image).is_absolute() for r in dm.records["train"])  # resolved against the CSV's folder
    assert isinstance(dm.train_set, SeededTransformDataset)
    assert torch.equal(dm.train_set[3][0], dm.train_set[3][0])  # augmentation: a function of (seed, epoch, i)
    assert len(dm.train_dataloader()) == 3
    for loader, n in ((dm.train_dataloader(), 4), (dm.val_dataloader(), 4)):
        for batch in loader:
            _assert_batch(dm, batch, n)
    assert sum(len(b["caption"]) for b in dm.val_dataloader()) == 4


def test_tsv_keys_separator_and_errors(tmp_path):
    rows = []
    for i in range(6):
        path = _img(tmp_path / "jpg" / f"{i}.jpg", NAMES[i])
        rows.append([_caption(NAMES[i], i) + ', "quoted", with commas', str(path)])  # absolute paths
    tsv = _write_csv(tmp_path / "pairs.tsv", ["caption", "image"], rows, delimiter="\t")
    dm = _csv_dm(tsv, img_key="image", caption_key="caption", val_fraction=0.5)
    dm.setup()
    items = [dm.val_set[i] for i in range(len(dm.val_set))]
    assert len(items) == 3 and all(c.endswith('"quoted", with commas') for _, c in items)
    _assert_paired([x for x, _ in items], [c for _, c in items])

    txt = tmp_path / "pairs.txt"
    txt.write_text(tsv.read_text())
    with pytest.raises(ValueError, match="data.separator"):
        _csv_dm(txt, img_key="image", caption_key="caption")
    dm = _csv_dm(txt, img_key="image", caption_key="caption", separator="\t", val_fraction=0.5)
    dm.setup()
    assert len(dm.records["train"]) == 3
    with pytest.raises(ValueError, match=r"no column data.img_key='filepath'.*\['caption', 'image'\]"):
        _csv_dm(tsv, val_fraction=0.5).setup()
    with pytest.raises(FileNotFoundError, match="data.train_file .*nope.csv"):
        _csv_dm(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="val_fraction"):
        _csv_dm(tsv, val_fraction=0.0)
    with pytest.raises(ValueError, match="valid choices"):
        _csv_dm(tsv, eval_pairs="some")


def test_splits_by_image_deterministic_and_disjoint(tmp_path):
    train_file = _images_csv(tmp_path, 20, captions_per_image=3)
    split = lambda dm: {s: _images_of(dm.records[s]) for s in ("train", "val", "test")}
    a, b, c = (_csv_dm(train_file, seed=s, val_fraction=0.2, test_fraction=0.1) for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.setup()
    sa = split(a)
    assert [len(sa[s]) for s in ("train", "val", "test")] == [14, 4, 2]
    assert not (sa["train"] & sa["val"] or sa["train"] & sa["test"] or sa["val"] & sa["test"])
    for s in ("train", "val", "test"):  # every caption of an image stays with it
        assert len(a.records[s]) == 3 * len(sa[s])
    assert split(b) == sa and split(c)["val"] != sa["val"]
    assert len(a.val_set) == 4 and len(a.test_set) == 2  # eval_pairs="first": one pair per image
    assert a.val_set.dataset.samples == [(r.image, r.caption) for r in a.records["val"][::3]]  # image-major
    assert not any(", take" in c for _, c in a.val_set.dataset.samples)  # each image's first caption
    all_pairs = _csv_dm(train_file, val_fraction=0.2, eval_pairs="all")
    all_pairs.setup()
    assert len(all_pairs.val_set) == 12

    val_file = _images_csv(tmp_path / "v", 3, name="val.csv")
    dm = _csv_dm(train_file, val_file=val_file, val_fraction=0.0)  # a val source needs no fraction
    dm.setup()
    assert len(_images_of(dm.records["train"])) == 20 and len(dm.val_set) == 3
    assert all("/v/images/" in r.image for r in dm.records["val"]) and dm.test_set is dm.val_set


def test_unreadable_images_skipped_counted_or_strict(tmp_path):
    train_file = _images_csv(tmp_path, 8)
    (tmp_path / "images" / "bad.png").write_bytes(b"<html>not an image</html>")
    with open(train_file, "a", newline="") as f:
        csv.writer(f).writerows([["images/bad.png", _caption("red", 98), "x"],
                                 ["images/missing.png", _caption("red", 99), "x"]])
    with pytest.warns(UserWarning, match="bad.png") as rec:
        dm = _csv_dm(train_file, val_fraction=0.25, max_bad_fraction=0.5)
        dm.setup()
    msgs = [str(w.message) for w in rec if "unreadable" in str(w.message)]
    assert len(msgs) == 1 and "missing.png" in msgs[0] and "skipped 2" in msgs[0]
    assert dm.num_skipped == 2 and sorted(Path(p).name for p in dm.skipped_files) == ["bad.png", "missing.png"]
    assert sum(len(dm.records[s]) for s in ("train", "val")) == 8
    with pytest.raises(UnreadableImageError, match="bad.png"):
        _csv_dm(train_file, val_fraction=0.25, strict=True).setup()

    # header fine, pixels cut: caught at load time, replaced by the next pair (image and caption together)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), RGB["blue"]).save(buf, format="PNG", compress_level=0)
    (tmp_path / "images" / "trunc.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    val_file = _write_csv(tmp_path / "val.csv", ["filepath", "title"],
                          [["images/0.png", _caption("red", 0)], ["images/trunc.png", _caption("blue", 50)],
                           ["images/2.png", _caption("blue", 2)]])
    dm = _csv_dm(_images_csv(tmp_path, 8), val_file=val_file, max_bad_fraction=0.5)
    dm.setup()
    with pytest.warns(UserWarning, match="trunc.png"):
        x, caption = dm.val_set[1]
    assert caption == _caption("blue", 2) and dm.val_set.dataset.load_failures[0].endswith("trunc.png")
    _assert_paired([x], [caption])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm.val_set[1]  # reported once
    strict = _csv_dm(_images_csv(tmp_path, 8), val_file=val_file, strict=True)
    strict.setup()
    with pytest.raises(UnreadableImageError, match="trunc.png"):
        strict.val_set[1]


# -- WebDataset -------------------------------------------------------------------------------------


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _image_bytes(colour: str, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 20), RGB[colour]).save(buf, format=fmt, quality=95)
    return buf.getvalue()


def _shard(path: Path, indices, extra=()) -> Path:
    fmts = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
    with tarfile.open(path, "w") as tar:
        for i in indices:
            ext = list(fmts)[i % 3]
            _add(tar, f"{i:06d}.{ext}", _image_bytes(NAMES[i % 8], fmts[ext]))
            _add(tar, f"{i:06d}.txt", _caption(NAMES[i % 8], i).encode())
        for name, data in extra:
            _add(tar, name, data)
    return path


def test_expand_braces():
    assert expand_braces("d/s-{000..002}.tar") == ["d/s-000.tar", "d/s-001.tar", "d/s-002.tar"]
    assert expand_braces("{a,b}-{8..10}") == ["a-8", "a-9", "a-10", "b-8", "b-9", "b-10"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(ValueError, match="unsupported brace"):
        expand_braces("s-{x}.tar")


def test_webdataset_shards(tmp_path):
    _shard(tmp_path / "shard-000000.tar", range(6), extra=[("000099.jpg", _image_bytes("red", "JPEG")),
                                                           ("README", b"no extension: ignored")])
    _shard(tmp_path / "shard-000001.tar", range(6, 12), extra=[("000050.jpg", b"corrupt")
                                                               , ("000050.txt", b"a photo of a red thing")])
    pattern = str(tmp_path / "shard-{000000..000001}.tar")
    with pytest.warns(UserWarning, match="000099") as rec:
        dm = WebDatasetCaptionsDataModule(shards=pattern, image_size=S, batch_size=4, val_fraction=0.25,
                                          max_bad_fraction=0.5)
        dm.setup()
    msgs = [str(w.message) for w in rec if "skipped" in str(w.message)]
    assert len(msgs) == 1 and "shard-000001.tar:000050.jpg" in msgs[0] and dm.num_skipped == 2
    assert (len(dm.records["train"]), len(dm.records["val"])) == (9, 3)
    assert all(isinstance(r.image, TarMember) for r in dm.records["train"])
    for batch in dm.train_dataloader():
        _assert_batch(dm, batch, 4)
    _assert_batch(dm, next(iter(dm.val_dataloader())), 3)
    same = WebDatasetCaptionsDataModule(shards=[str(tmp_path / "shard-000000.tar"), str(tmp_path / "shard-000001.tar")],
                                        image_size=S, val_fraction=0.25, max_bad_fraction=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        same.setup()
    assert same.records == dm.records

    with pytest.raises(FileNotFoundError, match="shard-000002.tar"):
        WebDatasetCaptionsDataModule(shards=str(tmp_path / "shard-{000000..000002}.tar"))
    with pytest.raises(ValueError, match="000099.*no caption"):
        WebDatasetCaptionsDataModule(shards=pattern, strict=True).setup()
    with tarfile.open(tmp_path / "gz.tar", "w:gz") as tar:
        _add(tar, "0.txt", b"a caption")
    with pytest.raises(ValueError, match="uncompressed"):
        WebDatasetCaptionsDataModule(shards=str(tmp_path / "gz.tar")).setup()

    # several captions per image: one per line with caption_lines, else a warning suggests it
    with tarfile.open(tmp_path / "multi.tar", "w") as tar:
        for i in range(4):
            _add(tar, f"{i}.png", _image_bytes(NAMES[i], "PNG"))
            _add(tar, f"{i}.txt", "\n".join(_caption(NAMES[i], i, n) for n in (1, 2)).encode())
    with pytest.warns(UserWarning, match="caption_lines=true"):
        WebDatasetCaptionsDataModule(shards=str(tmp_path / "multi.tar"), val_fraction=0.25).setup()
    dm = WebDatasetCaptionsDataModule(shards=str(tmp_path / "multi.tar"), image_size=S, val_fraction=0.25,
                                      caption_lines=True)
    dm.setup()
    assert len(dm.records["train"]) == 6 and len(dm.retrieval_targets("val").captions) == 2
    _assert_paired([dm.train_set[i][0] for i in range(6)], [dm.train_set[i][1] for i in range(6)])


# -- COCO -------------------------------------------------------------------------------------------


def _coco(folder: Path, n_images: int, counts=None, start_id=100) -> tuple[Path, Path, dict]:
    """COCO layout: folder/images/<file> and folder/captions.json; annotations interleaved across images.
    Returns the json, the image folder and {file_name: [captions]}."""
    images, annotations, expected = [], [], {}
    counts = counts or [5] * n_images
    for k in range(n_images):
        name = f"{k:012d}.jpg"
        _img(folder / "images" / name, NAMES[k % 8])
        images.append({"id": start_id + k, "file_name": name, "height": 20, "width": 24})
        expected[name] = [_caption(NAMES[k % 8], k, c + 1) for c in range(counts[k])]
    aid = 0
    for c in range(max(counts)):  # caption-major: one image's captions are spread through the file
        for k in range(n_images):
            if c < counts[k]:
                caption = expected[images[k]["file_name"]][c] + " \n"  # COCO captions carry stray whitespace
                annotations.append({"id": aid, "image_id": start_id + k, "caption": caption})
                aid += 1
    path = folder / "captions.json"
    path.write_text(json.dumps({"info": {}, "images": images, "annotations": annotations}))
    return path, folder / "images", {k: v for k, v in expected.items() if v}


def test_coco_pairs_and_retrieval_targets(tmp_path):
    train_json, train_images, train_caps = _coco(tmp_path / "train", 6, counts=[5, 5, 3, 0, 5, 6])
    val_json, val_images, val_caps = _coco(tmp_path / "val", 4, counts=[5, 5, 5, 2], start_id=7)
    dm = CocoCaptionsDataModule(train_annotations=train_json, train_images=train_images, val_annotations=val_json,
                                val_images=val_images, image_size=S, batch_size=4)
    dm.setup()
    assert len(dm.train_set) == 24  # one pair per caption; the image without captions is left out
    assert sorted(c for _, c in dm.train_set.dataset.samples) == sorted(sum(train_caps.values(), []))
    assert len(dm.val_set) == 4 and dm.test_set is dm.val_set
    for batch in dm.train_dataloader():
        _assert_batch(dm, batch, 4)

    t = dm.retrieval_targets("val")
    assert [Path(p).name for p in t.images] == sorted(val_caps)
    assert t.captions == sum((val_caps[Path(p).name] for p in t.images), [])  # image-major, file order
    assert t.text_to_image.tolist() == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 2
    assert t.image_to_text == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14], [15, 16]]
    batches = list(dm.retrieval_dataloader("val"))
    assert torch.cat([b["index"] for b in batches]).tolist() == [0, 1, 2, 3]
    images = torch.cat([b["image"] for b in batches])
    assert [c for b in batches for c in b["captions"]] == [[t.captions[i] for i in idx] for idx in t.image_to_text]
    _assert_paired(images, [t.captions[idx[0]] for idx in t.image_to_text])
    # colour one-hots as stand-in embeddings: every caption finds its image and vice versa
    onehot = lambda names: torch.nn.functional.one_hot(torch.tensor([NAMES.index(n) for n in names]), 8).float()
    img_feats = onehot([_COLOUR.search(t.captions[idx[0]]).group(1) for idx in t.image_to_text])
    txt_feats = onehot([_COLOUR.search(c).group(1) for c in t.captions])
    recall = retrieval_recall(img_feats, txt_feats, t.text_to_image, ks=(1,))
    assert recall == {"i2t_R@1": 1.0, "t2i_R@1": 1.0}

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="not a COCO captions file"):
        CocoCaptionsDataModule(train_annotations=bad, train_images=train_images).setup()
    with pytest.raises(ValueError, match="data.val_annotations and data.val_images"):
        CocoCaptionsDataModule(train_annotations=train_json, train_images=train_images, val_annotations=val_json)


# -- labelled tables: class names and zero-shot --------------------------------------------------


def test_labelled_tree_to_csv_gives_class_names_and_zeroshot_loader(tmp_path, capsys):
    script = _load_script()
    classes = {"red": "red", "green": "green", "dark_blue": "blue"}  # folder -> colour
    for folder, colour in classes.items():
        for i in range(4):
            _img(tmp_path / "tree" / folder / f"{i}.png", colour)
    args = ["labelled", "--root", str(tmp_path / "tree"), "--test-fraction", "0.25", "--seed", "3"]
    assert script.main(args + ["--out-dir", str(tmp_path / "out")]) == 0
    assert "data.label_key=label" in capsys.readouterr().out
    script.main(args + ["--out-dir", str(tmp_path / "out2")])
    for name in ("train.csv", "test.csv"):  # deterministic
        assert (tmp_path / "out" / name).read_text() == (tmp_path / "out2" / name).read_text()
    train_rows = list(csv.DictReader(open(tmp_path / "out" / "train.csv")))
    test_rows = list(csv.DictReader(open(tmp_path / "out" / "test.csv")))
    assert (len(train_rows), len(test_rows)) == (9, 3)
    assert {r["label"] for r in test_rows} == {"red", "green", "dark blue"}  # stratified: one per class
    assert not {r["filepath"] for r in train_rows} & {r["filepath"] for r in test_rows}
    assert all(r["title"] == f"a photo of a {r['label']}" for r in train_rows + test_rows)

    dm = _csv_dm(tmp_path / "out" / "train.csv", test_file=tmp_path / "out" / "test.csv", label_key="label",
                 val_fraction=0.34, zeroshot_templates=["a photo of a {}"])
    assert dm.class_names == ["dark blue", "green", "red"] and dm.num_classes == 3  # known before setup
    dm.setup()
    assert {r.label for r in dm.records["val"]} == {"dark blue", "green", "red"}  # held out per class
    batches = list(dm.zeroshot_dataloader("test"))
    assert set(batches[0]) == {"image", "label"} and batches[0]["label"].dtype == torch.int64
    labels = torch.cat([b["label"] for b in batches])
    assert sorted(labels.tolist()) == [0, 1, 2]
    colour = {"dark blue": "blue", "green": "green", "red": "red"}
    _assert_paired(torch.cat([b["image"] for b in batches]), [colour[dm.class_names[y]] for y in labels])
    assert sum(len(b["label"]) for b in dm.zeroshot_dataloader("val")) == 3
    batch = next(iter(dm.train_dataloader()))
    assert all(c.startswith("a photo of a ") for c in batch["caption"])
    with pytest.raises(ValueError, match="label_key"):
        _csv_dm(tmp_path / "out" / "train.csv", val_fraction=0.34).zeroshot_dataloader()


# -- prepare_captions.py: outputs load back --------------------------------------------------------


def test_prepare_coco_to_csv_and_shards(tmp_path, capsys, train_cfg):
    script = _load_script()
    ann, images, caps = _coco(tmp_path / "coco", 5, counts=[5, 5, 4, 5, 5])
    out = tmp_path / "out"
    assert script.main(["coco", "--annotations", str(ann), "--images", str(images), "--out-dir", str(out),
                        "--name", "train", "--format", "both", "--shard-size", "2"]) == 0
    printed = capsys.readouterr().out
    assert "data.caption_lines=true" in printed and "train-{000000..000002}.tar" in printed
    # the printed commands compose and read what was written
    csv_dm, wds_dm = (instantiate(train_cfg(*o).data, _convert_="all") for o in _printed_overrides(printed))
    assert type(csv_dm) is CsvCaptionsDataModule and csv_dm.files["train"] == out / "train.csv"
    assert type(wds_dm) is WebDatasetCaptionsDataModule and len(wds_dm.shards["train"]) == 3 and wds_dm.caption_lines
    assert sorted(p.name for p in out.iterdir()) == ["train-000000.tar", "train-000001.tar", "train-000002.tar",
                                                      "train.csv"]  # no temporary files left
    from_csv = _csv_dm(out / "train.csv", val_fraction=0.2)
    from_wds = WebDatasetCaptionsDataModule(shards=str(out / "train-{000000..000002}.tar"), caption_lines=True,
                                            image_size=S, batch_size=4, val_fraction=0.2)
    all_captions = sorted(sum(caps.values(), []))
    for dm in (from_csv, from_wds):
        dm.setup()
        recs = dm.records["train"] + dm.records["val"]
        assert sorted(r.caption for r in recs) == all_captions
        assert len(_images_of(dm.records["val"])) == 1
        assert sorted(len(i) for i in dm.retrieval_targets("val").image_to_text + dm.retrieval_targets(
            "train").image_to_text) == [4, 5, 5, 5, 5]
        _assert_batch(dm, next(iter(dm.train_dataloader())), 4)


def test_prepare_flickr30k(tmp_path, capsys):
    script = _load_script()
    root = tmp_path / "flickr30k"
    lines = []
    for k in range(4):
        _img(root / "flickr30k-images" / f"{1000 + k}.jpg", NAMES[k])
        lines += [f"{1000 + k}.jpg#{n}\t{_caption(NAMES[k], k, n + 1)}" for n in range(5)]
    lines += ["9999.jpg#0\ta photo of a red square number 9999", "garbage line without tab"]
    (root / "results_20130124.token").write_text("\n".join(lines) + "\n")
    assert script.main(["flickr30k", "--root", str(root), "--out-dir", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "1 malformed line" in err and "9999.jpg" in err
    dm = _csv_dm(tmp_path / "out" / "flickr30k.csv", val_fraction=0.25)
    dm.setup()
    t = dm.retrieval_targets("val")
    assert len(t.images) == 1 and len(t.captions) == 5 and len(dm.records["train"]) == 15
    _assert_paired([dm.val_set[0][0]], t.captions)

    # Kaggle's results.csv layout parses to the same pairs
    pipe = root / "results.csv"
    pipe.write_text("image_name| comment_number| comment\n" + "".join(
        f"{ln.split('#')[0]}| {ln.split('#')[1][0]}| {ln.split(chr(9))[1]}\n" for ln in lines[:20]))
    token = list(script.parse_flickr_captions(root / "results_20130124.token"))
    assert list(script.parse_flickr_captions(pipe)) == token[:20]


def test_prepare_cc3m(tmp_path, capsys):
    script = _load_script()
    tsv = tmp_path / "Train_GCC-training.tsv"
    tsv.write_text("".join(f'{_caption(NAMES[i], i)} "quoted\thttp://example.com/{i}.jpg\n' for i in range(6)))
    _img(tmp_path / "images" / "00000000.jpg", NAMES[0])
    _img(tmp_path / "images" / "00000" / "000000002.png", NAMES[2])
    _img(tmp_path / "images" / "5.jpg", NAMES[5])
    assert script.main(["cc3m", "--tsv", str(tsv), "--images", str(tmp_path / "images"), "--out-dir",
                        str(tmp_path / "out"), "--format", "both"]) == 0
    assert "3 of the 6 rows" in capsys.readouterr().out
    dm = WebDatasetCaptionsDataModule(shards=str(tmp_path / "out" / "Train_GCC-training-000000.tar"),
                                      image_size=S, val_fraction=0.34)
    dm.setup()
    csv_dm = _csv_dm(tmp_path / "out" / "Train_GCC-training.csv", val_fraction=0.34)
    csv_dm.setup()
    for d in (dm, csv_dm):
        recs = d.records["train"] + d.records["val"]
        assert sorted(r.caption for r in recs) == sorted(_caption(NAMES[i], i) + ' "quoted' for i in (0, 2, 5))
        items = [d.val_set[0]] + [d.train_set[i] for i in range(2)]
        _assert_paired([x for x, _ in items], [c for _, c in items])


# -- Hydra configs ----------------------------------------------------------------------------------


def test_configs_instantiate(train_cfg, tmp_path):
    train_file = _images_csv(tmp_path / "csv", 8)
    _shard(tmp_path / "s-000000.tar", range(4))
    ann, images, _ = _coco(tmp_path / "coco", 4)
    cases = {
        "csv": (CsvCaptionsDataModule, [f"data.train_file={train_file}"]),
        "webdataset": (WebDatasetCaptionsDataModule, [f'data.shards="{tmp_path}/s-{{000000..000000}}.tar"']),
        "coco_captions": (CocoCaptionsDataModule, [f"data.train_annotations={ann}", f"data.train_images={images}"]),
    }
    for name, (cls, overrides) in cases.items():
        cfg = train_cfg("model=clip", f"data={name}", *overrides)
        dm = instantiate(cfg.data, _convert_="all")
        assert type(dm) is cls and dm.seed == cfg.seed and dm.image_size == 224 and dm.context_length == 77
        assert dm.mean == pytest.approx(CLIP_MEAN) and dm.crop_scale == (0.9, 1.0)
    cfg = train_cfg("model=clip", "data=csv")
    with pytest.raises(Exception, match="train_file"):
        instantiate(cfg.data)


def test_clip_trains_on_a_labelled_csv(train_cfg, tmp_path, capsys):
    """model=clip + data=csv with a label column: one fast_dev_run step, retrieval and zero-shot metrics."""
    from mmzoo.training import train

    script = _load_script()
    for folder in ("red", "green", "blue"):
        for i in range(8):
            _img(tmp_path / "tree" / folder / f"{i}.png", folder)
    script.main(["labelled", "--root", str(tmp_path / "tree"), "--out-dir", str(tmp_path / "data")])
    (printed,) = _printed_overrides(capsys.readouterr().out)  # the command the script suggests
    cfg = train_cfg(*printed, "model.name=clip_nano", "debug=fdr", "data.val_fraction=0.25", "data.image_size=32",
                    "data.context_length=16", "data.batch_size=4", "data.num_workers=0")
    assert cfg.data.zeroshot_templates == ["a photo of a {}"]
    metrics = train(cfg)
    assert metrics["global_step"] == 1
    for key in ("test/zeroshot_top1", "test/i2t_R@1"):
        assert 0.0 <= metrics[key] <= 1.0, key
