"""Checkpoint files in one place: atomic writes, safe reads with errors that say what a file is, the Lightning
``model.`` prefix, the metadata mmzoo stores, and the clean-up of what a crashed run leaves behind.

**Writing.** Every file mmzoo writes that a later step reads (checkpoints, exported weights, adaptation
files, ``metrics.json``, tokenizer files, caches) goes through :func:`atomic_write`: the bytes go to
``.NAME.tmp-PID`` in the same folder, are fsync'ed, renamed over ``NAME`` (``os.replace``, atomic within a
file system) and the folder is fsync'ed, so a crash or kill at any moment leaves the previous file or the
new one, never a torn one.

**Reading.** :func:`load` is ``torch.load(weights_only=True)`` (torch's allow-list: tensors and plain
containers, no ``__reduce__`` payload runs) on CPU; when a file is not a checkpoint the error is one
sentence naming the file and what it is (empty, text, a safetensors file, a truncated or damaged torch
file, a zip that is not a checkpoint, a refused Python object). :func:`read_checkpoint` turns any
weights file into a :class:`Checkpoint` (weights + the model description when the file has one);
:func:`read_training_checkpoint` checks that a file can resume a run.

**What mmzoo stores.** A checkpoint written by ``train.py`` holds Lightning's entries (``state_dict`` with
the task's ``model.`` prefix, ``optimizer_states``, ``loops``, ``callbacks`` ...) and:

* ``mmzoo``: ``arch``, ``model_name``, ``config`` -- the model rebuilt from the file alone
  (:func:`model_metadata`) -- and ``pretrained_cfg``, the preprocessing the model was trained with
  (image size, mean/std, class names ...; :mod:`mmzoo.preprocessing`);
* ``mmzoo_run``: the run's ``seed``, ``data`` config, ``world_size`` and ``accumulate_grad_batches``, compared
  with a resuming run's (:func:`run_config_differences`), beside the run's name and W&B id
  (``mmzoo.run_info``);
* ``mmzoo_task``: the task's ``class`` (``"module.Class"``) and the model's ``peft`` config (None without
  adaptation); with Lightning's ``hyper_parameters`` they rebuild the task without the run's config
  (:mod:`mmzoo.evaluation`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Mapping, Optional, Union

import torch
import torch.nn as nn

log = logging.getLogger("mmzoo")

PathLike = Union[str, os.PathLike]

MMZOO_KEY = "mmzoo"  # checkpoint entry holding arch / model_name / config
PRETRAINED_CFG_KEY = "pretrained_cfg"  # inside the mmzoo entry: the data config the model was trained with
RUN_KEY = "mmzoo_run"  # checkpoint entry holding the run settings a resumed run is compared with
TASK_KEY = "mmzoo_task"  # checkpoint entry: the task "class" ("module.Class") and the model's "peft" config
LIGHTNING_PREFIX = "model."  # a task's ``self.model`` parameters in a Lightning ``state_dict``
LIGHTNING_VERSION_KEY = "pytorch-lightning_version"
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")  # what temp_path() names


class CheckpointError(ValueError):
    """A file that is not the checkpoint its caller needs; the message names the file and says what it is."""


# -- writing ------------------------------------------------------------------------------------------------

def temp_path(path: PathLike) -> Path:
    """The temporary name :func:`atomic_write` writes ``path`` under: ``.NAME.tmp-PID`` in the same folder."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where the OS cannot open folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(f)`` on a binary file that becomes ``path`` only once it is complete and on disk.

    Args:
        path: the file to (re)place; its folder is created.
        write: writes the contents into the open binary file it is given.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only there when something above failed
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`).

    Args:
        path: the file to (re)place.
        data: its new contents.
    """
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` as UTF-8, atomically (see :func:`atomic_write`).

    Args:
        path: the file to (re)place.
        text: its new contents.
    """
    return atomic_write_bytes(path, text.encode("utf-8"))


def save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (see :func:`atomic_write`).

    Args:
        obj: tensors and plain containers (what :func:`load` reads back).
        path: the checkpoint file to (re)place.
    """
    return atomic_write(path, lambda f: torch.save(obj, f))


# -- what a file is -------------------------------------------------------------------------------------

def _head(path: Path, n: int = 512) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def is_safetensors(path: PathLike) -> bool:
    """Whether ``path`` starts like a safetensors file (an 8-byte header length, then a JSON object).

    Args:
        path: the file to look at.
    """
    path = Path(path)
    head = _head(path, 9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= path.stat().st_size - 8


def describe_file(path: PathLike) -> str:
    """A short phrase saying what ``path`` holds, for errors about files that are not checkpoints
    ("an empty file (0 bytes)", "a text file beginning 'hello'", "a zip archive (1,234 bytes)" ...).

    Args:
        path: the file to look at.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "an empty file (0 bytes)"
    head = _head(path)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return f"a zip archive ({size:,} bytes)"
    if is_safetensors(path):
        return f"a safetensors file ({size:,} bytes)"
    if len(head) >= 9 and head[8:9] == b"{":  # a safetensors header length, then JSON, but the file ends first
        return (f"a safetensors file cut short ({size:,} bytes; its header alone claims "
                f"{struct.unpack('<Q', head[:8])[0]:,})")
    if head[:1] == b"\x80":
        return f"a pickle ({size:,} bytes)"
    if head.startswith(b"\x93NUMPY"):
        return f"a NumPy .npy array ({size:,} bytes)"
    if head.startswith(b"\x89HDF"):
        return f"an HDF5 file ({size:,} bytes)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:  # a multi-byte character cut at the end of the head is still text
        text = head[:e.start].decode("utf-8") if e.start > len(head) - 4 else None
    if text is not None and text.startswith("version https://git-lfs"):
        return "a Git LFS pointer, not the file it stands for (fetch it with git lfs pull)"
    if text is not None and all(ch.isprintable() or ch in "\t\r\n\f" for ch in text):
        first = text.strip().splitlines()[0][:60] if text.strip() else ""
        return f"a text file beginning {first!r} ({size:,} bytes)"
    return f"binary data beginning {head[:8].hex(' ')} ({size:,} bytes)"


def _torch_format(path: Path) -> Optional[str]:
    """``"zip"`` (torch.save's format since 1.6), ``"legacy"`` (a pickle) or None (neither)."""
    head = _head(path, 4)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head[:1] == b"\x80":
        return "legacy"
    return None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _refused_global(e: BaseException) -> Optional[str]:
    """The global torch's weights-only unpickler refused (``builtins.open``), if that was the error."""
    m = re.search(r"(?:Unsupported global: GLOBAL|Trying to load unsupported GLOBAL|global) ([\w.]+)", str(e))
    return m.group(1) if m and "Weights only load failed" in str(e) else None


def load(path: PathLike, *, mmap: bool = False) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, with an error that says what the file is
    when it is not a readable torch checkpoint.

    Args:
        path: the file to read.
        mmap: memory-map the tensors instead of reading them (zip-format files only; cheap for looking at
            a large checkpoint's entries).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: ``path`` is a folder, empty, not a torch file, truncated or damaged, or holds
            Python objects other than tensors and plain containers (nothing in it is run).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if p.is_dir():
        raise CheckpointError(f"{p} is a folder, not a checkpoint file")
    fmt = _torch_format(p)
    if fmt is None:
        what = describe_file(p)
        hint = ("; read it with mmzoo.create_model(pretrained=...) or safetensors.torch.load_file"
                if what.startswith("a safetensors file (") else "")
        raise CheckpointError(f"{p} is not a torch checkpoint: it is {what}{hint}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True, mmap=mmap and fmt == "zip")
    except Exception as e:  # noqa: BLE001 - every reason becomes one sentence naming the file
        refused = _refused_global(e)
        if refused is not None:
            raise CheckpointError(
                f"{p} holds a Python object ({refused}) that torch.load(weights_only=True) refuses: mmzoo "
                "reads only tensors and plain containers from checkpoints, and nothing in this file was run. "
                "If you wrote it yourself, save its tensors instead (torch.save(model.state_dict(), ...))") from e
        size = p.stat().st_size
        if fmt == "zip":
            try:
                with zipfile.ZipFile(p) as z:
                    names = z.namelist()
            except (zipfile.BadZipFile, OSError):
                raise CheckpointError(f"{p} is a torch checkpoint (zip format) that is truncated or damaged "
                                      f"({size:,} bytes, its zip directory is unreadable): copy or write it "
                                      "again") from e
            if not any(n.endswith("data.pkl") for n in names):
                raise CheckpointError(f"{p} is a zip archive of {len(names)} files without data.pkl, not a "
                                      f"torch checkpoint (first entries: {names[:3]})") from e
            raise CheckpointError(f"{p} is a torch checkpoint (zip format) whose contents are damaged "
                                  f"({size:,} bytes; {_first_line(e)}): copy or write it again") from e
        raise CheckpointError(f"{p} is a torch checkpoint (legacy pickle format) that is truncated or damaged "
                              f"({size:,} bytes; {_first_line(e)}): copy or write it again") from e


# -- model weights and metadata ---------------------------------------------------------------------------

@dataclass
class Checkpoint:
    """Weights read from a file, with the model description when the file has one.

    Args:
        path: the file read.
        state_dict: the model's weights (``model.`` prefix removed).
        format: ``"mmzoo"`` (holds ``arch`` / ``config``) or ``"foreign"`` (weights only).
        arch: the architecture name (mmzoo files).
        model_name: the preset the model was built from (mmzoo files).
        config: the model config as plain containers (mmzoo files).
        pretrained_cfg: the preprocessing the model was trained with (mmzoo files that record it).
    """

    path: str
    state_dict: dict[str, torch.Tensor]
    format: str
    arch: Optional[str] = None
    model_name: Optional[str] = None
    config: Optional[dict[str, Any]] = None
    pretrained_cfg: Optional[dict[str, Any]] = None


def _plain(obj: Any) -> Any:
    """Tuples -> lists etc., so the metadata is JSON- and ``weights_only``-safe."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def model_metadata(model: nn.Module, pretrained_cfg: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """What a checkpoint needs to rebuild ``model``: arch, preset name, config as plain containers, and the
    preprocessing it expects (``pretrained_cfg``: the one given, else ``model.pretrained_cfg`` when set).

    Args:
        model: a model built by ``mmzoo.create_model``.
        pretrained_cfg: the data config the model is trained with (:func:`mmzoo.preprocessing.data_config`).
    """
    out = {
        "arch": model.arch_name,
        "model_name": getattr(model, "model_name", None),
        "config": _plain(dataclasses.asdict(model.cfg)),
    }
    if pretrained_cfg is None:
        pretrained_cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(pretrained_cfg, Mapping):
        out[PRETRAINED_CFG_KEY] = _plain(dict(pretrained_cfg))
    return out


def _stored_pretrained_cfg(info: Mapping[str, Any]) -> Optional[dict[str, Any]]:
    value = info.get(PRETRAINED_CFG_KEY)
    return dict(value) if isinstance(value, dict) else None


def add_lightning_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A model's state dict as a task's Lightning ``state_dict`` holds it (keys ``model.<name>``).

    Args:
        state_dict: the model's ``state_dict()``.
    """
    return {LIGHTNING_PREFIX + k: v for k, v in state_dict.items()}


def strip_lightning_prefix(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The model's weights inside a task's Lightning ``state_dict``: the ``model.`` entries, prefix removed
    (the task's other entries, such as a distillation teacher or loss buffers, are left out).

    Args:
        state_dict: a Lightning checkpoint's ``state_dict``.
    """
    n = len(LIGHTNING_PREFIX)
    return {k[n:]: v for k, v in state_dict.items() if k.startswith(LIGHTNING_PREFIX)}


def mmzoo_checkpoint(model: nn.Module, **extra: Any) -> dict[str, Any]:
    """The smallest checkpoint :func:`read_checkpoint` rebuilds ``model`` from: its metadata and weights.

    Args:
        model: a model built by ``mmzoo.create_model``.
        **extra: further entries to store (plain containers and tensors).
    """
    return {MMZOO_KEY: model_metadata(model), "state_dict": add_lightning_prefix(model.state_dict()), **extra}


def _strip_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _check_metadata(p: Path, info: Any) -> dict[str, Any]:
    """The ``mmzoo`` entry, or an error naming what is wrong with it (a damaged or hand-made file)."""
    if not isinstance(info, dict):
        raise CheckpointError(f"{p}: its '{MMZOO_KEY}' entry is a {type(info).__name__}, not the dict mmzoo writes "
                              "(arch, model_name, config); the file is damaged or was not written by mmzoo")
    problems = []
    if not isinstance(info.get("arch"), str):
        problems.append("no architecture name ('arch')" if "arch" not in info else f"arch={info['arch']!r}")
    if not isinstance(info.get("config"), dict):
        problems.append("no model config ('config')" if "config" not in info else
                        f"a config that is a {type(info['config']).__name__}")
    if info.get("model_name") is not None and not isinstance(info["model_name"], str):
        problems.append(f"model_name={info['model_name']!r}")
    if problems:
        raise CheckpointError(f"{p}: its '{MMZOO_KEY}' entry has {', '.join(problems)}; the file is damaged or was "
                              "not written by mmzoo (pass the preset name with create_model(NAME, pretrained=...) "
                              "to load its weights anyway)")
    return info


def read_checkpoint(path: PathLike) -> Checkpoint:
    """Read a weights file on CPU (``weights_only=True``) and normalise it to a :class:`Checkpoint`.

    Accepts mmzoo / Lightning checkpoints written by ``train.py``, ``.safetensors`` files (exported by
    ``mmzoo export``, config in the metadata, or foreign), foreign state dicts (``.pth`` / ``.bin``, possibly
    nested under ``state_dict`` / ``model`` / ``module``), and a folder holding one of the usual file names.

    Args:
        path: the file or folder.

    Raises:
        FileNotFoundError: nothing at ``path``.
        CheckpointError: the file is not a checkpoint of model weights (see :func:`load`).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if p.is_dir():
        for candidate in ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                          "open_clip_pytorch_model.bin", "last.ckpt"):
            if (p / candidate).exists():
                return read_checkpoint(p / candidate)
        raise FileNotFoundError(f"no weights file found in directory {p}")
    if p.suffix == ".safetensors" or is_safetensors(p):
        return _read_safetensors(p)
    obj = load(p)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{p} holds a {type(obj).__name__}, not a checkpoint (a dict of tensors)")
    if MMZOO_KEY in obj:
        info = _check_metadata(p, obj[MMZOO_KEY])
        if not isinstance(obj.get("state_dict"), dict):
            raise CheckpointError(f"{p} has mmzoo metadata but no 'state_dict' of weights; the file is damaged")
        sd = strip_lightning_prefix(obj["state_dict"])
        return Checkpoint(str(p), sd, "mmzoo", info["arch"], info.get("model_name"), info["config"],
                          _stored_pretrained_cfg(info))
    for key in ("state_dict", "model", "module", "model_state_dict"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f"{p} holds no tensors (a dict with keys {sorted(map(str, obj))[:8]}): it is not a "
                              "checkpoint of model weights")
    for prefix in ("module.", "model.", "_orig_mod."):
        sd = _strip_prefix(sd, prefix)
    return Checkpoint(str(p), sd, "foreign")


def _read_safetensors(p: Path) -> Checkpoint:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    if not is_safetensors(p):
        what = describe_file(p)
        raise CheckpointError(f"{p} is {what}: copy or export it again" if "safetensors" in what else
                              f"{p} is named .safetensors but is {what}, not a safetensors file")
    try:
        sd = load_file(str(p), device="cpu")
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{p} is a safetensors file that is truncated or damaged ({p.stat().st_size:,} "
                              f"bytes; {_first_line(e)}): copy or export it again") from e
    if MMZOO_KEY in meta:
        try:
            info = json.loads(meta[MMZOO_KEY])
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{p}: its '{MMZOO_KEY}' metadata is not JSON ({e})") from e
        info = _check_metadata(p, info)
        return Checkpoint(str(p), sd, "mmzoo", info["arch"], info.get("model_name"), info["config"],
                          _stored_pretrained_cfg(info))
    return Checkpoint(str(p), sd, "foreign")


def check_weights_fit(ckpt: Checkpoint, expected: Mapping[str, tuple[int, ...]], described: str) -> None:
    """Raise unless the weights of an mmzoo checkpoint are the ones its stored config describes: every
    tensor the model has is in the file, with the model's shape. Run on a model built on the meta device,
    before anything is allocated, so a small file whose config says ``embed_dim=16384`` fails at once.

    Args:
        ckpt: an mmzoo checkpoint (``format="mmzoo"``).
        expected: the shape of each entry of the model's ``state_dict()`` built from the stored config.
        described: the stored config's main sizes, for the message (``"embed_dim=16384, depth=12"``).
    """
    sd = ckpt.state_dict
    wrong = [(k, tuple(sd[k].shape), tuple(v)) for k, v in expected.items() if k in sd and tuple(sd[k].shape) != tuple(v)]
    missing = [k for k in expected if k not in sd and k.split(".")[0] not in ("head", "fc")]
    if not wrong and not missing:
        return
    parts = []
    if wrong:
        k, got, want = wrong[0]
        parts.append(f"{len(wrong)} of its {len(sd)} tensors have other shapes than the config gives (first: {k} is "
                     f"{got} in the file, {want} from the config)")
    if missing:
        parts.append(f"{len(missing)} tensors of the model are not in the file (first: {missing[:3]})")
    raise CheckpointError(f"{ckpt.path}: its stored config ({ckpt.arch}: {described}) does not describe its weights: "
                          f"{'; '.join(parts)}. The file is damaged or its metadata was edited; nothing was allocated")


# -- resuming a run -----------------------------------------------------------------------------------------

def read_training_checkpoint(path: PathLike, *, mmap: bool = False, key: str = "ckpt_path") -> dict[str, Any]:
    """Read a checkpoint that a run resumes from, or raise saying what the file is and what to do instead.

    Args:
        path: the checkpoint file.
        mmap: memory-map the tensors (cheap when only the entries are looked at).
        key: the option the path came from, for the message.

    Raises:
        FileNotFoundError: nothing at ``path``.
        CheckpointError: ``path`` is a weights-only file (safetensors, a foreign or exported state dict),
            not a Lightning checkpoint written by ``train.py``, or not readable (see :func:`load`).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{key}={p} does not exist; pass a checkpoint file such as DIR/checkpoints/last.ckpt")
    use_weights = (f"to start a new run from its weights instead, pass finetune.from={p} "
                   "(or model.pretrained=...)")
    if p.is_file() and (p.suffix == ".safetensors" or is_safetensors(p)):
        raise CheckpointError(f"{key}={p} is a safetensors file: it holds model weights only, not the optimizer, "
                              "schedule, data position and RNG state a run resumes from. Resume from the run's "
                              f"DIR/checkpoints/last.ckpt, or {use_weights}")
    obj = load(p, mmap=mmap)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{key}={p} holds a {type(obj).__name__}, not a training checkpoint")
    if LIGHTNING_VERSION_KEY not in obj or not isinstance(obj.get("state_dict"), dict):
        if MMZOO_KEY in obj:
            what = "an mmzoo model file (weights and config, no training state)"
        else:
            n = sum(isinstance(v, torch.Tensor) for v in obj.values())
            what = (f"a bare state dict of {n} tensors (first keys: {list(obj)[:3]})" if n else
                    f"a dict with keys {sorted(map(str, obj))[:8]}")
        raise CheckpointError(f"{key}={p} is not a training checkpoint written by train.py: it is {what}, without "
                              f"Lightning's training state ('{LIGHTNING_VERSION_KEY}'). Resume from the run's "
                              f"DIR/checkpoints/last.ckpt, or {use_weights}")
    if "optimizer_states" not in obj or "loops" not in obj:
        raise CheckpointError(f"{key}={p} holds weights only (saved with weights_only=True / save_weights_only): "
                              f"it cannot resume the optimizer and schedule. Resume from a full checkpoint such as "
                              f"DIR/checkpoints/last.ckpt, or {use_weights}")
    if MMZOO_KEY not in obj:
        raise CheckpointError(f"{key}={p} is a Lightning checkpoint not written by mmzoo (no '{MMZOO_KEY}' entry "
                              f"with the model config); {use_weights}")
    _check_metadata(p, obj[MMZOO_KEY])
    return obj


def run_record(seed: Any, data: Mapping[str, Any], world_size: int, accumulate_grad_batches: int) -> dict[str, Any]:
    """What a checkpoint stores under ``mmzoo_run`` to compare a resuming run with (plain containers).

    Args:
        seed: the run's ``seed``.
        data: the run's ``data`` config, resolved.
        world_size: the number of processes.
        accumulate_grad_batches: batches per optimizer step.
    """
    return {"seed": seed, "data": _plain(dict(data)), "world_size": int(world_size),
            "accumulate_grad_batches": int(accumulate_grad_batches)}


def _flatten(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def run_config_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"data.batch_size: 32 in the checkpoint, 64 now"`` for each setting of :func:`run_record` that differs.
    Settings the checkpoint does not hold (written by an older mmzoo) are not compared; the entry's other
    keys (the run's name, its W&B id) neither.

    Args:
        stored: the checkpoint's ``mmzoo_run`` entry.
        current: :func:`run_record` of the resuming run.
    """
    common = set(stored) & set(current)
    a = _flatten({k: v for k, v in stored.items() if k in common}, "")
    b = _flatten({k: v for k, v in current.items() if k in common}, "")
    missing = object()
    diffs = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, missing), b.get(k, missing)
        if va != vb:
            shown = ["(not set)" if v is missing else repr(v) for v in (va, vb)]
            diffs.append(f"{k}: {shown[0]} in the checkpoint, {shown[1]} now")
    return diffs


def _writer_pattern(filename: Optional[str], extension: str) -> re.Pattern:
    """The names a ``ModelCheckpoint`` with this ``filename`` template writes: each ``{field}`` is any text,
    with Lightning's ``-vN`` suffix for repeated names."""
    template = filename or "epoch={epoch}-step={step}"
    parts = re.split(r"\{[^{}]*\}", template)
    body = ".+?".join(re.escape(s) for s in parts)
    return re.compile(f"^{body}(?:-v\\d+)?{re.escape(extension)}$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive but someone else's
        return True
    return True


def stale_files(folder: PathLike, writers: Iterable[Any], resume: Optional[Mapping[str, Any]] = None,
                resume_path: Optional[PathLike] = None) -> list[Path]:
    """What a crashed run left in its checkpoint folder that nothing will use or clean up:

    * temporary files ``.NAME.tmp-PID`` of :func:`atomic_write` whose process is gone;
    * when resuming (``resume`` is the checkpoint read), checkpoints named as a ``ModelCheckpoint`` of the
      run names them, in the folder that callback writes to and that the checkpoint's saved state of the
      same callback also wrote to, but that this state does not list (written after the checkpoint was
      saved, or whose deletion was interrupted). ``last`` files and ``resume_path`` are kept.

    Files with other names are never listed.

    Args:
        folder: the run's checkpoint folder.
        writers: the run's ``ModelCheckpoint`` callbacks (``dirpath``, ``filename``, ``FILE_EXTENSION``,
            ``CHECKPOINT_NAME_LAST``, ``state_key``).
        resume: the checkpoint the run resumes from, if any.
        resume_path: its path.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    out = []
    for f in sorted(folder.iterdir()):
        m = _TEMP_NAME.match(f.name)
        if m and f.is_file() and not _pid_alive(int(m.group("pid"))):
            out.append(f)
    if resume is None:
        return out
    states = resume.get("callbacks") or {}
    keep = {Path(resume_path).resolve()} if resume_path is not None else set()
    for cb in writers:
        dirpath = getattr(cb, "dirpath", None)
        state = states.get(getattr(cb, "state_key", None))
        if dirpath is None or not isinstance(state, dict) or Path(dirpath).resolve() != folder.resolve():
            continue
        if state.get("dirpath") is None or Path(state["dirpath"]).resolve() != folder.resolve():
            continue  # the checkpoint comes from another run's folder: nothing here is known to be an orphan
        listed = {Path(p).resolve() for p in (state.get("best_k_models") or {})}
        listed |= {Path(state[k]).resolve() for k in ("best_model_path", "kth_best_model_path", "last_model_path")
                   if state.get(k)}
        ext = getattr(cb, "FILE_EXTENSION", ".ckpt")
        pattern = _writer_pattern(getattr(cb, "filename", None), ext)
        last = re.compile(f"^{re.escape(getattr(cb, 'CHECKPOINT_NAME_LAST', 'last'))}(?:-v\\d+)?{re.escape(ext)}$")
        for f in sorted(folder.iterdir()):
            if (f.is_file() and pattern.match(f.name) and not last.match(f.name)
                    and f.resolve() not in listed | keep and f not in out):
                out.append(f)
    return out


def remove_stale_files(folder: PathLike, writers: Iterable[Any], resume: Optional[Mapping[str, Any]] = None,
                       resume_path: Optional[PathLike] = None) -> list[Path]:
    """Delete :func:`stale_files` and log each one; returns what was removed.

    Args:
        folder: the run's checkpoint folder.
        writers: the run's ``ModelCheckpoint`` callbacks.
        resume: the checkpoint the run resumes from, if any.
        resume_path: its path.
    """
    removed = []
    for f in stale_files(folder, writers, resume, resume_path):
        try:
            f.unlink()
        except FileNotFoundError:
            continue
        kind = "temporary file of an interrupted write" if _TEMP_NAME.match(f.name) else \
            "checkpoint the resumed run does not track (written after its checkpoint, or left by an interrupted clean-up)"
        log.warning("removed %s: %s", f, kind)
        removed.append(f)
    return removed


__all__ = [
    "Checkpoint", "CheckpointError", "MMZOO_KEY", "PRETRAINED_CFG_KEY", "RUN_KEY", "TASK_KEY", "LIGHTNING_PREFIX", "atomic_write", "atomic_write_bytes",
    "atomic_write_text", "save", "load", "describe_file", "is_safetensors", "read_checkpoint", "model_metadata",
    "add_lightning_prefix", "strip_lightning_prefix", "mmzoo_checkpoint", "check_weights_fit",
    "read_training_checkpoint", "run_record", "run_config_differences", "stale_files", "remove_stale_files",
    "temp_path",
]
