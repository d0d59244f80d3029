"""The ``mmzoo`` command: small utilities around checkpoints and the registry.

    mmzoo models [PATTERN]           list model presets
    mmzoo export CKPT OUT.safetensors export a checkpoint's weights (config kept in the metadata)
    mmzoo export CKPT DIR            write a model folder: config.json, model.safetensors, preprocessing, model card
    mmzoo info CKPT                  describe a checkpoint (and the preprocessing it records)
    mmzoo plot RUN [RUN ...]         one PNG per logged metric with every run's curve (from the CSV logs)
    mmzoo compare RUN [RUN ...]      the runs' final metrics side by side
"""
from __future__ import annotations

import argparse
import sys
import unicodedata
from typing import Any


def printable(value: Any) -> str:
    """``str(value)`` with control characters (terminal escape sequences, carriage returns, bidi overrides)
    written as ``\\x..`` / ``\\u....`` escapes: a checkpoint is data, and its strings must not drive the
    terminal that prints them."""
    def escape(ch: str) -> str:
        code = ord(ch)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"

    return "".join(ch if unicodedata.category(ch)[0] != "C" else escape(ch) for ch in str(value))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmzoo", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("models", help="list model presets")
    p.add_argument("pattern", nargs="?", default="*")
    p = sub.add_parser("export", help="export checkpoint weights to safetensors, or a model folder")
    p.add_argument("ckpt")
    p.add_argument("out", help="OUT.safetensors, or a folder (a name without a suffix, or an existing folder)")
    p = sub.add_parser("info", help="describe a checkpoint")
    p.add_argument("ckpt")
    p = sub.add_parser("plot", help="draw the logged curves of runs, one PNG per metric")
    p.add_argument("runs", nargs="+", help="run directories (holding csv/metrics.csv)")
    p.add_argument("--out", default="plots", help="output directory for the PNGs (default: plots)")
    p.add_argument("--metrics", default="", help="regular expression selecting metric names, e.g. 'val/'")
    p = sub.add_parser("compare", help="print the final metrics of runs side by side")
    p.add_argument("runs", nargs="+", help="run directories (holding metrics.json or csv/metrics.csv)")
    p.add_argument("--metrics", default="", help="regular expression selecting metric names, e.g. 'test/'")
    args = parser.parse_args(argv)
    try:
        return _run(parser, args)
    except (OSError, ValueError) as e:  # a missing or unreadable checkpoint: one line naming the file
        parser.exit(1, f"error: {printable(e)}\n")


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.cmd == "models":
        from mmzoo import list_models

        print("\n".join(list_models(args.pattern)))
    elif args.cmd == "export":
        from pathlib import Path

        from mmzoo.convert import export_safetensors
        from mmzoo.hub import save_checkpoint_pretrained

        out = Path(args.out)
        if out.is_dir() or (not out.suffix and not out.exists()):
            path = save_checkpoint_pretrained(args.ckpt, out)
            print(f"wrote {path}/ (config.json, model.safetensors, preprocessor_config.json, README.md)")
            return 0
        if not args.out.endswith(".safetensors"):
            parser.error(f"OUT must end with .safetensors or name a folder, got {args.out}")
        path = export_safetensors(args.ckpt, args.out)
        print(f"wrote {path}")
    elif args.cmd == "info":
        from mmzoo.convert import read_checkpoint

        ckpt = read_checkpoint(args.ckpt)
        n = sum(v.numel() for v in ckpt.state_dict.values())
        print(f"format: {printable(ckpt.format)}\narch: {printable(ckpt.arch)}\nmodel: {printable(ckpt.model_name)}"
              f"\ntensors: {len(ckpt.state_dict)} ({n:,} values)")
        if ckpt.config:
            for k, v in ckpt.config.items():
                print(f"  {printable(k)}: {printable(v)}")
        if ckpt.pretrained_cfg:
            print("preprocessing:")
            for k, v in ckpt.pretrained_cfg.items():
                print(f"  {printable(k)}: {printable(v)}")
    elif args.cmd in ("plot", "compare"):
        from mmzoo import runs

        try:
            if args.cmd == "plot":
                for path in runs.plot(args.runs, args.out, args.metrics):
                    print(f"wrote {path}")
            else:
                print(runs.compare(args.runs, args.metrics))
        except (FileNotFoundError, ValueError) as e:
            print(f"mmzoo {args.cmd}: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
