"""Plain-text language-modelling data: a directory of ``.txt`` files or a built-in English corpus (the
docstrings of Python's standard library, no download), tokenized with a byte-level BPE trained on the
training split and packed into fixed-length blocks.

Documents are assigned to train / val / test by a hash of their name (stable whatever else is in the
corpus). Token ids are cached as ``.npy`` files read memory-mapped, keyed by a hash of the corpus and
of the tokenizer, so a second run neither retrains the BPE nor re-tokenizes.
"""
from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import sys
import sysconfig
import zlib
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..checkpoint import atomic_write, atomic_write_text
from .bad_samples import DEFAULT_MAX_BAD_FRACTION, BadSamples, check_fraction
from .base import BaseDataModule
from .tokenizer import EOT_TOKEN, PAD_TOKEN, SOT_TOKEN, ByteBPETokenizer

log = logging.getLogger("mmzoo")

MASK_TOKEN = "<mask>"
SPLITS = ("train", "val", "test")
# stdlib directories that hold tests, vendored or tool code rather than documented library modules
_STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__",
                "turtledemo", "ensurepip", "venv"}


def sentinel_token(i: int) -> str:
    """Name of T5's i-th span-corruption sentinel."""
    return f"<extra_id_{i}>"


def default_cache_dir() -> Path:
    return Path(os.environ.get("MMZOO_CACHE", Path.home() / ".cache" / "mmzoo")) / "text"


def stdlib_docstrings(max_documents: Optional[int] = None, min_chars: int = 40) -> list[tuple[str, str]]:
    """(name, text) of every module / class / function docstring of at least ``min_chars`` characters in
    the standard library's ``.py`` files, in sorted file order then source order (deterministic)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not _STDLIB_SKIP.intersection(p.relative_to(root).parts))
    docs: list[tuple[str, str]] = []
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        rel = path.relative_to(root).as_posix()
        nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                                              ast.AsyncFunctionDef))]
        nodes.sort(key=lambda n: getattr(n, "lineno", 0))
        for node in nodes:
            doc = ast.get_docstring(node)
            if doc and len(doc) >= min_chars:
                docs.append((f"{rel}:{getattr(node, 'lineno', 0)}", doc))
                if max_documents is not None and len(docs) >= max_documents:
                    return docs
    return docs


def text_file_documents(root: Union[str, os.PathLike], pattern: str = "*.txt", chunk_chars: int = 2000,
                        strict: bool = False, bad: Optional[BadSamples] = None
                        ) -> tuple[list[tuple[str, str]], list[str]]:
    """Documents of the text files under ``root`` (recursive, sorted): each file is cut at paragraph
    breaks into chunks of about ``chunk_chars`` characters, named ``relpath#i``.

    Returns (documents, skipped files relative to ``root``). Unreadable or non-UTF-8 files go to ``bad``
    (:mod:`mmzoo.data.bad_samples`: skipped and counted, or raised under ``strict`` naming the file and the
    line of the first bad byte; default: a policy from ``strict``)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"text data root {root} is not a directory (config key data.root)")
    files = sorted(p for p in root.rglob(pattern) if p.is_file())
    if not files:
        raise FileNotFoundError(f"no files matching {pattern!r} under {root} (config keys data.root, data.pattern)")
    bad = bad if bad is not None else BadSamples(f"data.root {root}", strict, what="text file")
    docs, skipped = [], []
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            raw = path.read_bytes()
            text = raw.decode("utf-8")
        except OSError as e:
            bad.reject(str(path), e)
            skipped.append(rel)
            continue
        except UnicodeDecodeError as e:
            line = raw[:e.start].count(b"\n") + 1
            bad.reject(str(path), f"not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line})")
            skipped.append(rel)
            continue
        chunk, n = [], 0
        for para in text.split("\n\n"):
            chunk.append(para)
            n += len(para)
            if n >= chunk_chars:
                docs.append((f"{rel}#{len(docs)}", "\n\n".join(chunk)))
                chunk, n = [], 0
        if "".join(chunk).strip():
            docs.append((f"{rel}#{len(docs)}", "\n\n".join(chunk)))
    bad.scanned(len(files))
    return docs, skipped


def split_of(name: str, val_percent: float, test_percent: float) -> str:
    """Deterministic split of a document from its name (crc32, the same on every machine)."""
    r = zlib.crc32(name.encode("utf-8")) % 10000 / 100.0
    return "val" if r < val_percent else "test" if r < val_percent + test_percent else "train"


class PackedBlocks(Dataset):
    """Consecutive, non-overlapping ``block_size`` windows of a 1-D token array: ``{"tokens": (L,)}``."""

    def __init__(self, tokens: np.ndarray, block_size: int) -> None:
        self.tokens = tokens
        self.block_size = block_size

    def __len__(self) -> int:
        return len(self.tokens) // self.block_size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        s = index * self.block_size
        return {"tokens": torch.from_numpy(np.asarray(self.tokens[s:s + self.block_size], dtype=np.int64))}


class TextCorpusDataModule(BaseDataModule):
    """Language-modelling blocks of plain text.

    Args:
        root: directory of text files (``pattern``, recursive); ``None`` = the built-in corpus of Python
            standard-library docstrings (~1.6 MB of English, no download).
        pattern: file glob under ``root``.
        context_length: tokens per block.
        vocab_size: BPE vocabulary trained on the training split (including the special tokens:
            pad, mask, ``num_sentinels`` T5 sentinels, SOT, EOT).
        tokenizer: an existing ByteBPETokenizer ``.json`` instead (must hold the special tokens above).
        num_sentinels: span-corruption sentinels in the vocabulary.
        val_percent: share of documents (by name hash) held out for validation.
        test_percent: share of documents (by name hash) held out for testing.
        max_documents: use only the first documents (quick runs, tests).
        chunk_chars: text files are cut into documents of about this many characters.
        strict: raise on an unreadable file instead of skipping it.
        max_bad_fraction: fail when more than this share of the files is unreadable.
        cache_dir: where BPE files and token arrays are cached (default ``$MMZOO_CACHE/text`` or
            ``~/.cache/mmzoo/text``).

    ``batch_size``, ``num_workers``, ``seed``, ``pin_memory``, ``eval_batch_size``: see :class:`BaseDataModule`.
    """

    def __init__(self, root: Optional[str] = None, pattern: str = "*.txt", context_length: int = 128,
                 vocab_size: int = 2048, tokenizer: Optional[str] = None, num_sentinels: int = 32,
                 val_percent: float = 5.0, test_percent: float = 5.0, max_documents: Optional[int] = None,
                 chunk_chars: int = 2000, strict: bool = False, cache_dir: Optional[str] = None,
                 batch_size: int = 32, num_workers: int = 0, seed: int = 0, pin_memory: bool = False,
                 eval_batch_size: Optional[int] = None, max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory, eval_batch_size)
        if context_length < 2:
            raise ValueError(f"data.context_length must be >= 2, got {context_length}")
        self.root = root
        self.pattern = pattern
        self.context_length = context_length
        self.requested_vocab_size = vocab_size
        self.tokenizer_path = tokenizer
        self.num_sentinels = num_sentinels
        self.val_percent, self.test_percent = val_percent, test_percent
        self.max_documents = max_documents
        self.chunk_chars = chunk_chars
        self.strict = strict
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.max_bad_fraction = check_fraction(max_bad_fraction)
        self._tokenizer: Optional[ByteBPETokenizer] = None
        self._tokens: dict[str, np.ndarray] = {}

    # -- corpus, tokenizer, token cache ---------------------------------------------------------------
    @property
    def special_tokens(self) -> list[str]:
        return [PAD_TOKEN, MASK_TOKEN, *(sentinel_token(i) for i in range(self.num_sentinels)), SOT_TOKEN, EOT_TOKEN]

    def _documents(self) -> list[tuple[str, str]]:
        if self.root is not None:
            self.bad_samples.pop("corpus", None)  # read again: count once
            bad = self.bad_samples_of("corpus", f"data.root {self.root}", "text file")
            docs, _ = text_file_documents(self.root, self.pattern, self.chunk_chars, self.strict, bad)
            return docs[: self.max_documents] if self.max_documents else docs
        # the stdlib corpus is extracted once per Python installation (parsing it takes seconds)
        key = hashlib.sha1(f"{sys.version}|{sysconfig.get_paths()['stdlib']}|{self.max_documents}".encode()).hexdigest()
        path = self.cache_dir / f"stdlib-docstrings-{key[:16]}.json"
        if path.is_file():
            return [tuple(d) for d in json.loads(path.read_text(encoding="utf-8"))]
        docs = stdlib_docstrings(self.max_documents)
        atomic_write_text(path, json.dumps(docs))
        return docs

    def prepare(self) -> None:
        """Build (or load from the cache) the tokenizer and the token arrays of the three splits."""
        if self._tokens:
            return
        docs = self._documents()
        split_docs: dict[str, list[str]] = {s: [] for s in SPLITS}
        for name, text in docs:
            split_docs[split_of(name, self.val_percent, self.test_percent)].append(text)
        if not split_docs["train"]:
            raise ValueError(f"no training documents in {self.root or 'the stdlib corpus'}")
        corpus_hash = hashlib.sha1()
        for name, text in docs:
            corpus_hash.update(name.encode() + b"\0" + text.encode("utf-8", "surrogatepass") + b"\0")
        corpus_key = f"{corpus_hash.hexdigest()[:16]}-{self.val_percent}-{self.test_percent}"
        if self.tokenizer_path is not None:
            tok = ByteBPETokenizer.load(self.tokenizer_path)
            missing = [t for t in self.special_tokens if t not in tok.special_ids]
            if missing:
                raise ValueError(f"tokenizer {self.tokenizer_path} lacks the special tokens {missing[:5]}; "
                                 "train one with these (or set data.tokenizer=null to train it here)")
        else:
            bpe_path = self.cache_dir / f"bpe-{corpus_key}-{self.requested_vocab_size}-{self.num_sentinels}.json"
            if bpe_path.is_file():
                tok = ByteBPETokenizer.load(bpe_path)
            else:
                log.info("training a %d-token BPE on %d documents", self.requested_vocab_size, len(split_docs["train"]))
                tok = ByteBPETokenizer.train(split_docs["train"], self.requested_vocab_size, self.special_tokens)
                tok.save(bpe_path)
        tok.context_length = self.context_length
        self._tokenizer = tok
        tok_hash = hashlib.sha1(json.dumps([tok.merges, tok.special_tokens]).encode()).hexdigest()[:16]
        dtype = np.uint16 if tok.vocab_size <= 2 ** 16 else np.int32
        for split in SPLITS:
            path = self.cache_dir / f"tokens-{corpus_key}-{tok_hash}-{split}.npy"
            if not path.is_file():
                ids: list[int] = []
                for text in split_docs[split]:
                    ids.extend(tok.encode(text))
                    ids.append(tok.eot_token_id)  # documents are separated by EOT
                arr = np.asarray(ids, dtype=dtype)
                atomic_write(path, lambda f: np.save(f, arr))  # a crash never leaves a half-written entry
            self._tokens[split] = np.load(path, mmap_mode="r")  # memory-mapped: no copy in RAM or workers

    @property
    def tokenizer(self) -> ByteBPETokenizer:
        self.prepare()
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def mask_token_id(self) -> int:
        return self.tokenizer.special_ids[MASK_TOKEN]

    @property
    def sentinel_token_ids(self) -> list[int]:
        return [self.tokenizer.special_ids[sentinel_token(i)] for i in range(self.num_sentinels)]

    @property
    def num_regular_tokens(self) -> int:
        """Ids below this are ordinary text tokens (bytes and merges), the rest special tokens."""
        return len(self.tokenizer.token_bytes)

    def split_tokens(self, split: str) -> np.ndarray:
        self.prepare()
        return self._tokens[split]

    def unigram_counts(self) -> torch.Tensor:
        """Count of every id in the training tokens (vocab_size,), for the unigram baseline."""
        counts = np.bincount(np.asarray(self.split_tokens("train")), minlength=self.vocab_size)
        return torch.from_numpy(counts.astype(np.int64))

    def setup(self, stage: Optional[str] = None) -> None:
        self.prepare()
        L = self.context_length
        self.train_set = PackedBlocks(self._tokens["train"], L)
        for split in ("val", "test"):
            blocks = PackedBlocks(self._tokens[split], L)
            if len(blocks) == 0:
                raise ValueError(f"the {split} split has {len(self._tokens[split])} tokens, fewer than one block "
                                 f"of data.context_length={L}; raise data.{split}_percent or use more text")
            setattr(self, f"{split}_set", blocks)

