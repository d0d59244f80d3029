"""Multi-process training helpers: the FSDP wrapping policy of mmzoo models and the conversion of a
sharded (FSDP) checkpoint into one file that a single process loads.

    python train.py trainer=fsdp trainer.devices=8 trainer.num_nodes=2 ...
    python -m mmzoo.distributed consolidate RUN/checkpoints/last.ckpt RUN/checkpoints/last_full.ckpt
    python -c "import mmzoo; mmzoo.create_model(pretrained='RUN/checkpoints/last_full.ckpt')"

A sharded directory is read without running anything stored in it (docs/run-contract.md): the
``.metadata`` pickle through an allow-list of globals, every other entry with ``weights_only=True``.
"""
from __future__ import annotations

import argparse
import math
import pickle
from pathlib import Path
from typing import Any, Union

import torch

from . import checkpoint as ckpt_lib
from .layers.block import Block
from .safe_pickle import restricted_load


def transformer_wrap_policy() -> set[type[torch.nn.Module]]:
    """FSDP auto-wrap units: every transformer :class:`~mmzoo.layers.Block` is sharded (and gathered for
    its forward) on its own; the rest of the model (embeddings, heads, norms) forms the root unit."""
    return {Block}


# the globals of a torch.distributed.checkpoint ``.metadata`` pickle (torch 2.3 - 2.11, written by Lightning's
# FSDP strategy and by dcp.save): its dataclasses, torch.Size, dtypes / layouts / memory formats, and the
# checkpoint id (a pathlib path). Checked against real checkpoints in tests/test_distributed.py.
_DCP_METADATA_CLASSES = ("Metadata", "MetadataIndex", "StorageMeta", "TensorStorageMetadata", "BytesStorageMetadata",
                         "ChunkStorageMetadata", "TensorProperties", "_MEM_FORMAT_ENCODING")
_PATH_CLASSES = ("Path", "PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath")


def _dcp_global(module: str, name: str) -> Any:
    import pathlib

    import torch.distributed.checkpoint.filesystem as dcp_fs
    import torch.distributed.checkpoint.metadata as dcp_md

    if module == "torch.distributed.checkpoint.metadata" and name in _DCP_METADATA_CLASSES:
        return getattr(dcp_md, name)
    if (module, name) == ("torch.distributed.checkpoint.filesystem", "_StorageInfo"):
        return dcp_fs._StorageInfo
    if (module, name) == ("torch.serialization", "_get_layout"):  # name -> torch layout, a table lookup
        return torch.serialization._get_layout
    if module == "torch":
        obj = torch.Size if name == "Size" else getattr(torch, name, None)
        if obj is torch.Size or isinstance(obj, (torch.dtype, torch.layout, torch.memory_format)):
            return obj
    if module == "pathlib" and name in _PATH_CLASSES:
        return getattr(pathlib, name)
    raise KeyError(name)


def read_sharded_metadata(folder: Union[str, Path]) -> Any:
    """The ``.metadata`` of a sharded checkpoint directory, unpickled with only the globals that format
    holds (:mod:`mmzoo.safe_pickle`), and checked: storage files are plain names inside ``folder`` and
    every byte range lies inside its file, and the tensors fit in the bytes stored (no allocation
    bomb). Raises ``UnsafePickleError`` for a payload, ``ValueError`` for anything else wrong."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

    folder = Path(folder)
    path = folder / ".metadata"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no .metadata file: not a sharded (torch.distributed.checkpoint) "
                                f"checkpoint directory")
    md = restricted_load(path, _dcp_global, "torch distributed checkpoint metadata")
    if not isinstance(md, Metadata) or not isinstance(md.state_dict_metadata, dict) \
            or not isinstance(md.storage_data, dict):
        raise ValueError(f"{path} holds a {type(md).__name__}, not torch.distributed.checkpoint Metadata")
    sizes: dict[str, int] = {}
    transformed = False
    for index, info in md.storage_data.items():
        if not isinstance(info, _StorageInfo):
            raise ValueError(f"{path}: storage entry {index!r} is a {type(info).__name__}")
        name = info.relative_path
        if not isinstance(name, str) or not name or name != Path(name).name or name in (".", ".."):
            raise ValueError(f"{path}: storage entry {getattr(index, 'fqn', index)!r} points at {name!r}, not a "
                             f"file of the checkpoint directory")
        if name not in sizes:
            file = folder / name
            if not file.is_file() or file.is_symlink():
                raise ValueError(f"{path}: storage file {name!r} is missing from {folder} (or is a link)")
            sizes[name] = file.stat().st_size
        if not (isinstance(info.offset, int) and isinstance(info.length, int)
                and 0 <= info.offset and 0 <= info.length and info.offset + info.length <= sizes[name]):
            raise ValueError(f"{path}: storage entry {getattr(index, 'fqn', index)!r} claims bytes "
                             f"[{info.offset}, {info.offset}+{info.length}) of {name} ({sizes[name]} bytes)")
        transformed |= bool(info.transform_descriptors)
    claimed = 0
    for fqn, item in md.state_dict_metadata.items():
        if isinstance(item, TensorStorageMetadata):
            if any(not isinstance(d, int) or d < 0 for d in item.size):
                raise ValueError(f"{path}: tensor {fqn!r} has the size {tuple(item.size)}")
            claimed += math.prod(item.size) * item.properties.dtype.itemsize
    if not transformed and claimed > sum(sizes.values()):
        raise ValueError(f"{path}: the tensors claim {claimed:,} bytes but the storage files hold "
                         f"{sum(sizes.values()):,}; the checkpoint is truncated or its metadata is forged")
    return md


def _safe_dcp_reader_planner(folder: Path):
    """A FileSystemReader handing out the ``.metadata`` read (first, outside torch's loader, whose error
    handling would hide the reason) by :func:`read_sharded_metadata`, and a planner
    loading the non-tensor entries with ``torch.load(weights_only=True)`` (torch's default planner uses
    ``weights_only=False`` for them, which runs a payload stored in a ``.distcp`` file)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint._nested_dict import set_element
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.metadata import StorageMeta

    metadata = read_sharded_metadata(folder)

    class Reader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            md = metadata
            if getattr(md, "storage_meta", None) is None:
                md.storage_meta = StorageMeta()
            md.storage_meta.load_id = self.load_id
            return md

    class Planner(_EmptyStateDictLoadPlanner):
        def load_bytes(self, read_item: Any, value: Any) -> None:
            fqn = read_item.dest_index.fqn
            try:
                obj = torch.load(value, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - UnpicklingError for a payload, others for garbage
                raise ValueError(f"{folder}: entry {fqn!r} does not load with torch.load(weights_only=True) "
                                 f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); refusing "
                                 f"it") from e
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[fqn], obj)
            else:
                self.state_dict[fqn] = obj

    return Reader(folder), Planner()


def check_sharded_checkpoint(folder: Union[str, Path]) -> None:
    """Check a sharded checkpoint directory before handing it to code that trusts it (torch's
    ``dcp.load``, Lightning's FSDP resume): its ``.metadata`` as :func:`read_sharded_metadata` does,
    every non-tensor entry with ``torch.load(weights_only=True)`` and ``meta.pt`` likewise. Tensors are
    not read. Raises naming the file and entry."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata
    from torch.distributed.checkpoint.planner import LoadPlan
    from torch.distributed.checkpoint.planner_helpers import _create_read_items

    folder = Path(folder)
    reader, planner = _safe_dcp_reader_planner(folder)
    md = reader.read_metadata()
    reader.set_up_storage_reader(md, True)
    planner.flatten_state_dict, planner.state_dict = False, {}  # no set_up_planner: tensors stay unallocated
    items = [r for fqn, item in md.state_dict_metadata.items() if isinstance(item, BytesStorageMetadata)
             for r in _create_read_items(fqn, item, None)]
    with _unwrapped():
        reader.read_data(LoadPlan(items), planner).wait()
    _load_lightning_meta(folder)


class _unwrapped:
    """Re-raise the first error inside torch's ``CheckpointException`` (a ``BaseException`` that prints
    a rank-by-rank traceback dump) as itself."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        from torch.distributed.checkpoint.api import CheckpointException

        if isinstance(exc, CheckpointException) and exc.failures:
            first, _ = next(iter(exc.failures.values()))
            raise first
        return False


def _load_lightning_meta(folder: Path) -> dict[str, Any]:
    from lightning.fabric.strategies.fsdp import _METADATA_FILENAME

    extra = folder / _METADATA_FILENAME
    if not extra.is_file():
        return {}
    obj = ckpt_lib.load(extra)  # weights_only=True; an error names the file and what it holds
    if not isinstance(obj, dict):
        raise ValueError(f"{extra} holds a {type(obj).__name__}, not the dict Lightning writes")
    return obj


def consolidate_checkpoint(sharded: Union[str, Path], output: Union[str, Path]) -> Path:
    """Turn the directory Lightning's FSDP writes with ``state_dict_type="sharded"`` into one ``.ckpt``
    file (``state_dict``, optimizer states, mmzoo metadata) that loads with ``torch.load`` and
    ``mmzoo.create_model(pretrained=output)`` in a single process. Runs without a process group.

    Nothing in the directory is run: ``.metadata`` is unpickled with an allow-list of globals
    (:func:`read_sharded_metadata`), the other entries and ``meta.pt`` with
    ``torch.load(weights_only=True)``; a payload raises naming the file.
    """
    from lightning.pytorch.utilities.consolidate_checkpoint import _format_checkpoint
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    sharded, output = Path(sharded), Path(output)
    if not sharded.is_dir():
        raise FileNotFoundError(f"{sharded} is not a sharded checkpoint directory (trainer=fsdp writes "
                                "DIR/checkpoints/*.ckpt as directories); a file checkpoint needs no conversion")
    reader, planner = _safe_dcp_reader_planner(sharded)
    checkpoint: dict[str, Any] = {}
    with _unwrapped():
        _load_state_dict(checkpoint, storage_reader=reader, planner=planner, no_dist=True)
    checkpoint.update(_load_lightning_meta(sharded))  # what Fabric keeps apart from weights and optimizers
    checkpoint = _format_checkpoint(checkpoint)
    return ckpt_lib.save(checkpoint, output)  # never a half-written file under the output name


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m mmzoo.distributed", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("consolidate", help="sharded FSDP checkpoint directory -> one .ckpt file")
    c.add_argument("sharded", type=Path)
    c.add_argument("output", type=Path)
    args = p.parse_args(argv)
    try:
        print(consolidate_checkpoint(args.sharded, args.output))
    except (OSError, ValueError, pickle.UnpicklingError) as e:  # a bad directory: one line, no traceback
        p.exit(1, f"error: {e}\n")


if __name__ == "__main__":
    main()
