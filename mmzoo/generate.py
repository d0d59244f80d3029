"""Text generation CLI: ``python -m mmzoo.generate ckpt_path=CKPT prompt="Return the"``.

Loads a language model trained with ``task=language_modeling`` (the checkpoint carries its config and
its tokenizer) and prints the continuation of ``prompt``. Options (``key=value``):

    ckpt_path            mmzoo checkpoint of a decoder-only (GPT) or encoder-decoder (T5) model
    prompt               text to continue (T5: the encoder input; decoding starts from SOT)
    max_new_tokens=64    tokens to generate
    strategy=greedy      greedy | sample | beam
    temperature=1.0 top_k=0 top_p=1.0 repetition_penalty=1.0 num_beams=4
    stop=[]              extra stop strings, each encoded to one token id (e.g. stop=["\\n\\n"])
    draft_ckpt_path=     greedy only: a smaller decoder-only model for speculative decoding
    num_draft_tokens=4   speculative decoding: tokens proposed per round
    tokenizer=           a ByteBPETokenizer .json (default: the one stored in the checkpoint)
    seed=0               sampling seed
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from omegaconf import OmegaConf

DEFAULTS = dict(ckpt_path=None, prompt="", max_new_tokens=64, strategy="greedy", temperature=1.0, top_k=0, top_p=1.0,
                repetition_penalty=1.0, num_beams=4, stop=[], draft_ckpt_path=None, num_draft_tokens=4,
                tokenizer=None, seed=0)


def load_tokenizer(ckpt_path: str, tokenizer: Optional[str] = None):
    """The tokenizer saved in an LM checkpoint, or the ``tokenizer`` .json given instead."""
    from .data.tokenizer import ByteBPETokenizer, get_tokenizer

    if tokenizer:
        return get_tokenizer(tokenizer)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if "tokenizer" not in ckpt:
        raise ValueError(f"{ckpt_path} holds no tokenizer (not written by task=language_modeling); "
                         "pass tokenizer=PATH.json")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "tokenizer.json"
        path.write_text(ckpt["tokenizer"], encoding="utf-8")
        return ByteBPETokenizer.load(path)


def generate(cfg: Any) -> str:
    """Continuation of ``cfg.prompt`` (the generated text only)."""
    from . import create_model

    if not cfg.ckpt_path or not Path(cfg.ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path!r} is not a checkpoint file; pass ckpt_path=DIR/checkpoints/last.ckpt")
    tok = load_tokenizer(cfg.ckpt_path, cfg.tokenizer)
    model = create_model(pretrained=cfg.ckpt_path).eval()
    ids = tok.encode(cfg.prompt)
    stop_ids = []
    for s in cfg.stop:
        enc = tok.encode(s)
        if len(enc) != 1:
            raise ValueError(f"stop string {s!r} is {len(enc)} tokens; each stop must be a single token")
        stop_ids.append(enc[0])
    gen = torch.Generator().manual_seed(int(cfg.seed))
    kw = dict(eot_token_id=tok.eot_token_id, pad_token_id=tok.pad_token_id, temperature=cfg.temperature,
              top_k=cfg.top_k, top_p=cfg.top_p, repetition_penalty=cfg.repetition_penalty, stop_token_ids=stop_ids,
              num_beams=cfg.num_beams, generator=gen)
    if model.cfg.kind == "encoder_decoder":
        prompt = torch.tensor([[tok.sot_token_id]])
        out = model.generate(prompt, cfg.max_new_tokens, cfg.strategy, encoder_tokens=torch.tensor([ids or [tok.eot_token_id]]), **kw)
    else:
        prompt = torch.tensor([ids or [tok.eot_token_id]])  # an empty prompt starts a new document
        if cfg.draft_ckpt_path:
            if cfg.strategy != "greedy":
                raise ValueError("speculative decoding (draft_ckpt_path) reproduces greedy decoding: use strategy=greedy")
            draft = create_model(pretrained=cfg.draft_ckpt_path).eval()
            out, stats = model.generate_speculative(draft, prompt, cfg.max_new_tokens, cfg.num_draft_tokens,
                                                    [tok.eot_token_id, *stop_ids])
            print(f"# speculative decoding: acceptance rate {stats.acceptance_rate:.2f}, "
                  f"{stats.target_calls} target forwards", file=sys.stderr)
        else:
            out = model.generate(prompt, cfg.max_new_tokens, cfg.strategy, **kw)
    new = [t for t in out[0, prompt.shape[1]:].tolist() if t != tok.pad_token_id]
    return tok.decode(new, skip_special_tokens=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    bad = [a for a in args if "=" not in a]
    if bad:
        raise SystemExit(f"arguments are key=value pairs, got {bad}; valid keys: {sorted(DEFAULTS)}")
    cfg = OmegaConf.merge(OmegaConf.create(DEFAULTS), OmegaConf.from_dotlist(args))
    unknown = sorted(set(cfg.keys()) - set(DEFAULTS))
    if unknown:
        raise SystemExit(f"unknown keys {unknown}; valid keys: {sorted(DEFAULTS)}")
    text = generate(cfg)
    print(cfg.prompt + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
