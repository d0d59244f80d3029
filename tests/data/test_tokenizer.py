"""Tokenizers: CLIP ids identical to open_clip's, byte-level BPE training / round trip / file format."""
from __future__ import annotations

import collections
import functools
import inspect
import json
import random
import sys
import textwrap
import unicodedata
from collections import Counter

import pytest
import torch

from mmzoo.data import tokenizer as tokenizer_module
from mmzoo.data.tokenizer import ByteBPETokenizer, ClipTokenizer, Tokenizer, get_tokenizer

open_clip = pytest.importorskip("open_clip")

CAPTIONS = [
    "a photo of a cat",
    "A Photo Of A DOG.",
    "Don't stop!!! It's 3:45pm, isn't it? we'll they've I'm you'd she's",
    "  multiple   spaces\tand\nnewlines and trailing   ",
    "punctuation... (brackets) [square] {curly} --- !?;:/\\|@#$%^&*_+=~`",
    "numbers 1234567 3.14159 -42 1e-5 ½ ² Ⅻ",
    "café naïve résumé Ærøskøbing São Paulo",
    "cafe\u0301 with a decomposed accent",  # NFC-normalised like ftfy does
    "emoji 🐱🚀 👍🏽 ❤️ flag 🇫🇷 family 👨‍👩‍👧",
    "日本語のテキスト 中文 한국어 русский текст עברית العربية Ελληνικά",
    "html &amp; &lt;b&gt;bold&lt;/b&gt; &quot;q&quot; &#39;x&#39; x&amp;amp;lt;y",
    "the \u2018quoted\u2019 \u201cword\u201d don\u2019t",  # curly quotes straightened like ftfy does
    "ﬁne ﬂow ligatures, ＦＵＬＬ ｗｉｄｔｈ",
    "controls\x00\x07 and \x1b[31mred\x1b[0m terminal escapes",
    "<start_of_text> special tokens in text <END_OF_TEXT>",
    "",
    "   ",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "word " * 120,  # truncation
]


@pytest.fixture(scope="module")
def clip_tok() -> ClipTokenizer:
    return ClipTokenizer()


@pytest.fixture(scope="module")
def ref_tok():
    return open_clip.get_tokenizer("ViT-B-32")


# ---------------------------------------------------------------------------------------------------
# CLIP
# ---------------------------------------------------------------------------------------------------


def test_clip_ids_match_open_clip(clip_tok, ref_tok):
    ours = clip_tok(CAPTIONS)
    assert ours.dtype == torch.long and ours.shape == (len(CAPTIONS), 77)
    assert torch.equal(ours, open_clip.tokenize(CAPTIONS))
    assert torch.equal(ours, ref_tok(CAPTIONS))
    # single string -> one row, like open_clip
    assert torch.equal(clip_tok(CAPTIONS[2]), ref_tok(CAPTIONS[2]))
    for text in CAPTIONS:  # unpadded ids too, string by string
        assert clip_tok.encode(text) == ref_tok.encode(text), text


def test_clip_random_strings_match_open_clip(clip_tok, ref_tok):
    # mixed scripts, punctuation, entities and contractions; no Latin-1 pairs that ftfy could mistake for
    # mojibake (see test_clip_mojibake_needs_ftfy)
    rng = random.Random(0)
    pieces = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789     .,;:!?'\"-_()[]<>/&#%*+=\t\n")
    pieces += list("αβγδΩλπσ日本語中文한국어русскийعبريתאé") + ["🐱", "👍🏽", "&amp;", "&lt;", "don't", "I'm", "we'll", "’"]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 40))) for _ in range(300)]
    assert torch.equal(clip_tok(texts), ref_tok(texts))


def test_clip_pretokenizer_matches_regex_on_every_character(clip_tok, ref_tok):
    # open_clip splits with the third-party `regex` module (\p{L}, \p{N}); we build those classes from
    # unicodedata for the stdlib `re`. Compare the split of every assigned code point, each alone.
    # skipped: unassigned in this Python's Unicode version, surrogates, and \x1c-\x1f (whitespace for
    # str.split, so cleaning removes them, but not for `regex`)
    chars = [
        chr(c) for c in range(sys.maxunicode + 1)
        if unicodedata.category(chr(c)) not in ("Cn", "Cs") and chr(c) not in "\x1c\x1d\x1e\x1f"
    ]
    text = " ".join(chars)
    ours = clip_tok._pattern.findall(text)
    ref = ref_tok.pat.findall(text)
    assert len(ours) > 100_000
    assert ours == ref


@pytest.mark.parametrize("context_length", [2, 5, 16, 77, 100])
def test_clip_context_length(clip_tok, context_length):
    ours = clip_tok(CAPTIONS, context_length=context_length)
    assert ours.shape == (len(CAPTIONS), context_length)
    assert torch.equal(ours, open_clip.tokenize(CAPTIONS, context_length=context_length))
    for row, text in zip(ours, CAPTIONS):
        n = len(clip_tok.encode(text)) + 2
        assert row[0] == clip_tok.sot_token_id
        if n >= context_length:  # cut: EOT is forced into the last slot
            assert row[-1] == clip_tok.eot_token_id
            assert row[1:-1].tolist() == clip_tok.encode(text)[: context_length - 2]
        else:
            assert row[n - 1] == clip_tok.eot_token_id and (row[n:] == 0).all()
    # the tokenizer's own default
    assert ClipTokenizer(context_length=16)("a cat").shape == (1, 16)
    with pytest.raises(ValueError, match="context_length"):
        clip_tok("a cat", context_length=1)


def test_clip_attributes_and_decode(clip_tok):
    ref = open_clip.tokenizer._tokenizer
    assert clip_tok.vocab_size == 49408 == ref.vocab_size
    assert (clip_tok.sot_token_id, clip_tok.eot_token_id, clip_tok.pad_token_id) == (49406, 49407, 0)
    assert clip_tok.context_length == 77
    assert isinstance(clip_tok, Tokenizer)
    # EOT has the largest id: CLIP pools at argmax(ids)
    ids = clip_tok(CAPTIONS)
    assert (ids.argmax(-1) == (ids == clip_tok.eot_token_id).int().argmax(-1)).all()
    assert clip_tok.encode("a photo of a cat") == [320, 1125, 539, 320, 2368]
    assert clip_tok.decode(clip_tok.encode("A photo, of a CAT!")) == "a photo , of a cat ! "
    row = clip_tok("caf\u00e9 🐱")[0]
    assert clip_tok.decode(row[row > 0]) == ref.decode(row[row > 0].tolist())


def test_clip_mojibake_needs_ftfy(clip_tok, ref_tok):
    # documented difference: without ftfy we do not repair mojibake ("cafÃ©" is "café" read as Latin-1)
    pytest.importorskip("ftfy")
    text = "cafÃ© mojibake"
    assert clip_tok.encode(text) != ref_tok.encode(text)
    with_ftfy = ClipTokenizer(use_ftfy=True)
    assert torch.equal(with_ftfy([text, *CAPTIONS]), ref_tok([text, *CAPTIONS]))


def test_clip_missing_vocabulary_errors(tmp_path, monkeypatch):
    missing = tmp_path / "nope.txt.gz"
    with pytest.raises(FileNotFoundError, match="nope.txt.gz"):
        ClipTokenizer(bpe_path=missing)
    # the default is mmzoo's packaged copy, so model=clip needs no other package
    assert tokenizer_module._default_clip_bpe_path().parent.name == "assets"
    monkeypatch.setattr(tokenizer_module, "CLIP_BPE_FILENAME", "absent.txt.gz")
    monkeypatch.setattr(tokenizer_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="bpe_path"):
        ClipTokenizer()


def test_clip_reads_explicit_path(clip_tok):
    other = ClipTokenizer(bpe_path=open_clip.tokenizer.default_bpe())
    assert other.encode(CAPTIONS[2]) == clip_tok.encode(CAPTIONS[2])


# ---------------------------------------------------------------------------------------------------
# byte-level BPE
# ---------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def docstring_corpus() -> tuple[str, ...]:
    """A few hundred lines of real English: docstrings of some stdlib modules."""
    lines = []
    for module in (collections, json, textwrap, functools, random, inspect):
        for _, obj in sorted(inspect.getmembers(module), key=lambda kv: kv[0]):
            doc = inspect.getdoc(obj)
            if doc:
                lines.extend(line for line in doc.splitlines() if line.strip())
    return tuple(lines[:1500])


@pytest.fixture(scope="module")
def bpe() -> ByteBPETokenizer:
    return ByteBPETokenizer.train(docstring_corpus(), vocab_size=700)


TRICKY = [
    "",
    " ",
    "Hello, World!",
    "  leading and trailing spaces  ",
    "tabs\tand\r\nCRLF\n\n\nblank lines",
    "don't DON'T y'all",
    "emoji 🐱🚀👍🏽 family 👨‍👩‍👧 flag 🇫🇷",
    "日本語 中文 한국어 العربية cafe\u0301 café",
    "\x00\x01 control \x7f bytes \ufeff",
    "<start_of_text> <pad> <end_of_text> are plain text here",
    "lone surrogate \ud800 and \udfff",
    "x" * 300,
]


def test_bpe_round_trip(bpe):
    assert len(docstring_corpus()) > 300
    for text in [*docstring_corpus()[:200], *TRICKY]:
        ids = bpe.encode(text)
        assert all(0 <= i < bpe.vocab_size - len(bpe.special_tokens) for i in ids)  # never a special id
        assert bpe.decode(ids) == text
    rng = random.Random(1)
    for _ in range(200):  # random code points, surrogates included
        text = "".join(chr(rng.randrange(sys.maxunicode + 1)) for _ in range(rng.randint(0, 12)))
        assert bpe.decode(bpe.encode(text)) == text


def test_bpe_merges_compress(bpe):
    corpus = docstring_corpus()
    n_bytes = sum(len(t.encode()) for t in corpus)
    n_tokens = sum(len(bpe.encode(t)) for t in corpus)
    assert bpe.vocab_size == 700 and len(bpe.merges) == 700 - 256 - 3
    assert n_tokens < 0.5 * n_bytes
    # frequent words became single tokens, with the leading space
    assert len(bpe.encode(" the")) == 1 and bpe.token_to_str(bpe.encode(" the")[0]) == "Ġthe"


def test_bpe_training_is_deterministic():
    corpus = list(docstring_corpus()[:400])
    a = ByteBPETokenizer.train(corpus, vocab_size=400)
    shuffled = corpus[:]
    random.Random(0).shuffle(shuffled)
    b = ByteBPETokenizer.train(iter(shuffled), vocab_size=400)  # any iterable, any order
    assert a.merges == b.merges


def _naive_bpe(pieces: Counter, num_merges: int, min_frequency: int):
    """Reference: recount every pair after every merge; ties go to the smallest pair of ids."""
    words = {p: list(p.encode()) for p in pieces}
    merges = []
    for k in range(num_merges):
        counts = Counter()
        for piece, w in words.items():
            for pair in zip(w, w[1:]):
                counts[pair] += pieces[piece]
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        if counts[best] < min_frequency:
            break
        merges.append(best)
        for piece, w in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(256 + k)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[piece] = out
    return merges, words


def test_bpe_matches_naive_reference_training():
    # a small alphabet makes long words, overlapping pairs ("aaa") and many count ties
    rng = random.Random(0)
    vocab_words = ["".join(rng.choice("aab") for _ in range(rng.randint(1, 7))) for _ in range(60)]
    texts = [" ".join(rng.choice(vocab_words) for _ in range(rng.randint(1, 12))) for _ in range(200)]
    pieces = Counter()
    for t in texts:  # GPT-2 split of lower-case words separated by single spaces
        first, *rest = t.split(" ")
        pieces.update([first, *(" " + w for w in rest)])
    tok = ByteBPETokenizer.train(texts, vocab_size=256 + 3 + 60, min_frequency=2)
    merges, words = _naive_bpe(pieces, 60, min_frequency=2)
    assert tok.merges == merges
    # encoding by merge rank reproduces the segmentation training ended with
    for piece, w in words.items():
        assert tok.encode(piece) == w, piece


def test_bpe_stops_when_pairs_are_rare():
    tok = ByteBPETokenizer.train(["abc abc abc", "xyz"], vocab_size=1000)
    # pairs seen >= 2 times: a-b, b-c, ' '-a (then merged forms), never x-y or y-z
    assert 0 < len(tok.merges) < 10 and tok.vocab_size == 256 + len(tok.merges) + 3
    assert len(tok.encode("xyz")) == 3 and len(tok.encode(" abc")) == 1
    with pytest.raises(ValueError, match="vocab_size"):
        ByteBPETokenizer.train(["abc"], vocab_size=200)


def test_bpe_save_load(bpe, tmp_path):
    path = tmp_path / "sub" / "bpe.json"
    bpe.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["bpe.json"]  # no temp file left behind
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["special_tokens"] == ["<pad>", "<start_of_text>", "<end_of_text>"]
    assert len(data["vocab"]) == bpe.vocab_size and len(data["merges"]) == len(bpe.merges)
    # index = id; byte ids print as themselves when visible, space (0x20) as 'Ġ', NUL as 'Ā'
    assert data["vocab"][0x21:0x24] == ["!", '"', "#"] and data["vocab"][0x20] == "Ġ" and data["vocab"][0] == "Ā"
    loaded = ByteBPETokenizer.load(path)
    assert loaded.merges == bpe.merges and loaded.vocab_size == bpe.vocab_size
    for text in [*docstring_corpus()[:100], *TRICKY]:
        assert loaded.encode(text) == bpe.encode(text)
    assert torch.equal(loaded(TRICKY), bpe(TRICKY))

    bad = tmp_path / "bad.json"
    for index, error in [(bpe.vocab_size - 4, "corrupt"), (300, "missing from 'vocab'")]:
        tampered = {**data, "vocab": [*data["vocab"]]}
        tampered["vocab"][index] = "tampered"  # the last merge's token (unused by merges), then a used one
        bad.write_text(json.dumps(tampered), encoding="utf-8")
        with pytest.raises(ValueError, match=error):
            ByteBPETokenizer.load(bad)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        ByteBPETokenizer.load(tmp_path / "missing.json")


def test_bpe_batch_call(bpe):
    texts = ["Return a new dict.", "", "word " * 100]
    out = bpe(texts, context_length=16)
    assert out.shape == (3, 16) and out.dtype == torch.long
    pad, sot, eot = (bpe.vocab_size - 3, bpe.vocab_size - 2, bpe.vocab_size - 1)
    assert (bpe.pad_token_id, bpe.sot_token_id, bpe.eot_token_id) == (pad, sot, eot)
    ids = bpe.encode(texts[0])
    assert out[0].tolist() == [sot, *ids, eot] + [pad] * (16 - len(ids) - 2)
    assert out[1].tolist() == [sot, eot] + [pad] * 14
    assert out[2, 0] == sot and out[2, -1] == eot and out[2, 1:-1].tolist() == bpe.encode(texts[2])[:14]
    assert bpe(texts).shape == (3, 77)
    assert bpe.decode(out[0]) == "<start_of_text>Return a new dict.<end_of_text>" + "<pad>" * (14 - len(ids))
    assert bpe.decode(out[0], skip_special_tokens=True) == texts[0]


def test_bpe_without_pad_token_pads_with_zero():
    tok = ByteBPETokenizer.train(["ab ab ab"], vocab_size=300, special_tokens=("<start_of_text>", "<end_of_text>"),
                                 pad_token=None)
    assert tok.pad_token_id == 0 and tok("ab", context_length=6)[0].tolist()[-2:] == [0, 0]
    with pytest.raises(ValueError, match="special_tokens"):
        ByteBPETokenizer.train(["ab"], vocab_size=300, special_tokens=("<start_of_text>",))


# ---------------------------------------------------------------------------------------------------


def test_get_tokenizer(bpe, tmp_path):
    clip = get_tokenizer("clip")
    assert isinstance(clip, ClipTokenizer) and clip.context_length == 77
    assert get_tokenizer("clip", context_length=32)("a").shape == (1, 32)
    path = tmp_path / "bpe.json"
    bpe.save(path)
    loaded = get_tokenizer(str(path))
    assert isinstance(loaded, ByteBPETokenizer) and loaded.merges == bpe.merges
    assert isinstance(get_tokenizer(open_clip.tokenizer.default_bpe()), ClipTokenizer)
    with pytest.raises(ValueError, match="'clip'"):
        get_tokenizer("gpt2")
