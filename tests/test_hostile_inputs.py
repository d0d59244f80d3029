"""Hostile files never run code and never write outside their target: pickle payloads in CIFAR-10 batches
and in every part of a sharded checkpoint (``python -m mmzoo.distributed consolidate``), forged checkpoint
metadata, archive members that climb out of the target folder (on every Python, with and without
tarfile's ``filter=``); and the CLIs: the README's ``mmzoo.zeroshot model=PRESET`` form, template files that
name their bad line, ``mmzoo info`` that does not print terminal escapes.

Every payload would create a marker file when unpickled; each test asserts the marker does not exist."""
from __future__ import annotations

import io
import pickle
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mmzoo.data.cifar10 import CIFAR10DataModule
from mmzoo.distributed import check_sharded_checkpoint, consolidate_checkpoint
from mmzoo.distributed import main as distributed_main
from mmzoo.safe_pickle import UnsafePickleError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "data_scripts"))
import safe_archive  # noqa: E402


class Payload:
    """Unpickling this creates ``marker`` (a stand-in for any code a pickle can run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# -- CIFAR-10 batches ---------------------------------------------------------------------------------

def _cifar(folder: Path, n: int = 20) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), b"labels": [i % 10 for i in range(n)]}
        for protocol in (2,):  # the official files are protocol-2 pickles
            (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    return folder


def test_cifar10_payloads_are_refused_and_never_run(tmp_path):
    folder = _cifar(tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "pwned"
    for protocol in (2, 4, 5):  # numpy arrays pickle through different globals per protocol
        batch = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [1, 2, 3, 4]}
        (folder / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=protocol))
        dm = CIFAR10DataModule(root=tmp_path, val_size=10)
        dm.setup()
        assert len(dm.train_set) + len(dm.val_set) == 4 * 20 + 4
    meta = (folder / "batches.meta").read_bytes()
    for target, payload in (("batches.meta", Payload(marker)),
                            ("batches.meta", {b"label_names": [Payload(marker)]}),
                            ("data_batch_3", {b"data": Payload(marker), b"labels": []})):
        (folder / target).write_bytes(pickle.dumps(payload, protocol=2))
        with pytest.raises(UnsafePickleError, match=rf"{target} asks for the Python object .*open"):
            CIFAR10DataModule(root=tmp_path).setup()
        assert not marker.exists()
        (folder / "batches.meta").write_bytes(meta)
    (folder / "data_batch_3").write_bytes(b"")  # truncated: named, not an EOFError
    with pytest.raises(ValueError, match=r"data_batch_3 is not a readable CIFAR-10 python batch file"):
        CIFAR10DataModule(root=tmp_path).setup()
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((2, 5), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match=r"data_batch_3: 'data' must be a uint8 array of shape \(N, 3072\)"):
        CIFAR10DataModule(root=tmp_path).setup()


# -- sharded checkpoints -----------------------------------------------------------------------------

def _sharded(folder: Path, extra: dict | None = None) -> tuple[Path, dict]:
    """A sharded checkpoint written by torch.distributed.checkpoint (Lightning's FSDP writer): a small
    model in two dtypes, its AdamW state, and ``meta.pt`` with the rest of a Lightning checkpoint."""
    from lightning.fabric.strategies.fsdp import _METADATA_FILENAME, _distributed_checkpoint_save

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    model[1].to(torch.bfloat16)
    opt = torch.optim.AdamW(model[0].parameters())
    model[0](torch.randn(2, 3)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optimizer_0": opt.state_dict(), **(extra or {})}
    _distributed_checkpoint_save(state, folder)
    torch.save({"global_step": 7, "epoch": 1, "hyper_parameters": {"lr": 0.1}}, folder / _METADATA_FILENAME)
    return folder, {k: v.clone() for k, v in model.state_dict().items()}


def test_consolidate_reads_a_real_sharded_checkpoint_and_refuses_every_payload(tmp_path, capsys):
    marker = tmp_path / "pwned"
    folder, weights = _sharded(tmp_path / "ok.ckpt")
    check_sharded_checkpoint(folder)
    out = torch.load(consolidate_checkpoint(folder, tmp_path / "full.ckpt"), weights_only=True)
    assert out["global_step"] == 7 and set(out["state_dict"]) == set(weights)
    for key, value in weights.items():
        assert out["state_dict"][key].dtype == value.dtype and torch.equal(out["state_dict"][key], value), key
    assert out["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-3)

    # 1. .metadata replaced by a payload (what torch's reader would unpickle with plain pickle)
    bad, _ = _sharded(tmp_path / "meta_payload.ckpt")
    (bad / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    for fn in (check_sharded_checkpoint, lambda d: consolidate_checkpoint(d, tmp_path / "never.ckpt")):
        with pytest.raises(UnsafePickleError, match=r"\.metadata asks for the Python object .*open"):
            fn(bad)
    # 2. a payload stored as a non-tensor entry (torch's planner loads these with weights_only=False)
    bad, _ = _sharded(tmp_path / "entry_payload.ckpt", {"extra": {"note": Payload(marker)}})
    with pytest.raises(ValueError, match=r"entry 'extra.note' does not load with torch.load\(weights_only=True\)"):
        consolidate_checkpoint(bad, tmp_path / "never.ckpt")
    with pytest.raises(ValueError, match="extra.note"):
        check_sharded_checkpoint(bad)
    # 3. meta.pt holding a payload
    bad, _ = _sharded(tmp_path / "meta_pt_payload.ckpt")
    torch.save({"global_step": Payload(marker)}, bad / "meta.pt")
    with pytest.raises(ValueError, match=r"meta.pt holds a Python object \(.*open\) that torch.load\(weights_only=True\) refuses"):
        consolidate_checkpoint(bad, tmp_path / "never.ckpt")
    assert not marker.exists() and not (tmp_path / "never.ckpt").exists()

    # forged metadata (written with the real classes): a storage file outside the folder, a size bomb
    for forge, message in ((lambda md: setattr(next(iter(md.storage_data.values())), "relative_path", "../x"),
                            "not a file of the checkpoint directory"),
                           (lambda md: setattr(md.state_dict_metadata["model.0.weight"], "size",
                                               torch.Size([10 ** 6, 10 ** 6])), "the tensors claim")):
        bad, _ = _sharded(tmp_path / f"forged{len(message)}.ckpt")
        md = pickle.loads((bad / ".metadata").read_bytes())
        forge(md)
        (bad / ".metadata").write_bytes(pickle.dumps(md))
        with pytest.raises(ValueError, match=message):
            consolidate_checkpoint(bad, tmp_path / "never.ckpt")

    # the command line: one error line, exit status 1, no traceback, nothing written
    bad, _ = _sharded(tmp_path / "cli.ckpt")
    (bad / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(SystemExit) as exit_:
        distributed_main(["consolidate", str(bad), str(tmp_path / "o.ckpt")])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.startswith("error: ") and ".metadata asks for" in err, err
    assert not marker.exists() and not (tmp_path / "o.ckpt").exists()


# -- archives ----------------------------------------------------------------------------------------

def _tar(path: Path, members: list[tuple[str, str, object]]) -> Path:
    """``(kind, name, data_or_target)`` members: kind file / sym / hard / fifo / chr / dir."""
    with tarfile.open(path, "w") as tar:
        for kind, name, data in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE,
                         "chr": tarfile.CHRTYPE, "dir": tarfile.DIRTYPE}[kind]
            if kind in ("sym", "hard"):
                info.linkname = str(data)
            tar.addfile(info)
    return path


UNSAFE_TARS = {
    "dotdot": [("file", "ok.txt", b"x"), ("file", "../escaped.txt", b"x")],
    "absolute": [("file", "/tmp/{sandbox}/escaped.txt", b"x")],
    "symlink_out": [("sym", "link", "/{sandbox}")],
    "symlink_up": [("sym", "link", "../../..")],
    "through_link": [("sym", "link", "."), ("file", "link/../../escaped.txt", b"x")],
    "through_inner_link": [("dir", "d", None), ("sym", "d/up", ".."), ("file", "d/up/x.txt", b"x")],
    "hardlink_out": [("hard", "hard", "/etc/passwd")],
    "hardlink_up": [("hard", "hard", "../outside.txt")],
    "fifo": [("fifo", "pipe", None)],
    "device": [("chr", "dev", None)],
}


@pytest.mark.parametrize("with_filter", [True, False], ids=["filter", "no_filter"])
def test_archive_members_never_land_outside(tmp_path, monkeypatch, with_filter):
    if not with_filter:  # Python < 3.10.12 / 3.11.4: no tarfile filter at all
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    (tmp_path / "outside.txt").write_text("keep")
    before = _files(tmp_path)
    for name, members in UNSAFE_TARS.items():
        members = [(k, n.format(sandbox=sandbox.relative_to("/")), d if not isinstance(d, str) else
                    d.format(sandbox=sandbox)) for k, n, d in members]
        archive = _tar(tmp_path / f"{name}.tar", members)
        dest = sandbox / name
        with pytest.raises(safe_archive.UnsafeArchiveError, match=rf"{name}.tar: member .* refused"):
            safe_archive.extract_archive(archive, dest)
        assert not (sandbox / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists(), name
        assert (tmp_path / "outside.txt").read_text() == "keep"
    written = _files(tmp_path) - before
    assert all(p.startswith("sandbox") or p.endswith(".tar") for p in written), written
    # a normal archive with an inner link still extracts
    good = _tar(tmp_path / "good.tar", [("dir", "a", None), ("file", "a/x.txt", b"hello"), ("sym", "a/y.txt", "x.txt")])
    safe_archive.extract_archive(good, sandbox / "good")
    assert (sandbox / "good" / "a" / "y.txt").read_text() == "hello"
    # zip: '..' and absolute names refused rather than silently renamed
    for bad_name in ("../escaped.txt", "/abs/escaped.txt"):
        with zipfile.ZipFile(tmp_path / "bad.zip", "w") as z:
            z.writestr(bad_name, b"x")
        with pytest.raises(safe_archive.UnsafeArchiveError, match="refused"):
            safe_archive.extract_archive(tmp_path / "bad.zip", sandbox / "zip")


def test_prepare_scripts_stop_on_an_unsafe_archive(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("prepare_cifar10", ROOT / "data_scripts" / "prepare_cifar10.py")
    prep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prep)
    with tarfile.open(tmp_path / "c.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    root = tmp_path / "root" / "deep"
    root.mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"escaped.txt' refused \(a '\.\.' component\)"):
        prep.extract(tmp_path / "c.tar.gz", root)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "root" / "escaped.txt").exists()
    assert list(root.iterdir()) == []  # the temporary folder is removed


# -- CLIs --------------------------------------------------------------------------------------------

def test_zeroshot_readme_form_with_a_preset_and_weights(tmp_path, monkeypatch, capsys):
    """``python -m mmzoo.zeroshot model=PRESET pretrained=WEIGHTS tokenizer=clip`` (the README's form), run
    through the command-line entry point with that argv."""
    import mmzoo
    from mmzoo.zeroshot import main

    weights = tmp_path / "clip_nano_weights.pt"
    torch.save(mmzoo.create_model("clip_nano").state_dict(), weights)
    run = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mmzoo.zeroshot", "model=clip_nano", f"pretrained={weights}", "tokenizer=clip",
                                      "data=digits", "device=cpu", f"hydra.run.dir={run}"])
    main()
    assert (run / "zeroshot.json").is_file() and '"top1"' in capsys.readouterr().out
    assert _files(tmp_path) - {"clip_nano_weights.pt"} <= {"run"} | {f"run/{p}" for p in _files(run)}


def test_template_files_name_the_bad_line(tmp_path):
    from mmzoo.data.templates import check_templates, load_templates

    good = tmp_path / "good.txt"
    good.write_text("# prompts\n\na photo of a {}.\n{{literal}} braces and a {}\n", encoding="utf-8")
    assert load_templates(good) == ["a photo of a {}.", "{{literal}} braces and a {}"]
    cases = {"a photo of {x}.": r"line 2: template 'a photo of \{x\}.' has the placeholder \{x\}",
             "a photo of a {} {": r"line 2: template .*Single '\{' encountered",
             "a { brace in {}": r"line 2: template .*unexpected '\{' in field name",
             "no placeholder": r"line 2: template 'no placeholder' has no \{\} placeholder",
             "a {0:>10}": r"line 2: .*format spec"}
    for line, message in cases.items():
        bad = tmp_path / "bad.txt"
        bad.write_text(f"a photo of a {{}}.\n{line}\n", encoding="utf-8")
        with pytest.raises(ValueError, match=rf"{bad}, {message}"):
            load_templates(bad)
    bad.write_bytes(b"a photo of a {}.\n# ok\nun \xe9t\xe9 {}\n")  # Latin-1
    with pytest.raises(ValueError, match=rf"{bad}, line 3: not UTF-8 text \(byte 0xe9 at column 4\)"):
        load_templates(bad)
    with pytest.raises(ValueError, match=r"data.zeroshot_templates, template 2 'a \{x\}'"):
        check_templates(["a {}", "a {x}"], "data.zeroshot_templates")


def test_zeroshot_cli_checks_templates_before_loading_anything(tmp_path):
    from hydra import compose, initialize_config_dir

    from mmzoo.zeroshot import preset_alias, run

    assert preset_alias(["model=clip_vit_b32", "model_name=x", "data=digits"]) == \
        ["model_name=clip_vit_b32", "model_name=x", "data=digits"]
    bad = tmp_path / "t.txt"
    bad.write_text("a {}\n{x} photo\n")
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("zeroshot", overrides=[f"templates={bad}", "model_name=clip_nano",
                                             f"pretrained={tmp_path / 'never_read.pt'}", "data=digits",
                                             f"paths.output_dir={tmp_path / 'run'}"])
    with pytest.raises(ValueError, match=rf"{bad}, line 2"):
        run(cfg)


def test_info_escapes_control_characters(tmp_path, capsys):
    import mmzoo
    from mmzoo.cli import main
    from mmzoo.convert import model_metadata

    model = mmzoo.create_model("vit_micro_patch4_32")
    meta = model_metadata(model)
    meta["model_name"] = "vit\x1b[2J\x1b]0;owned\x07\r\u202eevil"
    meta["config"]["global_pool"] = "token\x1b[31m"
    torch.save({"mmzoo": meta, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}},
               tmp_path / "m.ckpt")
    assert main(["info", str(tmp_path / "m.ckpt")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out and "\u202e" not in out
    assert r"model: vit\x1b[2J\x1b]0;owned\x07\x0d\u202eevil" in out and r"global_pool: token\x1b[31m" in out
