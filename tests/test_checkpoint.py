"""mmzoo.checkpoint: atomic writes; broken, foreign and hostile files (generated here: zero bytes, text, truncated
at several offsets, a zip that is not a checkpoint, a payload, foreign state dicts, safetensors, a config
bomb) get one sentence naming the file and what it is on every reading path; resuming checks the file,
warns about changed settings and removes what a crashed run left behind."""
from __future__ import annotations

import io
import logging
import os
import re
import resource
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

import mmzoo
from mmzoo import checkpoint as ckpt_lib
from mmzoo.checkpoint import CheckpointError
from mmzoo.cli import main as mmzoo_cli
from mmzoo.peft import load_adaptation
from mmzoo.tasks.checkpoint_io import AtomicCheckpointIO
from mmzoo.training import train

TINY = ["model=vit", "model.name=vit_nano_patch4_32", "data=digits", "data.batch_size=128"]


class Payload:
    """Unpickling this creates ``marker`` (a stand-in for any code a pickle can run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _dead_pid() -> int:
    for pid in range(4_194_303, 1, -1):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except OSError:
            continue
    raise RuntimeError("no free process id")


# -- writing ------------------------------------------------------------------------------------------------

def test_atomic_write_keeps_the_old_file_when_a_write_dies(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(ckpt_lib.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    ckpt_lib.save({"step": torch.tensor(1)}, path)
    assert len(synced) == 2  # the file, then its folder (the rename)

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt_lib.save({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no torn temp file left behind
    ckpt_lib.atomic_write_text(tmp_path / "m.json", "{}\n")
    assert (tmp_path / "m.json").read_text() == "{}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "m.json"]


# -- a corpus of broken files ---------------------------------------------------------------------------

def _corpus(d: Path, marker: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, the phrase its error must hold after the path)."""
    torch.manual_seed(0)
    model = mmzoo.create_model("vit_nano_patch4_32")
    good = d / "good.ckpt"
    torch.save(ckpt_lib.mmzoo_checkpoint(model), good)
    data = good.read_bytes()
    buf = io.BytesIO()
    torch.save(ckpt_lib.mmzoo_checkpoint(model), buf, _use_new_zipfile_serialization=False)
    legacy = buf.getvalue()
    files: dict[str, tuple[bytes, str]] = {
        "empty": (b"", r"is not a torch checkpoint: it is an empty file \(0 bytes\)"),
        "text": (b"step: 1000\nloss: 0.25\n", r"is not a torch checkpoint: it is a text file beginning 'step: 1000'"),
        "npy": (b"\x93NUMPY\x01\x00v\x00{'descr': '<f4'", r"is not a torch checkpoint: it is a NumPy \.npy array"),
        "lfs": (b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 1302\n", r"it is a Git LFS pointer"),
    }
    for off in (4, 64, len(data) // 3, len(data) // 2, len(data) - 22, len(data) - 1):
        files[f"zip_cut_{off}"] = (data[:off], r"is a torch checkpoint \(zip format\) that is truncated or damaged")
    for off in (1, 16, len(legacy) // 2, len(legacy) - 1):
        files[f"legacy_cut_{off}"] = (legacy[:off], r"is a torch checkpoint \(legacy pickle format\) that is truncated")
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("images/0.png", b"not really")
    files["zip_archive"] = (zbuf.getvalue(), r"is a zip archive of 1 files without data\.pkl, not a torch checkpoint")
    pbuf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(2)}, "note": Payload(marker)}, pbuf)
    files["payload"] = (pbuf.getvalue(), r"holds a Python object \(.*open\) that torch\.load\(weights_only=True\) refuses")
    lbuf = io.BytesIO()
    torch.save([torch.zeros(2)], lbuf)
    files["list"] = (lbuf.getvalue(), r"holds a list")
    out = {}
    for name, (content, phrase) in files.items():
        (d / f"{name}.ckpt").write_bytes(content)
        out[name] = (d / f"{name}.ckpt", phrase)
    return out


def _raises(fn, path: Path, phrase: str) -> str:
    with pytest.raises(CheckpointError) as info:
        fn(path)
    message = str(info.value)
    assert str(path) in message and len(message.splitlines()) == 1, message
    assert re.search(phrase, message), f"{path.name}: {message}"
    return message


def test_broken_files_get_one_sentence_on_every_reading_path(tmp_path, capsys):
    marker = tmp_path / "pwned"
    corpus = _corpus(tmp_path, marker)
    io_plugin = AtomicCheckpointIO()
    readers = {
        "load": ckpt_lib.load,
        "create_model": lambda p: mmzoo.create_model(pretrained=p),  # also finetune.from, teachers, zero-shot
        "create_model(name)": lambda p: mmzoo.create_model("vit_nano_patch4_32", pretrained=p),
        "resume": ckpt_lib.read_training_checkpoint,
        "lightning": io_plugin.load_checkpoint,
        "peft": load_adaptation,
    }
    for name, (path, phrase) in corpus.items():
        for reader, fn in readers.items():
            if name == "list" and reader in ("load", "peft"):
                continue  # a list is a readable torch file; only what it is used for is wrong
            _raises(fn, path, phrase)
        with pytest.raises(SystemExit) as info:  # `mmzoo info` / `mmzoo export`: one line, status 1
            mmzoo_cli(["info", str(path)])
        assert info.value.code == 1 and f"error: {path}" in capsys.readouterr().err
    assert not marker.exists()
    with pytest.raises(SystemExit):
        mmzoo_cli(["export", str(corpus["text"][0]), str(tmp_path / "out.safetensors")])
    assert not (tmp_path / "out.safetensors").exists()


def test_broken_files_through_the_command_lines(train_cfg, tmp_path):
    from mmzoo.generate import _load_lm
    from mmzoo.tasks.distill import DistillationTask
    from mmzoo.zeroshot import _load_model

    corpus = _corpus(tmp_path, tmp_path / "pwned")
    path, phrase = corpus["zip_cut_64"]
    _raises(lambda p: _load_lm("ckpt_path", str(p)), path, phrase)
    _raises(lambda p: _load_model(OmegaConf.create({"ckpt_path": str(p), "model_name": None})), path, phrase)
    student = mmzoo.create_model("vit_nano_patch4_32")
    _raises(lambda p: DistillationTask(student, teacher=str(p), num_classes=10), path, phrase)
    # train.py: checked before the data or the model are built
    _raises(lambda p: train(train_cfg(*TINY, f"ckpt_path={p}")), path, phrase)
    _raises(lambda p: train(train_cfg(*TINY, f"finetune.from={p}")), *corpus["text"])
    _raises(lambda p: train(train_cfg(*TINY, f"ckpt_path={p}")), tmp_path, r"is a folder: a run resumes from a checkpoint file")
    assert not list(tmp_path.glob("run/checkpoints/*"))


def test_foreign_and_weights_only_files(tmp_path):
    torch.manual_seed(0)
    model = mmzoo.create_model("vit_nano_patch4_32")
    sd = model.state_dict()
    timm_like = tmp_path / "timm_vit.pth"
    torch.save({k: v.clone() for k, v in sd.items()}, timm_like)
    hf_like = tmp_path / "pytorch_model.bin"
    torch.save({"vit.embeddings.cls_token": torch.zeros(1, 1, 64), "vit.encoder.layer.0.output.dense.weight":
                torch.zeros(64, 256)}, hf_like)
    exported = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(exported))
    mmzoo_file = tmp_path / "weights.ckpt"
    torch.save(ckpt_lib.mmzoo_checkpoint(model), mmzoo_file)
    no_arch = tmp_path / "no_arch.ckpt"
    torch.save({"mmzoo": {"model_name": "x", "config": {}}, "state_dict": ckpt_lib.add_lightning_prefix(sd)}, no_arch)
    weights_only = tmp_path / "weights_only.ckpt"
    torch.save({"pytorch-lightning_version": "2.6.0", "state_dict": ckpt_lib.add_lightning_prefix(sd),
                "mmzoo": ckpt_lib.model_metadata(model)}, weights_only)

    # create_model without a preset: a foreign file says it needs one (no KeyError 'arch')
    for path in (timm_like, hf_like, exported):
        with pytest.raises(ValueError, match=rf"{path} is a foreign checkpoint \(\d+ tensors.*needs the preset"):
            mmzoo.create_model(pretrained=path)
    # ... and with the preset it loads (the mmzoo layout is recognised as it is)
    assert torch.equal(mmzoo.create_model("vit_nano_patch4_32", pretrained=timm_like).head.weight, sd["head.weight"])
    _raises(lambda p: mmzoo.create_model(pretrained=p), no_arch, r"its 'mmzoo' entry has no architecture name \('arch'\)")

    # resuming (ckpt_path=): what the file is and what to do instead, never "weights_only=False"
    for path, phrase in ((exported, r"is a safetensors file: it holds model weights only.*finetune\.from="),
                         (timm_like, r"it is a bare state dict of \d+ tensors .*finetune\.from="),
                         (hf_like, r"it is a bare state dict of 2 tensors"),
                         (mmzoo_file, r"it is an mmzoo model file \(weights and config, no training state\)"),
                         (weights_only, r"holds weights only .*finetune\.from=")):
        # the IO plugin also loads checkpoints to test (trainer.test), which may be weights-only
        readers = [ckpt_lib.read_training_checkpoint] + [AtomicCheckpointIO().load_checkpoint] * (path != weights_only)
        for fn in readers:
            message = _raises(fn, path, phrase)
            assert "weights_only=False" not in message
    # a truncated safetensors file
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(exported.read_bytes()[:200])
    _raises(lambda p: mmzoo.create_model(pretrained=p), cut, r"is a safetensors file cut short")
    cut.write_bytes(exported.read_bytes()[:-10])
    _raises(lambda p: mmzoo.create_model(pretrained=p), cut, r"is a safetensors file that is truncated or damaged")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="address-space limit: Linux")
def test_config_bomb_fails_before_allocating(tmp_path):
    """A 0.4 MB file whose stored config says embed_dim=16384 (a 26 GB model) fails at once, naming the
    mismatch; an address-space limit makes a regression an allocation error, not a machine out of memory."""
    torch.manual_seed(0)
    model = mmzoo.create_model("vit_nano_patch4_32")
    for change, phrase in (({"embed_dim": 16384}, r"\d+ of its \d+ tensors have other shapes than the config gives "
                                                  r"\(first: .* is \(.*64.*\) in the file, \(.*16384.*\) from the config\)"),
                           ({"depth": 100}, r"\d+ tensors of the model are not in the file \(first: \['blocks\.2\.")):
        ckpt = ckpt_lib.mmzoo_checkpoint(model)
        ckpt["mmzoo"]["config"].update(change)
        bomb = tmp_path / f"bomb_{next(iter(change))}.ckpt"
        torch.save(ckpt, bomb)
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        vm = int(next(ln for ln in Path("/proc/self/status").read_text().splitlines()
                      if ln.startswith("VmSize")).split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, hard))
        try:
            with pytest.raises(CheckpointError) as info:
                mmzoo.create_model(pretrained=bomb)
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        message = str(info.value)
        assert str(bomb) in message and "does not describe its weights" in message, message
        assert re.search(phrase, message), message
    # a stored config that is not valid names the file and the key
    ckpt = ckpt_lib.mmzoo_checkpoint(model)
    ckpt["mmzoo"]["config"]["depth"] = -1
    torch.save(ckpt, tmp_path / "bad_cfg.ckpt")
    with pytest.raises(CheckpointError, match=r"bad_cfg.ckpt: the model config stored in it is invalid: model.depth=-1"):
        mmzoo.create_model(pretrained=tmp_path / "bad_cfg.ckpt")


# -- resuming -------------------------------------------------------------------------------------------

def test_resume_warns_about_changed_settings_and_removes_stale_files(train_cfg, caplog):
    every2 = [f"callbacks.model_checkpoint.{k}" for k in
              ("every_n_epochs=null", "every_n_train_steps=2", "save_top_k=2", "monitor=step", "mode=max")]
    common = [*TINY, "data.batch_size=16", *every2, "test=false"]
    first = train_cfg(*common, "trainer.max_steps=6")
    train(first)
    ckpts = Path(first.paths.output_dir) / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch000-step000004.ckpt", "epoch000-step000006.ckpt",
                                                        "last.ckpt"]
    dead, live = _dead_pid(), os.getppid()  # not our own id: this process writes .last.ckpt.tmp-<own id>
    stale = [ckpts / f".last.ckpt.tmp-{dead}", ckpts / f".epoch000-step000008.ckpt.tmp-{dead}",
             ckpts / "epoch000-step000002.ckpt",  # its deletion was interrupted
             ckpts / "epoch001-step000012.ckpt"]  # written after last.ckpt
    kept = [ckpts / f".last.ckpt.tmp-{live}", ckpts / "notes.txt", ckpts / "best.ckpt", ckpts / "epoch5.ckpt"]
    for p in stale + kept:
        shutil.copy(ckpts / "last.ckpt", p) if p.suffix == ".ckpt" else p.write_bytes(b"x")

    caplog.set_level(logging.WARNING, logger="mmzoo")
    resumed = train_cfg(*common, "trainer.max_steps=8", f"ckpt_path={ckpts / 'last.ckpt'}", "seed=7",
                        "data.batch_size=8")
    metrics = train(resumed)
    assert metrics["global_step"] == 8
    text = caplog.text
    for p in stale:
        assert f"removed {p}" in text and not p.exists(), p
    for p in kept:
        assert p.exists() and f"removed {p}" not in text, p
    changed = [r.getMessage() for r in caplog.records if "other settings" in r.getMessage()]
    assert len(changed) == 1 and "seed: 42 in the checkpoint, 7 now" in changed[0], changed
    assert "data.batch_size: 16 in the checkpoint, 8 now" in changed[0]
    assert "data.num_workers" not in changed[0]  # unchanged settings are not listed
    # the checkpoint stores what is compared
    stored = torch.load(ckpts / "last.ckpt", weights_only=True, mmap=True)[ckpt_lib.RUN_KEY]
    assert stored["seed"] == 7 and stored["data"]["batch_size"] == 8 and stored["world_size"] == 1
    assert stored["name"] == resumed.run_name  # beside mmzoo.run_info's entries, not instead of them


def test_stale_files_leave_other_runs_alone(tmp_path):
    """Resuming from another run's checkpoint: nothing in this run's folder is an orphan of it."""

    class Writer:
        dirpath, filename, FILE_EXTENSION, CHECKPOINT_NAME_LAST, state_key = str(tmp_path), "epoch{epoch:03d}", \
            ".ckpt", "last", "ModelCheckpoint{}"

    (tmp_path / "epoch007.ckpt").write_bytes(b"x")
    other = {"callbacks": {"ModelCheckpoint{}": {"dirpath": str(tmp_path / "elsewhere"), "best_k_models": {}}}}
    assert ckpt_lib.stale_files(tmp_path, [Writer()], other) == []
    mine = {"callbacks": {"ModelCheckpoint{}": {"dirpath": str(tmp_path), "best_k_models": {}}}}
    assert ckpt_lib.stale_files(tmp_path, [Writer()], mine) == [tmp_path / "epoch007.ckpt"]
    assert ckpt_lib.stale_files(tmp_path, [Writer()], None) == []  # a fresh run removes no checkpoint


def test_bad_test_ckpt_lists_the_choices(train_cfg):
    with pytest.raises(ValueError, match=r"test_ckpt='bogus' is invalid; valid choices: \['best', 'last'\]"):
        train(train_cfg(*TINY, "test_ckpt=bogus"))
