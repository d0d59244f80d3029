"""The ``mmzoo`` command: small utilities around checkpoints and the registry.

    mmzoo models [PATTERN]           list model presets
    mmzoo export CKPT OUT.safetensors export a checkpoint's weights (config kept in the metadata)
    mmzoo info CKPT                  describe a checkpoint
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmzoo", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("models", help="list model presets")
    p.add_argument("pattern", nargs="?", default="*")
    p = sub.add_parser("export", help="export checkpoint weights to safetensors")
    p.add_argument("ckpt")
    p.add_argument("out")
    p = sub.add_parser("info", help="describe a checkpoint")
    p.add_argument("ckpt")
    args = parser.parse_args(argv)

    if args.cmd == "models":
        from mmzoo import list_models

        print("\n".join(list_models(args.pattern)))
    elif args.cmd == "export":
        from mmzoo.convert import export_safetensors

        if not args.out.endswith(".safetensors"):
            parser.error(f"OUT must end with .safetensors, got {args.out}")
        path = export_safetensors(args.ckpt, args.out)
        print(f"wrote {path}")
    elif args.cmd == "info":
        from mmzoo.convert import read_checkpoint

        ckpt = read_checkpoint(args.ckpt)
        n = sum(v.numel() for v in ckpt.state_dict.values())
        print(f"format: {ckpt.format}\narch: {ckpt.arch}\nmodel: {ckpt.model_name}\ntensors: "
              f"{len(ckpt.state_dict)} ({n:,} values)")
        if ckpt.config:
            for k, v in ckpt.config.items():
                print(f"  {k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
