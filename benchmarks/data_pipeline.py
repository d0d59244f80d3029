"""Samples/s of every data set config (``configs/data/*.yaml``) at its default settings, against how many
samples/s its default model consumes in training on the same machine.

Data sets are discovered from ``configs/data/``: built-in ones are instantiated as they are; file
readers (``???`` keys) get small files written first by a writer in ``WRITERS`` (one function per
config; a new reader without a writer is reported, not skipped silently). The default model of a data
set is the model config whose ``override /data`` names it (else the one of the built-in data set of the
same kind, ``SAME_KIND``, or of the data config it extends; else vit / clip), trained with the data set's
batch size: its rate is forward + backward + AdamW steps per second on real batches.

    python benchmarks/data_pipeline.py                    # every config, 2 CPU threads
    python benchmarks/data_pipeline.py --only shapes csv --batches 20
"""
from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import re
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402

import mmzoo  # noqa: E402
from mmzoo.training import build  # noqa: E402

WORDS = ["red", "green", "blue", "yellow"]


def _png(path: Path, i: int, size: int = 96) -> None:
    rng = np.random.default_rng(i)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def _jpeg_bytes(i: int, size: int = 96) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(i).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def write_image_folder(d: Path, n: int) -> list[str]:
    for i in range(n):
        _png(d / "train" / WORDS[i % 4] / f"{i}.png", i)
    return [f"data.root={d}"]


def write_csv(d: Path, n: int) -> list[str]:
    rows = ["filepath,title"]
    for i in range(n):
        _png(d / "img" / f"{i}.png", i)
        rows.append(f"img/{i}.png,a photo of something {WORDS[i % 4]}")
    (d / "train.csv").write_text("\n".join(rows) + "\n")
    return [f"data.train_file={d / 'train.csv'}"]


def write_webdataset(d: Path, n: int) -> list[str]:
    d.mkdir(parents=True, exist_ok=True)
    with tarfile.open(d / "shard-000000.tar", "w") as tar:
        for i in range(n):
            for ext, data in (("jpg", _jpeg_bytes(i)), ("txt", f"a photo of something {WORDS[i % 4]}".encode())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return [f"data.shards={d / 'shard-000000.tar'}"]


def write_coco_captions(d: Path, n: int) -> list[str]:
    images, anns = [], []
    for i in range(n):
        _png(d / "train2017" / f"{i:012d}.png", i)
        images.append({"id": i, "file_name": f"{i:012d}.png", "width": 96, "height": 96})
        anns += [{"id": 5 * i + k, "image_id": i, "caption": f"a {WORDS[(i + k) % 4]} thing"} for k in range(5)]
    (d / "captions_train2017.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return [f"data.train_annotations={d / 'captions_train2017.json'}", f"data.train_images={d / 'train2017'}"]


def write_cifar10(d: Path, n: int) -> list[str]:
    folder = d / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, f)
    # val_size is not a key of configs/data/cifar10.yaml (the data module default is 5000): append it with +
    return [f"data.root={d}", "+data.val_size=100"]


def write_audio_folder(d: Path, n: int) -> list[str]:
    """Speech Commands layout ``root/<class>/<clip>.wav``: 1 s of 16 kHz tone + noise per clip, int16 PCM."""
    import soundfile as sf

    t = np.arange(16000) / 16000
    for i in range(n):
        rng = np.random.default_rng(i)
        tone = np.sin(2 * np.pi * (200 + 100 * (i % 4) + rng.uniform(-20, 20)) * t)  # class-dependent pitch
        wav = 0.4 * tone + 0.05 * rng.normal(size=t.size)
        path = d / WORDS[i % 4] / f"{i:05d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), wav.astype(np.float32), 16000, subtype="PCM_16")
    return [f"data.root={d}"]


def _cloud(i: int, n: int) -> np.ndarray:
    """n points on a seeded, stretched, off-centre ellipsoid with noise (float32, (n, 3))."""
    rng = np.random.default_rng(i)
    p = rng.normal(size=(n, 3))
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    p = p * rng.uniform(0.3, 1.5, 3) + rng.normal(scale=0.01, size=(n, 3)) + rng.uniform(-2, 2, 3)
    return p.astype(np.float32)


# the point readers load a whole split into memory at setup (not timed) and reduce every cloud to
# data.num_points there; the timed loader only indexes that tensor, so files smaller than the real ones (10k
# points in modelnet40_normal_resampled) measure the same and write much faster. 2048 > num_points=1024
# keeps the FPS reduction of the default settings.
FILE_POINTS = 2048
MODELNET_CLASSES = ["airplane", "chair", "night_stand", "vase"]  # night_stand: the class name holds a "_"


def write_modelnet40(d: Path, n: int) -> list[str]:
    """``modelnet40_normal_resampled/<class>/<class>_0001.txt`` (x,y,z,nx,ny,nz lines), the class list
    ``modelnet40_shape_names.txt`` and the split lists ``modelnet40_{train,test}.txt`` (4 of 5 shapes train)."""
    root = d / "modelnet40_normal_resampled"
    splits: dict[str, list[str]] = {"train": [], "test": []}
    for i in range(n):
        c = MODELNET_CLASSES[i % len(MODELNET_CLASSES)]
        name = f"{c}_{i // len(MODELNET_CLASSES) + 1:04d}"
        pts = _cloud(i, FILE_POINTS)
        normals = pts / np.linalg.norm(pts, axis=1, keepdims=True)
        (root / c).mkdir(parents=True, exist_ok=True)
        np.savetxt(root / c / f"{name}.txt", np.concatenate([pts, normals], 1), fmt="%.6f", delimiter=",")
        splits["test" if i % 5 == 4 else "train"].append(name)
    (root / "modelnet40_shape_names.txt").write_text("\n".join(MODELNET_CLASSES) + "\n")
    for split, names in splits.items():
        (root / f"modelnet40_{split}.txt").write_text("\n".join(names) + "\n")
    return [f"data.root={d}"]  # format: txt, the config's default


def write_point_folder(d: Path, n: int) -> list[str]:
    """``root/train/<class>/*.npy`` (N, 3) point sets; no val/ or test/: data.val_fraction is held out."""
    for i in range(n):
        path = d / "train" / WORDS[i % 4] / f"{i:05d}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, _cloud(i, FILE_POINTS))
    return [f"data.root={d}"]


SYNSETS = ["02691156", "02958343", "03001627", "04379243"]  # airplane, car, chair, table


def write_shapenet55(d: Path, n: int) -> list[str]:
    """ShapeNet-55: ``shapenet_pc/<synset>-<model>.npy`` (8192 points each, as the real files) listed in
    ``ShapeNet-55/{train,test}.txt`` (4 of 5 train)."""
    (d / "shapenet_pc").mkdir(parents=True, exist_ok=True)
    (d / "ShapeNet-55").mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[str]] = {"train": [], "test": []}
    for i in range(n):
        name = f"{SYNSETS[i % len(SYNSETS)]}-{i:08x}.npy"
        np.save(d / "shapenet_pc" / name, _cloud(i, 8192))
        splits["test" if i % 5 == 4 else "train"].append(name)
    for split, names in splits.items():
        (d / "ShapeNet-55" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return [f"data.root={d}"]


TEXT_WORDS = ("the of and a to in is was he for it with as his on be at by had not are but from or have an "
              "they which one you were her all she there would their we him been has when who will more no "
              "if out so said what up its about into than them can only other new some could time these two "
              "may then do first any my now such like our over man me even most made after also did many "
              "before must through back years where much your way well down should because each just those "
              "people how too little state good very make world still own see men work long get here "
              "between both life being under never day same another know while last might great old year "
              "off come since against go came right used take three house river mountain garden letter "
              "window morning evening music number question answer market village winter summer language "
              "history system").split()


_WORD_P = 1 / (np.arange(len(TEXT_WORDS)) + 8.0)  # Zipf-like: frequent words first, a long tail
_WORD_P /= _WORD_P.sum()


def _sentence(rng: np.random.Generator) -> str:
    words = list(rng.choice(TEXT_WORDS, int(rng.integers(6, 18)), p=_WORD_P))
    if rng.random() < 0.3:
        words.insert(int(rng.integers(len(words))), str(int(rng.integers(1, 2000))))
    s = " ".join(words)
    return s[0].upper() + s[1:] + (". " if rng.random() < 0.85 else "? ")


def write_text_files(d: Path, n: int) -> list[str]:
    """``root/part<k>/<i>.txt``: 3 paragraphs of 5 English-like sentences (common words drawn Zipf-like,
    some numbers) per file, ~0.4 MB for n=512: enough for the BPE and for val/test blocks."""
    for i in range(n):
        rng = np.random.default_rng(i)
        paras = ["".join(_sentence(rng) for _ in range(5)).strip() for _ in range(3)]
        path = d / f"part{i % 8}" / f"{i:05d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n\n".join(paras) + "\n", encoding="utf-8")
    return [f"data.root={d}"]


def write_video(d: Path, n: int) -> list[str]:
    """``root/train/<class>/<i>.mp4``: 40 frames (a clip of num_frames=8 x sampling_rate=4 spans 29) of 64x64
    mpeg4, a bright square moving over a coloured gradient (512 videos: ~3 s to write)."""
    import av

    yy, xx = np.mgrid[:64, :64]
    for i in range(n):
        rng = np.random.default_rng(i)
        path = d / "train" / WORDS[i % 4] / f"{i:05d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        blue = np.full_like(xx, int(rng.integers(256)))
        base = np.stack([xx * 4, yy * 4, blue], -1).clip(0, 255).astype(np.uint8)
        (x0, y0), (vx, vy) = rng.integers(0, 48, 2), rng.integers(-2, 3, 2)
        with av.open(str(path), "w") as c:
            s = c.add_stream("mpeg4", rate=25)
            s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
            for t in range(40):
                img = base.copy()
                x, y = (x0 + vx * t) % 48, (y0 + vy * t) % 48
                img[y:y + 16, x:x + 16] = 255
                for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(pkt)
            for pkt in s.encode():
                c.mux(pkt)
    return [f"data.root={d}"]


# config name -> writer of small files in the format it reads; returns the overrides that point at them
WRITERS: dict[str, Callable[[Path, int], list[str]]] = {
    "image_folder": write_image_folder,
    "csv": write_csv,
    "webdataset": write_webdataset,
    "coco_captions": write_coco_captions,
    "cifar10": write_cifar10,
    "audio_folder": write_audio_folder,
    "modelnet40": write_modelnet40,
    "point_folder": write_point_folder,
    "shapenet55": write_shapenet55,
    "text_files": write_text_files,
    "video": write_video,
}


def default_models() -> dict[str, str]:
    """data config -> the model config that picks it (``override /data: NAME``)."""
    out = {}
    for path in sorted((ROOT / "configs" / "model").glob("*.yaml")):
        m = re.search(r"override /data:\s*(\w+)", path.read_text())
        if m:
            out.setdefault(m.group(1), path.stem)
    return out


# file readers no model config picks: measured against the default model of the built-in data set that gives
# batches of the same kind (a ViT cannot train on audio, clips or point clouds)
SAME_KIND = {"audio_folder": "synth_speech", "video": "moving_shapes", "modelnet40": "procedural_shapes",
             "point_folder": "procedural_shapes", "shapenet55": "procedural_shapes"}


def model_for(data: str, models: dict[str, str], fallback_image: str, fallback_text: str) -> str:
    if data in models:
        return models[data]
    text = (ROOT / "configs" / "data" / f"{data}.yaml").read_text()
    parent = re.search(r"^defaults:\s*\n\s*-\s*(\w+)\s*$", text, re.M)  # text_files extends stdlib_docs
    like = SAME_KIND.get(data) or (parent.group(1) if parent else None)
    if like is not None and like in models:
        return models[like]
    return fallback_text if "tokenizer" in text else fallback_image


def batch_len(b) -> int:
    """Samples in a batch: the leading size of its first tensor (dict batches, ``(x, y)``, audio's
    ``((wav, lengths), y)``)."""
    while not torch.is_tensor(b):
        b = next(iter(b.values())) if isinstance(b, dict) else b[0]
    return len(b)


def measure(data: str, model: str, extra: list[str], args: argparse.Namespace) -> dict[str, float]:
    overrides = [f"model={model}", f"data={data}", *extra, "trainer.accelerator=cpu",
                 "paths.output_dir=/tmp/mmzoo_data_bench"]
    if model == "point_bert" and not any(o.startswith("task.dvae_checkpoint=") for o in extra):
        # Point-BERT pre-training reads its frozen dVAE tokenizer from task.dvae_checkpoint (`train.py` trains
        # one first, as a stage of its own); an untrained tokenizer of the default preset costs the same per step
        from plain_loop import save_model_checkpoint

        dvae = save_model_checkpoint(mmzoo.create_model("point_bert_dvae_tiny"), Path(tempfile.mkdtemp()) / "dvae.ckpt")
        overrides.append(f"task.dvae_checkpoint={dvae}")
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    dm, task = build(cfg)
    dm.setup("fit")
    if hasattr(task, "configure_from_data"):
        # the language-modelling task reads the tokenizer's special-token ids from the data module in
        # setup(), through the trainer; there is no trainer here
        task.configure_from_data(dm)
    loader = dm.train_dataloader()
    it = iter(loader)
    batches = [next(it)]  # first batch: worker start-up
    n, t0 = 0, time.perf_counter()
    for _ in range(args.batches):
        try:
            b = next(it)
        except StopIteration:
            break
        batches.append(b)
        n += batch_len(b)
    data_rate = n / max(time.perf_counter() - t0, 1e-9)
    del it
    # consumption: training steps of the default model on the batches just read
    opt = torch.optim.AdamW(task.parameters(), lr=1e-4)
    task.train()
    task.log = lambda *a, **k: None  # no trainer attached: logging is a no-op here
    task.check_loss = lambda loss: loss
    times, seen = [], 0
    for i, b in enumerate(batches[: args.steps + 1]):
        t = time.perf_counter()
        loss = task.training_step(b, i)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i > 0:  # first step: warm-up
            times.append(time.perf_counter() - t)
            seen += batch_len(b)
    model_rate = seen / max(sum(times), 1e-9)
    return {"data": data_rate, "model": model_rate, "batch_size": cfg.data.batch_size,
            "num_workers": cfg.data.get("num_workers", 0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", help="data config names (default: all of configs/data)")
    p.add_argument("--batches", type=int, default=10, help="timed batches per data set")
    p.add_argument("--steps", type=int, default=3, help="timed training steps of the default model")
    p.add_argument("--files", type=int, default=512, help="samples written for file readers")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    names = args.only or sorted(p.stem for p in (ROOT / "configs" / "data").glob("*.yaml"))
    models = default_models()
    print(f"# data pipeline vs default model, {args.threads} torch threads; load {os.getloadavg()[0]:.2f}")
    print(f"{'data':17s} {'model':11s} {'batch':>5s} {'workers':>7s} {'data samples/s':>15s} "
          f"{'model samples/s':>16s} {'data/model':>10s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            needs_files = "???" in (ROOT / "configs" / "data" / f"{name}.yaml").read_text() or name in WRITERS
            extra: list[str] = []
            if needs_files:
                if name not in WRITERS:
                    print(f"{name:17s} no writer in benchmarks/data_pipeline.py: WRITERS; not measured")
                    continue
                extra = WRITERS[name](Path(tmp) / name, args.files)
            model = model_for(name, models, "vit", "clip")
            try:
                r = measure(name, model, extra, args)
            except Exception as e:  # report and go on: one broken reader should not hide the others
                print(f"{name:17s} FAILED: {type(e).__name__}: {str(e)[:200]}")
                continue
            print(f"{name:17s} {model:11s} {r['batch_size']:5d} {r['num_workers']:7d} {r['data']:15.0f} "
                  f"{r['model']:16.0f} {r['data'] / r['model']:10.2f}", flush=True)
    print(f"# load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
