"""Text tokenizers: a trainable byte-level BPE and a reader for CLIP's BPE vocabulary.

Both share one batch API, so the rest of mmzoo can take either::

    tok = get_tokenizer("clip")               # or get_tokenizer("path/to/bpe.json")
    ids = tok(["a photo of a cat", "a dog"])  # LongTensor (2, 77): [SOT] + tokens + [EOT], padded

`ClipTokenizer` reads ``bpe_simple_vocab_16e6.txt.gz`` (shipped by the ``open_clip`` package) and gives
the same ids as ``open_clip.tokenize`` (without ftfy, except for mojibake: see `ClipTokenizer`). `ByteBPETokenizer` learns its merges from a corpus and stores
everything in one JSON file; it encodes any string (every byte is a base symbol) and decodes it back
exactly.

Both pre-tokenise with the standard library's ``re``, which has no ``\\p{L}``: the letter and number
classes are built once from ``unicodedata`` (so their Unicode version is that of the running Python).
"""
from __future__ import annotations

import abc


import gzip
import heapq
import html
import importlib.util
import json
import os
import re
import sys
import unicodedata
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import torch

from ..checkpoint import atomic_write_text

DEFAULT_CONTEXT_LENGTH = 77  # every OpenAI CLIP model
SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
PAD_TOKEN = "<pad>"
CLIP_BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
# CLIP keeps the first 49152 - 256 - 2 merges of the file: 256 bytes + 256 `</w>` bytes + 48894 merges
# + SOT + EOT = 49408 ids
CLIP_NUM_MERGES = 49152 - 256 - 2
_END_OF_WORD = "</w>"
BYTE_BPE_FORMAT = "mmzoo-byte-bpe"
BYTE_BPE_VERSION = 1
_BYTE_BPE_KEYS = ("pattern", "special_tokens", "sot_token", "eot_token", "pad_token", "context_length", "vocab", "merges")

Ids = Union[Sequence[int], torch.Tensor]


# ----------------------------------------------------------------------------------------------------
# shared pieces: byte <-> printable unicode, unicode character classes
# ----------------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def byte_to_unicode() -> dict[int, str]:
    """Map every byte to a printable, non-whitespace character (the GPT-2/CLIP convention).

    Bytes that are already visible Latin-1 characters ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for
    themselves; the other 68 (controls, space, NBSP, soft hyphen) take the code points 256, 257, ...
    in byte order. Insertion order matters: CLIP's vocabulary lists the visible bytes first.
    """
    visible = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in visible}
    hidden = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + i) for i, b in enumerate(hidden)})
    return table


@lru_cache(maxsize=None)
def unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_unicode().items()}


def _class_body(codepoints: list[int]) -> str:
    """A ``re`` character-class body (no brackets) covering ``codepoints`` (sorted), as ranges."""
    parts, start, prev = [], codepoints[0], codepoints[0]
    for c in codepoints[1:] + [-2]:
        if c == prev + 1:
            prev = c
            continue
        parts.append(f"\\U{start:08x}" if start == prev else f"\\U{start:08x}-\\U{prev:08x}")
        start = prev = c
    return "".join(parts)


@lru_cache(maxsize=None)
def _unicode_classes() -> tuple[str, str]:
    """Class bodies for ``\\p{L}`` (letters) and ``\\p{N}`` (numbers); ~0.2 s once per process."""
    letters, numbers = [], []
    for c in range(sys.maxunicode + 1):
        major = unicodedata.category(chr(c))[0]
        if major == "L":
            letters.append(c)
        elif major == "N":
            numbers.append(c)
    return _class_body(letters), _class_body(numbers)


# Pre-tokenisers, written with {L} / {N} placeholders for the letter / number class bodies.
# CLIP: contractions | letter runs | single digits | runs of other non-space characters; spaces are
# dropped (CLIP marks word ends with `</w>` instead). U+0345 (combining ypogegrammeni) is in neither
# class: open_clip's case-insensitive `regex` match folds it to a letter for the negated class but not
# for \p{L}, so open_clip silently drops it, and so do we.
_CLIP_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[{L}]+|[{N}]|[^\s{L}{N}\u0345]+"""
# ByteBPETokenizer: the same split, but a leading space stays with the word after it and whitespace runs
# are tokens, so the pieces concatenate back to the input and decoding is exact (GPT-2's split).
_BYTE_BPE_PATTERNS = {
    "gpt2": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)| ?[{L}]+| ?[{N}]+| ?[^\s{L}{N}]+|\s+(?!\S)|\s+""",
}


def _compile_pattern(pattern: str, prefix_alternatives: Sequence[str] = ()) -> re.Pattern:
    letters, numbers = _unicode_classes()
    body = pattern.replace("{L}", letters).replace("{N}", numbers)
    return re.compile("|".join([*(re.escape(s) for s in prefix_alternatives), body]))


# ----------------------------------------------------------------------------------------------------
# shared batch API
# ----------------------------------------------------------------------------------------------------


class Tokenizer(abc.ABC):
    """Abstract base class: `encode`/`decode` one string; ``__call__`` makes a padded batch like CLIP.

    Subclasses set ``sot_token_id``, ``eot_token_id``, ``pad_token_id``, ``vocab_size`` and
    ``context_length``.
    """

    sot_token_id: int
    eot_token_id: int
    pad_token_id: int
    vocab_size: int
    context_length: int

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """One string -> token ids (no SOT/EOT)."""

    @abc.abstractmethod
    def decode(self, ids: Ids) -> str:
        """Token ids -> the string."""

    def __call__(self, texts: Union[str, Sequence[str]], context_length: Optional[int] = None) -> torch.Tensor:
        """Tokenize ``texts`` into a LongTensor (B, context_length).

        Each row is ``[SOT] + encode(text) + [EOT]`` padded with ``pad_token_id``; a row that does not
        fit is cut to ``context_length`` and its last id replaced by EOT, so every row ends its text
        with EOT (as ``open_clip.tokenize`` does).
        """
        if isinstance(texts, str):
            texts = [texts]
        context_length = self.context_length if context_length is None else context_length
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (room for SOT and EOT), got {context_length}")
        out = torch.full((len(texts), context_length), self.pad_token_id, dtype=torch.long)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > context_length:
                ids = ids[:context_length]
                ids[-1] = self.eot_token_id
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


def _as_id_list(ids: Ids) -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"decode takes one sequence of ids (1-D), got shape {tuple(ids.shape)}")
        return ids.tolist()
    return [int(i) for i in ids]


# ----------------------------------------------------------------------------------------------------
# CLIP
# ----------------------------------------------------------------------------------------------------

# ftfy.fix_text without its mojibake detector (see `_fix_text`): fact tables of the fixes it applies.
_LIGATURES = str.maketrans({
    "Ĳ": "IJ", "ĳ": "ij", "ŉ": "ʼn", "Ǳ": "DZ", "ǲ": "Dz", "ǳ": "dz", "Ǆ": "DŽ", "ǅ": "Dž", "ǆ": "dž",
    "Ǉ": "LJ", "ǈ": "Lj", "ǉ": "lj", "Ǌ": "NJ", "ǋ": "Nj", "ǌ": "nj",
    "ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "ſt", "ﬆ": "st",
})
_CONTROL_CHARS = dict.fromkeys(
    [*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F, *range(0x206A, 0x2070), 0xFEFF, *range(0xFFF9, 0xFFFD)]
)
_SINGLE_QUOTES = re.compile("[\u02bc\u2018-\u201b]")
_DOUBLE_QUOTES = re.compile("[\u201c-\u201f]")
_TERMINAL_ESCAPES = re.compile("\x1b\\[[0-9;]*[a-zA-Z]")
_C1_CONTROLS = re.compile("[\x80-\x9f]")
_SURROGATES = re.compile("[\ud800-\udfff]")


@lru_cache(maxsize=None)
def _width_map() -> dict[int, str]:
    # fullwidth ASCII / halfwidth katakana -> standard width, and the ideographic space -> space
    table = {0x3000: " "}
    for c in range(0xFF01, 0xFFF0):
        normal = unicodedata.normalize("NFKC", chr(c))
        if normal != chr(c):
            table[c] = normal
    return table


def _c1_to_cp1252(m: re.Match) -> str:
    # C1 controls are almost always Windows-1252 bytes decoded as Latin-1; 5 bytes are undefined there
    try:
        return bytes([ord(m.group())]).decode("cp1252")
    except UnicodeDecodeError:
        return m.group()


def _fix_text(text: str) -> str:
    """The fixes ``ftfy.fix_text`` applies to clean text, without its mojibake detector.

    In ftfy's order, repeated until nothing changes: HTML entities (unless the text holds a '<'), C1
    controls as Windows-1252, Latin ligatures, fullwidth characters, curly quotes, UTF-16 surrogates,
    terminal escapes, invisible control characters, NFC normalisation. Curly apostrophes ("don’t")
    and decomposed accents are common in captions, so these matter for matching open_clip's ids.
    """
    unescape = "<" not in text
    while True:
        before = text
        if unescape:
            text = html.unescape(text)
        text = _C1_CONTROLS.sub(_c1_to_cp1252, text)
        text = text.translate(_LIGATURES).translate(_width_map())
        text = _DOUBLE_QUOTES.sub('"', _SINGLE_QUOTES.sub("'", text))
        if _SURROGATES.search(text):  # pair up UTF-16 surrogates, lone ones become U+FFFD
            text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
        text = _TERMINAL_ESCAPES.sub("", text).translate(_CONTROL_CHARS)
        text = unicodedata.normalize("NFC", text)
        if text == before:
            return text


def _default_clip_bpe_path() -> Path:
    shipped = Path(__file__).parent / "assets" / CLIP_BPE_FILENAME  # mmzoo's own copy (package data)
    if shipped.is_file():
        return shipped
    spec = importlib.util.find_spec("open_clip")  # locates the package without importing it
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / CLIP_BPE_FILENAME
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"ClipTokenizer needs CLIP's BPE vocabulary {CLIP_BPE_FILENAME!r}: install open_clip_torch (which ships "
        f"it) or pass bpe_path=/path/to/{CLIP_BPE_FILENAME}"
    )


class ClipTokenizer(Tokenizer):
    """CLIP's lower-cased BPE tokenizer (49408 ids), reading ``bpe_simple_vocab_16e6.txt.gz``.

    Args:
        bpe_path: the gzipped merges file; default: the copy shipped with mmzoo (or open_clip's).
        context_length: default row length of ``__call__``.
        use_ftfy: clean text with ``ftfy.fix_text`` exactly as open_clip does (needs ``ftfy``). The
            default uses `_fix_text`, the same fixes minus mojibake repair, so mmzoo need not depend on
            ftfy; ids differ from open_clip only for mojibake such as "cafÃ©".

    Cleaning (open_clip's default ``clean='lower'``): fix text, HTML-unescape twice, collapse whitespace,
    lower-case. Ids: 256 byte symbols, the same with ``</w>`` (end of word), one per merge in file order,
    then ``<start_of_text>`` and ``<end_of_text>``. Padding is 0, and EOT has the largest id (CLIP pools
    text features at ``argmax`` of the ids).
    """

    def __init__(
        self,
        bpe_path: Optional[Union[str, os.PathLike]] = None,
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        use_ftfy: bool = False,
    ):
        path = _default_clip_bpe_path() if bpe_path is None else Path(bpe_path)
        if not path.is_file():
            raise FileNotFoundError(f"CLIP BPE vocabulary not found: {path} (expected a file like {CLIP_BPE_FILENAME})")
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        # line 0 is a header ("#version: ..."); CLIP uses a fixed number of merges after it
        merges = [tuple(line.split()) for line in lines[1 : CLIP_NUM_MERGES + 1]]
        bad = next((i for i, m in enumerate(merges) if len(m) != 2), None)
        if len(merges) < CLIP_NUM_MERGES or bad is not None:
            where = f"line {bad + 2} is not 'a b'" if bad is not None else f"it has only {len(merges)} merges"
            raise ValueError(f"{path} is not a CLIP BPE merges file: {where} (expected {CLIP_NUM_MERGES})")

        symbols = list(byte_to_unicode().values())
        vocab = symbols + [s + _END_OF_WORD for s in symbols] + ["".join(m) for m in merges]
        self.special_tokens = [SOT_TOKEN, EOT_TOKEN]
        vocab += self.special_tokens
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = vocab
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.sot_token_id = self.encoder[SOT_TOKEN]
        self.eot_token_id = self.encoder[EOT_TOKEN]
        self.pad_token_id = 0
        self.vocab_size = len(vocab)
        self.context_length = context_length
        self.bpe_path = str(path)

        if use_ftfy:
            try:
                import ftfy
            except ImportError as e:
                raise ImportError("ClipTokenizer(use_ftfy=True) needs the ftfy package: pip install ftfy") from e
            self._fix = ftfy.fix_text
        else:
            self._fix = _fix_text
        self.use_ftfy = use_ftfy
        # special tokens written in the text are matched first and map to their own ids (as in open_clip)
        self._pattern = _compile_pattern(_CLIP_PATTERN, self.special_tokens)
        self._cache: dict[str, list[int]] = {t: [self.encoder[t]] for t in self.special_tokens}

    def clean(self, text: str) -> str:
        """Text as the BPE sees it: fixed, HTML-unescaped, whitespace collapsed, lower-cased."""
        text = html.unescape(html.unescape(self._fix(text))).strip()
        return " ".join(text.split()).lower()

    def _bpe(self, word: str) -> list[int]:
        """Ids of one pre-token (already mapped to byte symbols), applying merges by rank."""
        if word in self._cache:
            return self._cache[word]
        parts = [*word[:-1], word[-1] + _END_OF_WORD]
        ranks = self.bpe_ranks
        while len(parts) > 1:
            pairs = set(zip(parts, parts[1:]))
            best = min(pairs, key=lambda p: ranks.get(p, CLIP_NUM_MERGES))
            if best not in ranks:
                break
            a, b = best
            merged, i = [], 0
            while i < len(parts):  # merge every occurrence, left to right
                if i + 1 < len(parts) and parts[i] == a and parts[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids = [self.encoder[p] for p in parts]
        if len(self._cache) > 100_000:  # bound memory on endless streams of new words
            self._cache = {t: [self.encoder[t]] for t in self.special_tokens}
        self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without SOT/EOT."""
        b2u = byte_to_unicode()
        ids: list[int] = []
        for piece in self._pattern.findall(self.clean(text)):
            ids.extend(self._bpe("".join(b2u[b] for b in piece.encode("utf-8"))))
        return ids

    def decode(self, ids: Ids) -> str:
        """Text of ``ids``: word ends become spaces (so the result ends with one); SOT/EOT appear as text."""
        text = "".join(self.decoder[i] for i in _as_id_list(ids))
        u2b = unicode_to_byte()
        return bytes(u2b[c] for c in text).decode("utf-8", errors="replace").replace(_END_OF_WORD, " ")


# ----------------------------------------------------------------------------------------------------
# byte-level BPE, trained here
# ----------------------------------------------------------------------------------------------------


def _merge_pair(word: list[int], a: int, b: int, new: int) -> list[int]:
    """``word`` with every (a, b), left to right, replaced by ``new``."""
    out, i, n = [], 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def _learn_merges(word_counts: dict[bytes, int], num_merges: int, min_frequency: int) -> list[tuple[int, int]]:
    """Greedy BPE: repeatedly merge the most frequent adjacent pair (ties: smallest ids first).

    Pair counts are updated incrementally: a merge only rewrites the words that hold the pair (found
    through ``where``) and only pairs whose count changed are pushed on a max-heap; stale heap entries
    are skipped when popped. Cost per merge ~ the occurrences of the merged pair, not the corpus.
    """
    words = [list(w) for w in word_counts]
    freqs = list(word_counts.values())
    counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for idx, w in enumerate(words):
        f = freqs[idx]
        for p in zip(w, w[1:]):
            counts[p] = counts.get(p, 0) + f
            where.setdefault(p, set()).add(idx)
    heap = [(-c, p) for p, c in counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[int, int]] = []
    while len(merges) < num_merges and heap:
        neg, pair = heapq.heappop(heap)
        if counts.get(pair, 0) != -neg:
            continue  # stale entry: the count changed after it was pushed
        if -neg < min_frequency:
            break
        new = 256 + len(merges)
        merges.append(pair)
        a, b = pair
        delta: dict[tuple[int, int], int] = {}
        for idx in where.pop(pair):  # a superset: a word may have lost the pair (order does not matter)
            w = words[idx]
            merged = _merge_pair(w, a, b, new)
            if len(merged) == len(w):
                continue
            f = freqs[idx]
            for p in zip(w, w[1:]):
                delta[p] = delta.get(p, 0) - f
            for p in zip(merged, merged[1:]):
                delta[p] = delta.get(p, 0) + f
                if p[0] == new or p[1] == new:
                    where.setdefault(p, set()).add(idx)
            words[idx] = merged
        counts.pop(pair, None)
        for p, d in delta.items():
            if d == 0 or p == pair:
                continue
            c = counts.get(p, 0) + d
            if c > 0:
                counts[p] = c
                heapq.heappush(heap, (-c, p))
            else:
                counts.pop(p, None)
                where.pop(p, None)
    return merges


class ByteBPETokenizer(Tokenizer):
    """Byte-level BPE: ids 0..255 are the bytes, then one id per merge, then the special tokens.

    Build one with `train` or `load`. Text is split GPT-2 style (a leading space stays with its word)
    and each piece's UTF-8 bytes are merged by rank, so every string encodes and ``decode(encode(s)) ==
    s`` exactly, lone surrogates included. Special tokens are never parsed out of text: "<pad>" in the
    input is encoded as ordinary bytes; only ``__call__`` adds SOT/EOT/padding.

    Args:
        merges: pairs of ids, in rank order; merge ``i`` creates id ``256 + i``.
        special_tokens: appended after the merges. The default order (pad, SOT, EOT) gives EOT the
            largest id, like CLIP, so ``argmax`` pooling over the ids finds it.
        pattern: pre-tokenizer name (only "gpt2" so far; stored in the file for later ones).
        sot_token: the start-of-text token (must be in ``special_tokens``).
        eot_token: the end-of-text token (must be in ``special_tokens``).
        pad_token: the padding token (must be in ``special_tokens``); None pads with id 0 like CLIP.
        context_length: default row length of ``__call__``.
    """

    def __init__(
        self,
        merges: Sequence[tuple[int, int]],
        special_tokens: Sequence[str] = (PAD_TOKEN, SOT_TOKEN, EOT_TOKEN),
        pattern: str = "gpt2",
        sot_token: str = SOT_TOKEN,
        eot_token: str = EOT_TOKEN,
        pad_token: Optional[str] = PAD_TOKEN,
        context_length: int = DEFAULT_CONTEXT_LENGTH,
    ):
        self.merges = [(int(a), int(b)) for a, b in merges]
        token_bytes = [bytes([b]) for b in range(256)]
        for i, (a, b) in enumerate(self.merges):
            if not (0 <= a < 256 + i and 0 <= b < 256 + i):
                raise ValueError(f"merge {i} ({a}, {b}) uses an id not defined before it (< {256 + i})")
            token_bytes.append(token_bytes[a] + token_bytes[b])
        self.token_bytes = token_bytes
        self.special_tokens = list(special_tokens)
        if len(set(self.special_tokens)) != len(self.special_tokens):
            raise ValueError(f"special_tokens has duplicates: {self.special_tokens}")
        for role, tok in (("sot_token", sot_token), ("eot_token", eot_token), ("pad_token", pad_token)):
            if tok is not None and tok not in self.special_tokens:
                raise ValueError(f"{role}={tok!r} is not one of special_tokens {self.special_tokens}")
        n = len(token_bytes)
        self.special_ids = {tok: n + i for i, tok in enumerate(self.special_tokens)}
        self.sot_token, self.eot_token, self.pad_token = sot_token, eot_token, pad_token
        self.sot_token_id = self.special_ids[sot_token]
        self.eot_token_id = self.special_ids[eot_token]
        self.pad_token_id = 0 if pad_token is None else self.special_ids[pad_token]
        self.vocab_size = n + len(self.special_tokens)
        self.context_length = context_length
        if pattern not in _BYTE_BPE_PATTERNS:
            raise ValueError(f"unknown pre-tokenizer pattern {pattern!r}; choose one of {sorted(_BYTE_BPE_PATTERNS)}")
        self.pattern = pattern
        self._pattern = _compile_pattern(_BYTE_BPE_PATTERNS[pattern])
        self._ranks = {m: i for i, m in enumerate(self.merges)}
        self._cache: dict[str, list[int]] = {}

    # --- training -------------------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        special_tokens: Sequence[str] = (PAD_TOKEN, SOT_TOKEN, EOT_TOKEN),
        *,
        min_frequency: int = 2,
        pattern: str = "gpt2",
        sot_token: str = SOT_TOKEN,
        eot_token: str = EOT_TOKEN,
        pad_token: Optional[str] = PAD_TOKEN,
        context_length: int = DEFAULT_CONTEXT_LENGTH,
    ) -> "ByteBPETokenizer":
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``texts`` (streamed once).

        Stops early (smaller vocabulary) when no pair occurs ``min_frequency`` times. Deterministic: the
        same texts give the same merges whatever their order or the hash seed.
        """
        num_merges = vocab_size - 256 - len(special_tokens)
        if num_merges < 0:
            raise ValueError(
                f"vocab_size={vocab_size} is smaller than 256 byte ids + {len(special_tokens)} special tokens"
            )
        if pattern not in _BYTE_BPE_PATTERNS:
            raise ValueError(f"unknown pre-tokenizer pattern {pattern!r}; choose one of {sorted(_BYTE_BPE_PATTERNS)}")
        splitter = _compile_pattern(_BYTE_BPE_PATTERNS[pattern])
        pieces: Counter[str] = Counter()
        for text in texts:
            pieces.update(splitter.findall(text))
        word_counts: Counter[bytes] = Counter()
        for piece, c in pieces.items():
            word_counts[piece.encode("utf-8", "surrogatepass")] += c
        merges = _learn_merges(dict(sorted(word_counts.items())), num_merges, min_frequency)
        return cls(merges, special_tokens, pattern, sot_token, eot_token, pad_token, context_length)

    # --- encode / decode ------------------------------------------------------------------------------

    def _bpe(self, piece: str) -> list[int]:
        if piece in self._cache:
            return self._cache[piece]
        ids = list(piece.encode("utf-8", "surrogatepass"))
        ranks, none = self._ranks, len(self.merges)
        while len(ids) > 1:
            rank = min(ranks.get(p, none) for p in zip(ids, ids[1:]))
            if rank == none:
                break
            a, b = self.merges[rank]
            ids = _merge_pair(ids, a, b, 256 + rank)
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[piece] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without SOT/EOT."""
        ids: list[int] = []
        for piece in self._pattern.findall(text):
            ids.extend(self._bpe(piece))
        return ids

    def decode(self, ids: Ids, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; special tokens are written by name unless ``skip_special_tokens``.

        Bytes that are not valid UTF-8 (a sequence cut mid-character) become U+FFFD.
        """
        names = {i: t for t, i in self.special_ids.items()}
        chunks, buf = [], bytearray()
        for i in _as_id_list(ids):
            if i in names:
                if not skip_special_tokens:
                    chunks.append(self._decode_bytes(bytes(buf)) + names[i])
                    buf.clear()
            elif 0 <= i < len(self.token_bytes):
                buf += self.token_bytes[i]
            else:
                raise ValueError(f"token id {i} is out of range for vocab_size {self.vocab_size}")
        chunks.append(self._decode_bytes(bytes(buf)))
        return "".join(chunks)

    @staticmethod
    def _decode_bytes(data: bytes) -> str:
        try:  # surrogatepass undoes encode's surrogatepass, so even lone surrogates round-trip
            return data.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return data.decode("utf-8", "replace")

    def token_to_str(self, i: int) -> str:
        """Printable form of one id: its bytes through `byte_to_unicode` (a space shows as 'Ġ')."""
        names = {i: t for t, i in self.special_ids.items()}
        if i in names:
            return names[i]
        b2u = byte_to_unicode()
        return "".join(b2u[b] for b in self.token_bytes[i])

    # --- file -----------------------------------------------------------------------------------------

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write one JSON file: vocabulary (printable form, index = id), merges, special tokens, options."""
        path = Path(path)
        vocab = [self.token_to_str(i) for i in range(self.vocab_size)]
        data = {
            "format": BYTE_BPE_FORMAT,
            "version": BYTE_BPE_VERSION,
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "sot_token": self.sot_token,
            "eot_token": self.eot_token,
            "pad_token": self.pad_token,
            "context_length": self.context_length,
            "vocab": vocab,
            # printable forms never hold a space, so "a b" splits unambiguously
            "merges": [f"{vocab[a]} {vocab[b]}" for a, b in self.merges],
        }
        # atomic: a crash never leaves a half-written tokenizer file
        atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=1))

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "ByteBPETokenizer":
        """Read a file written by `save`; the vocabulary is rebuilt from the merges and checked."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != BYTE_BPE_FORMAT:
            raise ValueError(f"{path} is not an mmzoo byte-level BPE file (format={data.get('format')!r})")
        if data.get("version") != BYTE_BPE_VERSION:
            raise ValueError(f"{path} has version {data.get('version')}, this mmzoo reads {BYTE_BPE_VERSION}")
        missing = [k for k in _BYTE_BPE_KEYS if k not in data]
        if missing:
            raise ValueError(f"{path} lacks the keys {missing}")
        n_special = len(data["special_tokens"])
        ids = {tok: i for i, tok in enumerate(data["vocab"][: len(data["vocab"]) - n_special])}
        merges = []
        for k, line in enumerate(data["merges"]):
            a, b = line.split(" ")
            if a not in ids or b not in ids:
                raise ValueError(f"{path}: merge {k} {line!r} names a token missing from 'vocab'")
            merges.append((ids[a], ids[b]))
        tok = cls(merges, data["special_tokens"], data["pattern"], data["sot_token"], data["eot_token"],
                  data["pad_token"], data["context_length"])
        rebuilt = [tok.token_to_str(i) for i in range(tok.vocab_size)]
        if rebuilt != data["vocab"]:
            raise ValueError(f"{path}: 'vocab' does not match what its 'merges' build; the file is corrupt")
        return tok


# ----------------------------------------------------------------------------------------------------


def get_tokenizer(name_or_path: Union[str, os.PathLike], context_length: Optional[int] = None) -> Tokenizer:
    """``"clip"`` -> `ClipTokenizer` (open_clip's vocabulary); ``*.json`` -> `ByteBPETokenizer.load`;
    ``*.txt.gz`` -> `ClipTokenizer` reading that merges file. ``context_length`` overrides the default
    (77, or the one saved in the .json)."""
    name = str(name_or_path)
    if name == "clip" or name.endswith(".txt.gz"):
        tok: Tokenizer = ClipTokenizer(None if name == "clip" else name)
    elif name.endswith(".json"):
        tok = ByteBPETokenizer.load(name)
    else:
        raise ValueError(
            f"unknown tokenizer {name!r}: use 'clip', a ByteBPETokenizer .json file, or a CLIP merges .txt.gz file"
        )
    if context_length is not None:
        tok.context_length = context_length
    return tok


@lru_cache(maxsize=4)
def shared_tokenizer(name_or_path: str) -> Tokenizer:
    """:func:`get_tokenizer`, loaded once per process (reading CLIP's BPE takes seconds); read-only."""
    return get_tokenizer(name_or_path)


class TextDataMixin:
    """Tokenizer access for data modules with captions; they set ``tokenizer_name`` ("clip" or a BPE
    .json path) and ``context_length`` in ``__init__``."""

    tokenizer_name: str
    context_length: int

    @property
    def tokenizer(self) -> Tokenizer:
        return shared_tokenizer(self.tokenizer_name)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def tokenize(self, texts: Union[str, Sequence[str]]) -> torch.Tensor:
        """LongTensor (N, context_length), as in the batches' ``text``."""
        return self.tokenizer(texts, self.context_length)
