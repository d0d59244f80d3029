"""Text generation CLI: ``python -m mmzoo.generate ckpt_path=CKPT prompt="Return the"``.

Loads a language model trained with ``task=language_modeling`` (the checkpoint carries its config and
its tokenizer) and prints the continuation of ``prompt``. Options (``key=value``):

    ckpt_path            mmzoo checkpoint of a decoder-only (GPT) or encoder-decoder (T5) model
    prompt               text to continue, taken literally (T5: the encoder input; decoding starts from SOT)
    max_new_tokens=64    tokens to generate (>= 1; must fit in the model's context_length with the prompt)
    strategy=greedy      greedy | sample | beam
    temperature=1.0 top_k=0 top_p=1.0 repetition_penalty=1.0 num_beams=4
    stop=[]              extra stop strings, each encoded to one token id (e.g. stop=["\\n\\n"])
    draft_ckpt_path=     a smaller decoder-only model sharing the tokenizer: speculative decoding
                         (strategy greedy or sample; the output keeps the target model's law)
    num_draft_tokens=4   speculative decoding: tokens proposed per round
    tokenizer=           a ByteBPETokenizer .json (default: the one stored in the checkpoint)
    seed=0               sampling seed

Values are literal: ``prompt``, ``ckpt_path``, ``draft_ckpt_path`` and ``tokenizer`` are taken as
written (``prompt=123`` is the text "123"; ``${...}`` is not interpolated), the other values are read as
numbers (``stop`` is a YAML list of strings, ``stop=["\\n\\n"]``).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
import yaml

DEFAULTS: dict[str, Any] = dict(
    ckpt_path=None, prompt="", max_new_tokens=64, strategy="greedy", temperature=1.0, top_k=0, top_p=1.0,
    repetition_penalty=1.0, num_beams=4, stop=[], draft_ckpt_path=None, num_draft_tokens=4, tokenizer=None, seed=0)
TEXT_KEYS = ("prompt", "ckpt_path", "draft_ckpt_path", "tokenizer")  # taken verbatim, never parsed
STRATEGIES = ("greedy", "sample", "beam")


def _int(key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{key}={value!r}: expected an integer >= {low}")
    return value


def _float(key: str, value: Any, low: float, high: float = float("inf"), low_open: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if not ok or not (value > low if low_open else value >= low) or value > high:
        interval = f"{'(' if low_open else '['}{low}, {high}]" if high != float("inf") else \
            f"{'>' if low_open else '>='} {low}"
        raise ValueError(f"{key}={value!r}: expected a number {'in ' if high != float('inf') else ''}{interval}")
    return float(value)


def _number(raw: str) -> Any:
    """``"3"`` -> 3, ``"1e-3"`` -> 0.001; anything else stays text (and fails validation, naming the key)."""
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def parse_args(argv: Sequence[str]) -> dict[str, Any]:
    """``key=value`` arguments -> validated options (see the module docstring); errors name the key."""
    cfg = dict(DEFAULTS)
    for arg in argv:
        key, sep, raw = arg.partition("=")
        if not sep:
            raise ValueError(f"arguments are key=value pairs, got {arg!r}; valid keys: {sorted(DEFAULTS)}")
        if key not in DEFAULTS:
            raise ValueError(f"unknown key {key!r}; valid keys: {sorted(DEFAULTS)}")
        if key in TEXT_KEYS or key == "strategy":
            cfg[key] = raw if (key in ("prompt", "strategy") or raw not in ("", "null", "None")) else None
        elif key == "stop":
            try:
                cfg[key] = yaml.safe_load(raw) if raw else []
            except yaml.YAMLError as e:
                raise ValueError(f"stop={raw!r} is not a YAML list of strings: {e}") from None
        else:
            cfg[key] = _number(raw)
    cfg["max_new_tokens"] = _int("max_new_tokens", cfg["max_new_tokens"], 1)
    cfg["num_beams"] = _int("num_beams", cfg["num_beams"], 1)
    cfg["num_draft_tokens"] = _int("num_draft_tokens", cfg["num_draft_tokens"], 1)
    cfg["top_k"] = _int("top_k", cfg["top_k"], 0)
    cfg["seed"] = _int("seed", cfg["seed"], 0)
    cfg["temperature"] = _float("temperature", cfg["temperature"], 0.0)
    cfg["top_p"] = _float("top_p", cfg["top_p"], 0.0, 1.0, low_open=True)
    cfg["repetition_penalty"] = _float("repetition_penalty", cfg["repetition_penalty"], 0.0, low_open=True)
    if cfg["strategy"] not in STRATEGIES:
        raise ValueError(f"strategy={cfg['strategy']!r}: valid choices are {list(STRATEGIES)}")
    stop = cfg["stop"]
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, (str, int, float)) and not isinstance(s, bool)
                                             for s in stop):
        raise ValueError(f"stop={stop!r}: expected a list of strings, e.g. stop=['\\n\\n']")
    cfg["stop"] = [str(s) for s in stop]
    return cfg


def load_tokenizer(ckpt_path: str, tokenizer: Optional[str] = None):
    """The tokenizer saved in an LM checkpoint, or the ``tokenizer`` .json given instead."""
    from .data.tokenizer import ByteBPETokenizer, get_tokenizer

    if tokenizer:
        return get_tokenizer(tokenizer)
    text = _stored_tokenizer(ckpt_path)
    if text is None:
        raise ValueError(f"{ckpt_path} holds no tokenizer (not written by task=language_modeling); "
                         "pass tokenizer=PATH.json")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "tokenizer.json"
        path.write_text(text, encoding="utf-8")
        return ByteBPETokenizer.load(path)


def _stored_tokenizer(ckpt_path: str) -> Optional[str]:
    if Path(ckpt_path).suffix == ".safetensors":
        return None
    from .checkpoint import load

    ckpt = load(ckpt_path, mmap=True)  # only the tokenizer entry is read; the tensors stay on disk
    text = ckpt.get("tokenizer") if isinstance(ckpt, dict) else None
    return text if isinstance(text, str) else None


def _load_lm(key: str, path: Optional[str]):
    """The language model in checkpoint ``path`` (option ``key``), or an error naming what it holds."""
    from . import create_model
    from .models.language import TransformerLM

    if not path or not Path(path).is_file():
        raise FileNotFoundError(f"{key}={path!r} is not a checkpoint file; pass {key}=DIR/checkpoints/last.ckpt")
    model = create_model(pretrained=path).eval()
    if not isinstance(model, TransformerLM):
        raise ValueError(f"{key}={path} holds a {getattr(model, 'arch_name', type(model).__name__)!r} model "
                         f"({getattr(model, 'model_name', None)}), not a language model: train one with model=gpt "
                         "(or model=t5)")
    return model


def _check_fits(key: str, model, prompt_len: int, max_new_tokens: int) -> None:
    """A too-long request is an error naming the context length, never cut silently."""
    if model.pos_embed is None:
        return  # relative / rotary positions: no table to run past
    room = model.cfg.context_length - prompt_len
    if room < 1:
        raise ValueError(f"the prompt is {prompt_len} tokens but the model in {key} has context_length "
                         f"{model.cfg.context_length}: shorten the prompt")
    if max_new_tokens > room:
        raise ValueError(f"max_new_tokens={max_new_tokens} does not fit: the prompt is {prompt_len} tokens and the "
                         f"model in {key} has context_length {model.cfg.context_length}; use max_new_tokens <= {room}")


def generate(cfg: Mapping[str, Any]) -> str:
    """Continuation of ``cfg["prompt"]`` (the generated text only); ``cfg`` as :func:`parse_args` returns."""
    model = _load_lm("ckpt_path", cfg["ckpt_path"])
    if model.cfg.kind == "encoder":
        raise ValueError(f"ckpt_path={cfg['ckpt_path']} holds an encoder-only model (kind='encoder', BERT), which "
                         "does not generate: use a model=gpt or model=t5 checkpoint")
    tok = load_tokenizer(cfg["ckpt_path"], cfg["tokenizer"])
    ids = tok.encode(cfg["prompt"])
    stop_ids = []
    for s in cfg["stop"]:
        enc = tok.encode(s)
        if len(enc) != 1:
            raise ValueError(f"stop string {s!r} is {len(enc)} tokens; each stop must be a single token")
        stop_ids.append(enc[0])
    gen = torch.Generator().manual_seed(cfg["seed"])
    kw = dict(eot_token_id=tok.eot_token_id, pad_token_id=tok.pad_token_id, temperature=cfg["temperature"],
              top_k=cfg["top_k"], top_p=cfg["top_p"], repetition_penalty=cfg["repetition_penalty"],
              stop_token_ids=stop_ids, num_beams=cfg["num_beams"], generator=gen)
    n = cfg["max_new_tokens"]
    if model.cfg.kind == "encoder_decoder":
        if cfg["draft_ckpt_path"]:
            raise ValueError("draft_ckpt_path: speculative decoding needs a decoder-only target (model=gpt); "
                             f"ckpt_path={cfg['ckpt_path']} is an encoder-decoder model")
        prompt = torch.tensor([[tok.sot_token_id]])
        _check_fits("ckpt_path", model, 1, n)
        out = model.generate(prompt, n, cfg["strategy"], encoder_tokens=torch.tensor([ids or [tok.eot_token_id]]), **kw)
    else:
        prompt = torch.tensor([ids or [tok.eot_token_id]])  # an empty prompt starts a new document
        _check_fits("ckpt_path", model, prompt.shape[1], n)
        if cfg["draft_ckpt_path"]:
            out = _speculative(cfg, model, tok, prompt, stop_ids, gen)
        else:
            out = model.generate(prompt, n, cfg["strategy"], **kw)
    new = [t for t in out[0, prompt.shape[1]:].tolist() if t != tok.pad_token_id]
    return tok.decode(new, skip_special_tokens=True)


def _speculative(cfg: Mapping[str, Any], model, tok, prompt: torch.Tensor, stop_ids: list[int],
                 gen: torch.Generator) -> torch.Tensor:
    if cfg["strategy"] == "beam":
        raise ValueError("draft_ckpt_path: speculative decoding runs strategy=greedy or strategy=sample, not beam")
    if cfg["repetition_penalty"] != 1.0:
        raise ValueError("draft_ckpt_path: speculative decoding does not apply repetition_penalty; leave it at 1.0")
    draft = _load_lm("draft_ckpt_path", cfg["draft_ckpt_path"])
    if draft.cfg.kind != "decoder":
        raise ValueError(f"draft_ckpt_path={cfg['draft_ckpt_path']} holds a {draft.cfg.kind!r} language model; the "
                         "draft must be decoder-only (model=gpt)")
    if draft.cfg.vocab_size != model.cfg.vocab_size:
        raise ValueError(f"draft_ckpt_path: the draft's vocab_size {draft.cfg.vocab_size} differs from the target's "
                         f"{model.cfg.vocab_size}; train both with the same tokenizer")
    if not cfg["tokenizer"]:
        theirs = _stored_tokenizer(cfg["draft_ckpt_path"])
        if theirs is not None and theirs != _stored_tokenizer(cfg["ckpt_path"]):
            raise ValueError("draft_ckpt_path: the draft was trained with another tokenizer than ckpt_path's; "
                             "train both on the same data (same data.vocab_size)")
    _check_fits("draft_ckpt_path", draft, prompt.shape[1], cfg["max_new_tokens"])
    out, stats = model.generate_speculative(
        draft, prompt, cfg["max_new_tokens"], cfg["num_draft_tokens"], cfg["strategy"], cfg["temperature"],
        cfg["top_k"], cfg["top_p"], gen, [tok.eot_token_id, *stop_ids], tok.pad_token_id)
    print(f"# speculative decoding ({cfg['strategy']}): acceptance rate {stats.acceptance_rate:.2f}, "
          f"{stats.target_calls} target forwards for {stats.new_tokens} tokens", file=sys.stderr)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_args(args)
        text = generate(cfg)
    except (ValueError, FileNotFoundError) as e:  # bad options or files: one line naming what to fix
        raise SystemExit(f"mmzoo.generate: {e}") from None
    print(cfg["prompt"] + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
