"""Multi-process training helpers: the FSDP wrapping policy of mmzoo models and the conversion of a
sharded (FSDP) checkpoint into one file that a single process loads.

    python train.py trainer=fsdp trainer.devices=8 trainer.num_nodes=2 ...
    python -m mmzoo.distributed consolidate RUN/checkpoints/last.ckpt RUN/checkpoints/last_full.ckpt
    python -c "import mmzoo; mmzoo.create_model(pretrained='RUN/checkpoints/last_full.ckpt')"
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Union

import torch

from .layers.block import Block


def transformer_wrap_policy() -> set[type[torch.nn.Module]]:
    """FSDP auto-wrap units: every transformer :class:`~mmzoo.layers.Block` is sharded (and gathered for
    its forward) on its own; the rest of the model (embeddings, heads, norms) forms the root unit."""
    return {Block}


def consolidate_checkpoint(sharded: Union[str, Path], output: Union[str, Path]) -> Path:
    """Turn the directory Lightning's FSDP writes with ``state_dict_type="sharded"`` into one ``.ckpt``
    file (``state_dict``, optimizer states, mmzoo metadata) that loads with ``torch.load`` and
    ``mmzoo.create_model(pretrained=output)`` in a single process. Runs without a process group."""
    from lightning.fabric.utilities.load import _load_distributed_checkpoint
    from lightning.pytorch.utilities.consolidate_checkpoint import _format_checkpoint

    sharded, output = Path(sharded), Path(output)
    if not sharded.is_dir():
        raise FileNotFoundError(f"{sharded} is not a sharded checkpoint directory (trainer=fsdp writes "
                                "DIR/checkpoints/*.ckpt as directories); a file checkpoint needs no conversion")
    checkpoint = _format_checkpoint(_load_distributed_checkpoint(sharded))
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, output)
    return output


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m mmzoo.distributed", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("consolidate", help="sharded FSDP checkpoint directory -> one .ckpt file")
    c.add_argument("sharded", type=Path)
    c.add_argument("output", type=Path)
    args = p.parse_args(argv)
    print(consolidate_checkpoint(args.sharded, args.output))


if __name__ == "__main__":
    main()
