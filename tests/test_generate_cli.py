"""`python -m mmzoo.generate`: literal prompts, options checked with errors naming the key, no silent cuts
to the context length, speculative decoding (greedy and sampling) from the command line."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

import mmzoo
from mmzoo.convert import MMZOO_KEY, model_metadata
from mmzoo.data.tokenizer import ByteBPETokenizer
from mmzoo.generate import main, parse_args

CORPUS = ["Return the popped value. Raise KeyError if empty.", "Return a new list of the items.",
          "the quick brown fox jumps over the lazy dog"] * 5


def _save(model, path: Path, tok=None) -> Path:
    ckpt = {MMZOO_KEY: model_metadata(model), "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}
    if tok is not None:
        with tempfile.TemporaryDirectory() as d:
            tok.save(Path(d) / "tokenizer.json")
            ckpt["tokenizer"] = (Path(d) / "tokenizer.json").read_text(encoding="utf-8")
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """A target GPT, a smaller draft with the same tokenizer, a ViT, and a draft with another tokenizer."""
    d = tmp_path_factory.mktemp("generate")
    tok = ByteBPETokenizer.train(CORPUS, vocab_size=300)
    torch.manual_seed(0)
    target = mmzoo.create_model("gpt_nano", vocab_size=tok.vocab_size, context_length=32)
    draft = mmzoo.create_model("gpt_nano", vocab_size=tok.vocab_size, context_length=32, depth=1, embed_dim=16)
    for m in (target, draft):  # varied next-token laws (a random-init LM repeats one token)
        for p in m.parameters():
            p.data.normal_(std=0.3)
    other_tok = ByteBPETokenizer.train(CORPUS[:1], vocab_size=300)
    other = mmzoo.create_model("gpt_nano", vocab_size=tok.vocab_size, context_length=32, depth=1, embed_dim=16)
    vit = mmzoo.create_model("vit_nano_patch4_32")
    vit.model_name = "vit_nano_patch4_32"
    return dict(target=_save(target, d / "target.ckpt", tok), draft=_save(draft, d / "draft.ckpt", tok),
                other=_save(other, d / "other.ckpt", other_tok), vit=_save(vit, d / "vit.ckpt"), tok=tok,
                model=target)


def _run(capsys, *args):
    capsys.readouterr()
    assert main(list(args)) == 0
    captured = capsys.readouterr()
    return captured.out.rstrip("\n"), captured.err


@pytest.mark.parametrize("prompt", ["123", "echo ${HOME}", "x ${oc.env:HOME}", "a=b", "null", ""])
def test_prompts_are_literal_text(ckpts, capsys, prompt):
    out, _ = _run(capsys, f"ckpt_path={ckpts['target']}", f"prompt={prompt}", "max_new_tokens=3")
    assert out.startswith(prompt) and len(out) > len(prompt)
    if "HOME" in prompt and os.environ.get("HOME"):
        assert os.environ["HOME"] not in out[:len(prompt)]
    # the continuation is the model's greedy continuation of exactly that text
    tok, model = ckpts["tok"], ckpts["model"].eval()
    ids = torch.tensor([tok.encode(prompt) or [tok.eot_token_id]])
    ref = model.generate(ids, 3, eot_token_id=tok.eot_token_id)[0, ids.shape[1]:].tolist()
    assert out[len(prompt):] == tok.decode([t for t in ref if t != tok.pad_token_id], skip_special_tokens=True)


@pytest.mark.parametrize("arg,message", [
    ("max_new_tokens=-1", "max_new_tokens=-1: expected an integer >= 1"),
    ("max_new_tokens=0", "max_new_tokens=0: expected an integer >= 1"),
    ("max_new_tokens=abc", "max_new_tokens='abc': expected an integer"),
    ("num_beams=0", "num_beams=0: expected an integer >= 1"),
    ("num_draft_tokens=0", "num_draft_tokens=0"),
    ("top_p=0", "top_p=0: expected a number in (0.0, 1.0]"),
    ("temperature=-1", "temperature=-1: expected a number >= 0.0"),
    ("strategy=nucleus", "strategy='nucleus': valid choices are ['greedy', 'sample', 'beam']"),
    ("stop={a: 1}", "stop={'a': 1}: expected a list of strings"),
    ("colour=red", "unknown key 'colour'; valid keys"),
    ("prompt", "arguments are key=value pairs"),
])
def test_bad_options_name_the_key(arg, message):
    with pytest.raises(ValueError) as e:
        parse_args(["ckpt_path=x.ckpt", arg])
    assert message in str(e.value)
    with pytest.raises(SystemExit, match="mmzoo.generate: "):
        main(["ckpt_path=x.ckpt", arg])


def test_option_values_parse(ckpts):
    cfg = parse_args(["temperature=1e-3", "top_k=5", 'stop=["\\n\\n", "."]', "draft_ckpt_path=null", "seed=3"])
    assert cfg["temperature"] == 0.001 and cfg["top_k"] == 5 and cfg["stop"] == ["\n\n", "."]
    assert cfg["draft_ckpt_path"] is None and cfg["seed"] == 3


def test_too_many_new_tokens_is_an_error_naming_the_context_length(ckpts, capsys):
    with pytest.raises(SystemExit, match=r"max_new_tokens=500 does not fit: the prompt is \d+ tokens and the model "
                                         r"in ckpt_path has context_length 32; use max_new_tokens <= \d+"):
        main([f"ckpt_path={ckpts['target']}", "prompt=Return the", "max_new_tokens=500"])
    # the largest value that fits runs
    n = 32 - len(ckpts["tok"].encode("Return the"))
    _run(capsys, f"ckpt_path={ckpts['target']}", "prompt=Return the", f"max_new_tokens={n}")


def test_non_language_model_checkpoints_get_clear_errors(ckpts):
    with pytest.raises(SystemExit, match=r"draft_ckpt_path=.*vit.ckpt holds a 'vit' model .*not a language model"):
        main([f"ckpt_path={ckpts['target']}", f"draft_ckpt_path={ckpts['vit']}", "prompt=a", "max_new_tokens=4"])
    with pytest.raises(SystemExit, match=r"ckpt_path=.*vit.ckpt holds a 'vit' model"):
        main([f"ckpt_path={ckpts['vit']}", "prompt=a", "max_new_tokens=4"])
    with pytest.raises(SystemExit, match="draft was trained with another tokenizer"):
        main([f"ckpt_path={ckpts['target']}", f"draft_ckpt_path={ckpts['other']}", "prompt=a", "max_new_tokens=4"])
    with pytest.raises(SystemExit, match="draft_ckpt_path='nowhere.ckpt' is not a checkpoint file"):
        main([f"ckpt_path={ckpts['target']}", "draft_ckpt_path=nowhere.ckpt", "prompt=a", "max_new_tokens=4"])
    with pytest.raises(SystemExit, match="strategy=greedy or strategy=sample, not beam"):
        main([f"ckpt_path={ckpts['target']}", f"draft_ckpt_path={ckpts['draft']}", "strategy=beam", "prompt=a", "max_new_tokens=4"])


def test_speculative_decoding_from_the_cli(ckpts, capsys):
    base = [f"ckpt_path={ckpts['target']}", "prompt=Return the", "max_new_tokens=12"]
    greedy, _ = _run(capsys, *base)
    spec, err = _run(capsys, *base, f"draft_ckpt_path={ckpts['draft']}", "num_draft_tokens=3")
    assert spec == greedy and "speculative decoding (greedy): acceptance rate" in err
    sampled = [_run(capsys, *base, f"draft_ckpt_path={ckpts['draft']}", "strategy=sample", "top_k=20",
                    f"seed={s}") for s in (0, 0, 1)]
    assert "speculative decoding (sample)" in sampled[0][1]
    assert sampled[0][0] == sampled[1][0] and sampled[0][0].startswith("Return the")  # seeded
    assert sampled[0][0] != sampled[2][0]
